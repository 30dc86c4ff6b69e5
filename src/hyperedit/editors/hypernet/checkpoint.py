"""What a trained hypernetwork editor's checkpoint adds to the saved-editor files
(``editors.checkpoint``): the model it was trained for, the edited modules' shapes, and which of
its options a user may change when loading it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...errors import HyperEditError
from ..base import make_config
from ..checkpoint import SavedEditor, write_editor

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("model_type", "num_layers", "hidden_size", "vocab_size")


def save_hypernet(path: str | Path, editor: str, config, tensors: dict[str, torch.Tensor], model: dict,
                  module_shapes: dict, extra: dict) -> Path:
    """Write a trained editor: its tensors, options, model identity, module shapes and ``extra``."""
    return write_editor(path, editor, config, tensors, model=model,
                        modules={n: list(s) for n, s in module_shapes.items()}, **extra)


def trained_config(config_class: type, saved: SavedEditor, overrides: dict, editor: str):
    """The saved options with ``overrides`` applied; only ``config_class.RUNTIME`` options may change."""
    fixed = sorted(set(overrides) - set(config_class.RUNTIME))
    if fixed:
        raise HyperEditError(f"cannot override {', '.join(fixed)} of a trained {editor} editor; "
                             f"only {', '.join(config_class.RUNTIME)} may change")
    return make_config(config_class, overrides, base=saved.config)


def check_trained_for(editor: str, model: dict, module_shapes: dict, adapter) -> None:
    """Raise HyperEditError unless ``adapter``'s model is of the architecture ``model`` (the saved
    identity) describes and has every edited module in its saved shape; another model of that
    architecture is only logged."""
    theirs = dict(adapter.identity())
    diffs = [f"{k} {model.get(k)} vs {theirs.get(k)}" for k in IDENTITY_KEYS if k in model and model.get(k) != theirs.get(k)]
    if diffs:
        raise HyperEditError(f"{editor} checkpoint was trained for model {model.get('name')!r}, "
                             f"not {theirs.get('name')!r} ({'; '.join(diffs)})")
    for name, shape in module_shapes.items():
        try:
            actual = tuple(adapter.in_out_shape(name))
        except ValueError:
            raise HyperEditError(f"{editor} checkpoint edits {name}, which model {theirs.get('name')!r} lacks") from None
        if actual != tuple(shape):
            raise HyperEditError(f"{editor} checkpoint expects {name} of shape {tuple(shape)}, the model has {actual}")
    if model.get("name") and model.get("name") != theirs.get("name"):
        log.warning("checkpoint trained on %s, applied to %s (same architecture)", model.get("name"), theirs.get("name"))


def same_architecture(model: dict, adapter) -> bool:
    """Whether ``adapter``'s model matches the saved identity ``model`` on every architecture key."""
    theirs = adapter.identity()
    return all(model.get(k) == theirs.get(k) for k in IDENTITY_KEYS)
