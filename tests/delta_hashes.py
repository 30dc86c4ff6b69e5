"""Fingerprints of the edits every registered editor makes on the tiny Llama (refactoring guard).

Each editor edits two fixed batches of requests in a row on a tiny Llama built from seed 0 (the
second edit sees whatever sequential state the first left: null-space memory, normalisers). The
SHA-256 of every shift's bytes, in module order, is the editor's fingerprint. Trained editors
start from an untrained hypernetwork (``create(..., seed=0)``) with ``online_norm`` on, so the
second edit depends on the normalisers the first left. (``nullspace`` stays off: its C0 comes from
the default statistics corpus, which the fingerprints must not depend on; the locate-then-edit
editors read a corpus written here.)

``python tests/delta_hashes.py`` (from the repository root, one torch thread) records the
fingerprints in ``tests/fixtures/delta_hashes.json``; ``tests/unit/test_delta_hashes.py``
recomputes them and compares. Rerun the script only when an edit is *meant* to change.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "delta_hashes.json"

FAST = {
    "layers": [1, 2], "steps": 3, "v_steps": 3, "n_prefixes": 0, "prefix_tokens": 2, "stats_samples": 16,
    "stats_max_length": 16, "ridge_samples": 16, "diagnostics": False, "meta_steps": 2, "n_locality_texts": 4,
    "locality_tokens": 8,
}
PER_EDITOR = {"ft": {"layers": [2], "lr": 1e-2}}
HYPERNET = {"rank": 4, "n_blocks": 1, "lr_init": 0.05, "online_norm": True,
            "top_k": 1, "policy_hidden": 8}


def _batches():
    from hyperedit import EditRequest, LocalityPrompt

    first = [
        EditRequest(prompt="the eiffel tower is located in the city of", target="rome", subject="eiffel tower",
                    rephrasings=["where is the eiffel tower ? it is in the city of"],
                    locality=[LocalityPrompt("the colosseum is located in the city of")], old_target="paris"),
        EditRequest(prompt="john plays the sport of", target="tennis", subject="john", old_target="football"),
    ]
    second = [EditRequest(prompt="the louvre is located in the country of", target="japan", subject="louvre",
                          old_target="france")]
    return first, second


def write_corpus(path: Path) -> str:
    """Forty sentences of in-vocabulary words (key statistics for the editors that need them)."""
    from tiny import WORDS

    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(40)) + "\n")
    return str(path)


def _options(entry, corpus: str) -> dict:
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    wanted = {**FAST, "stats_corpus": corpus, **(HYPERNET if entry.needs_checkpoint else {}),
              **PER_EDITOR.get(entry.name, {})}
    return {k: v for k, v in wanted.items() if k in fields}


def make_editor(name: str, lm, corpus: str):
    """The editor ``name`` as the fingerprints use it (trained ones untrained, from seed 0)."""
    from hyperedit.editors import editor_entry, get_editor, make_config

    entry = editor_entry(name)
    options = _options(entry, corpus)
    if entry.needs_checkpoint:
        return entry.factory.create(make_config(entry.config_class, options), lm, seed=0)
    return get_editor(name, **options)


def fingerprint(delta) -> str:
    digest = hashlib.sha256()
    for module in sorted(delta.shifts):
        shift = delta.shifts[module].detach().contiguous().cpu()
        digest.update(module.encode() + str(tuple(shift.shape)).encode() + str(shift.dtype).encode())
        digest.update(shift.numpy().tobytes())
    return digest.hexdigest()


def editor_fingerprints(name: str, model_dir: str, corpus: str) -> list[str]:
    """Fingerprints of the two edits ``name`` makes in a row on the tiny Llama in ``model_dir``."""
    from hyperedit import load_model

    torch.manual_seed(0)
    lm = load_model(model_dir)
    editor = make_editor(name, lm, corpus)
    return [fingerprint(editor.edit(lm, batch)) for batch in _batches()]


def all_fingerprints(root: Path) -> dict[str, list[str]]:
    from hyperedit import editor_names
    from tiny import build_tiny

    model_dir = str(build_tiny("llama", root / "llama"))
    corpus = write_corpus(root / "corpus.txt")
    return {name: editor_fingerprints(name, model_dir, corpus) for name in editor_names()}


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HYPEREDIT_STATS_CACHE"] = str(Path(tmp) / "stats-cache")
        prints = all_fingerprints(Path(tmp))
    FIXTURE.write_text(json.dumps({"torch": torch.__version__, "editors": prints}, indent=1, sort_keys=True) + "\n")
    print(f"{FIXTURE}: {len(prints)} editors")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
