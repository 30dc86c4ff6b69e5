"""Trained editors shipped inside the package, for the embedded model.

``hyperedit/pretrained/<editor>-<model>/`` holds an ordinary editor checkpoint (``editor.json`` +
``editor.safetensors``) and ``training.json``: the command, data and validation figures that
produced it. ``get_editor`` uses one when no checkpoint is given and the loaded model is the
one it was trained for (same name and architecture); it never guesses for another model.
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import CONFIG_FILE, read_editor
from .checkpoint import same_architecture

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "pretrained"
SIDECAR = "training.json"


def shipped_folders(editor: str) -> dict[str, Path]:
    """Model name -> folder of each checkpoint of ``editor`` shipped in the package."""
    out = {}
    for folder in sorted(SHIPPED_DIR.glob(f"{editor}-*")):
        if (folder / CONFIG_FILE).is_file():
            saved = read_editor(folder)
            if saved.editor == editor:
                out[(saved.model or {}).get("name")] = folder
    return out


def shipped_checkpoint(editor: str, lm) -> Path | None:
    """The shipped checkpoint of ``editor`` trained for exactly the model of ``lm``, else None."""
    if lm is None:
        return None
    folder = shipped_folders(editor).get(lm.adapter.identity().get("name"))
    if folder is None or not same_architecture(read_editor(folder).model or {}, lm.adapter):
        return None
    return folder


def missing_checkpoint_message(editor: str, lm) -> str:
    """The one-line refusal when no checkpoint is given and none is shipped for this model."""
    models = [m for m in shipped_folders(editor) if m]
    line = f"editor {editor!r} is trained: pass a checkpoint (train one with `hyperedit train --editor {editor}`)"
    if models:
        name = lm.adapter.identity().get("name") if lm is not None else None
        line += f"; the shipped one is for {', '.join(models)}" + (f", not {name!r}" if name else "")
    return line
