"""Copy a trained hypernetwork editor into the package (``hyperedit/pretrained/<editor>-<model>/``).

    python scripts/ship_editor.py RUN_DIR/best --command "hyperedit train ..." [--set nullspace=true]

Writes ``editor.json`` + ``editor.safetensors`` (the checkpoint; ``--set`` changes runtime settings of
its config, e.g. the direction control a stream was measured with) and ``training.json`` (the
training command, data, settings, the settings changed and the validation record the checkpoint was
chosen by). ``--float16`` stores the weight matrices in float16 (normaliser statistics and
per-module scalars stay as they are; loading casts back to the editor's dtype): only for an
editor whose float16 copy was measured to edit as the original does
(``benchmarks/shipped_precision.py``). Refuses a checkpoint over 10 MB and settings the editor
does not allow to change.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file, save

from hyperedit.checkpoints import half_matrices

MAX_BYTES = 10 * 2 ** 20
PACKAGE = Path(__file__).resolve().parent.parent / "src" / "hyperedit" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="folder with editor.json and editor.safetensors")
    parser.add_argument("--command", required=True, help="the training command that produced it")
    parser.add_argument("--note", default="", help="anything else a reader needs (e.g. measured figures)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="runtime setting written into the shipped config (value parsed as JSON)")
    parser.add_argument("--float16", action="store_true", help="store weight matrices in float16")
    args = parser.parse_args()
    meta = json.loads((args.checkpoint / "editor.json").read_text())
    settings = _runtime_settings(meta["editor"], args.settings)
    meta["config"].update(settings)
    weights = args.checkpoint / "editor.safetensors"
    payload = save(half_matrices(load_file(str(weights)))) if args.float16 else weights.read_bytes()
    if len(payload) > MAX_BYTES:
        raise SystemExit(f"{weights}: {len(payload)} bytes to ship, over the 10 MB limit of a shipped editor"
                         + ("" if args.float16 else " (try --float16)"))
    target = PACKAGE / f"{meta['editor']}-{meta['model']['name']}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "editor.safetensors").write_bytes(payload)
    (target / "editor.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    training = meta.get("training", {})
    sidecar = {"command": args.command, "data": {k: training.get(k) for k in ("sources", "data", "n_train", "n_val")},
               "train_config": training.get("train_config"), "step": training.get("step"),
               "validation": meta.get("validation"), "settings_changed": settings,
               "storage": "float16 matrices" if args.float16 else "as trained", "note": args.note}
    (target / "training.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    print(f"shipped {meta['editor']} for {meta['model']['name']} -> {target}")


def _runtime_settings(editor: str, items: list[str]) -> dict:
    """``KEY=VALUE`` items (parsed as the CLI's ``--set``) -> settings, refusing any the editor fixes
    at training time."""
    from hyperedit.commands._common import parse_overrides
    from hyperedit.editors import editor_entry
    from hyperedit.errors import HyperEditError

    allowed = editor_entry(editor).config_class.RUNTIME
    try:
        settings = parse_overrides(argparse.Namespace(overrides=items))
    except HyperEditError as exc:
        raise SystemExit(str(exc)) from None
    for key in settings:
        if key not in allowed:
            raise SystemExit(f"--set {key}: not a runtime setting of {editor} (allowed: {', '.join(allowed)})")
    return settings


if __name__ == "__main__":
    main()
