"""Copy a trained hypernetwork editor into the package (``hyperedit/pretrained/<editor>-<model>/``).

    python scripts/ship_editor.py RUN_DIR/best --command "hyperedit train ..."

Writes ``editor.json`` + ``editor.safetensors`` (the checkpoint, unchanged) and ``training.json``
(the training command, data, settings and the validation record the checkpoint was chosen by).
Refuses a checkpoint over 10 MB.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

MAX_BYTES = 10 * 2 ** 20
PACKAGE = Path(__file__).resolve().parent.parent / "src" / "hyperedit" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="folder with editor.json and editor.safetensors")
    parser.add_argument("--command", required=True, help="the training command that produced it")
    parser.add_argument("--note", default="", help="anything else a reader needs (e.g. measured figures)")
    args = parser.parse_args()
    meta = json.loads((args.checkpoint / "editor.json").read_text())
    weights = args.checkpoint / "editor.safetensors"
    if weights.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{weights}: {weights.stat().st_size} bytes, over the 10 MB limit of a shipped editor")
    target = PACKAGE / f"{meta['editor']}-{meta['model']['name']}"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target / "editor.safetensors")
    shutil.copyfile(args.checkpoint / "editor.json", target / "editor.json")
    training = meta.get("training", {})
    sidecar = {"command": args.command, "data": {k: training.get(k) for k in ("sources", "data", "n_train", "n_val")},
               "train_config": training.get("train_config"), "step": training.get("step"),
               "validation": meta.get("validation"), "note": args.note}
    (target / "training.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    print(f"shipped {meta['editor']} for {meta['model']['name']} -> {target}")


if __name__ == "__main__":
    main()
