"""The files of a saved editor: ``editor.json`` and ``editor.safetensors``, one writer and one reader.

``editor.json`` says whose it is (``editor``), its options (``config``) and, for the trained
editors, the model they were trained for (``model``), the edited modules' shapes (``modules``)
and whatever else was recorded (training step, validation figures); ``editor.safetensors`` holds
the tensors: a hypernetwork's weights (HiEdit's prefixed ``low.`` and ``policy.``) or AlphaEdit's
key memory. The shipped checkpoints (``hyperedit/pretrained``) and every checkpoint of a training
run (``hyperedit.checkpoints``) are such folders. AlphaEdit folders saved before it used this
format (``config.json`` + ``state.safetensors``) are read too (``LEGACY_FILES``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import HyperEditError

CONFIG_FILE = "editor.json"
WEIGHTS_FILE = "editor.safetensors"
LEGACY_FILES = ("config.json", "state.safetensors")  # AlphaEdit's ``save`` before this format
_OWN_FIELDS = ("editor", "config", "model", "modules")


@dataclass
class SavedEditor:
    """A saved editor's folder and its ``editor.json`` (``meta``)."""

    folder: Path
    meta: dict
    weights_file: str = WEIGHTS_FILE

    @property
    def editor(self) -> str:
        return self.meta["editor"]

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def model(self) -> dict | None:
        return self.meta.get("model")

    @property
    def module_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(shape) for name, shape in self.meta["modules"].items()}

    @property
    def extra(self) -> dict:
        """What ``editor.json`` records besides the editor, its options, model and modules."""
        return {k: v for k, v in self.meta.items() if k not in _OWN_FIELDS}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the weights file (safetensors: no code runs on load)."""
        path = self.folder / self.weights_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise HyperEditError(f"{path}: unreadable safetensors file ({exc})") from None

    def load_into(self, module: torch.nn.Module, tensors: dict[str, torch.Tensor] | None = None,
                  prefix: str = "") -> None:
        """Load the tensors named ``prefix + key`` (all of ``tensors()`` by default) into ``module``;
        weights that do not fit it are one HyperEditError line."""
        tensors = self.tensors() if tensors is None else tensors
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise HyperEditError(f"{self.folder / self.weights_file} does not match its {CONFIG_FILE}: "
                                 f"{first[-1].strip() if first else exc}") from None


def write_editor(folder: str | Path, editor: str, config, tensors: dict[str, torch.Tensor], **fields) -> Path:
    """Write ``editor.json`` (``editor``, ``config`` as a dict, ``fields``) and ``editor.safetensors``
    (``tensors`` as contiguous CPU copies) into ``folder``, created if needed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    options = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    meta = {"editor": editor, "config": options, **fields}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def read_editor(path: str | Path, editor: str | None = None, trained: bool = True) -> SavedEditor:
    """The saved editor in ``path`` (a folder, or a training run's latest checkpoint).

    ``editor``: the name it must hold. ``trained``: its ``editor.json`` must also list the edited
    modules (``modules``), as every trained editor's does. Anything missing, malformed or of
    another editor is one HyperEditError line."""
    from ..checkpoints import resolve_checkpoint

    legacy = Path(path) / LEGACY_FILES[0]
    if not trained and not (Path(path) / CONFIG_FILE).is_file() and legacy.is_file():
        folder, config_file, weights_file = Path(path), LEGACY_FILES[0], LEGACY_FILES[1]
    else:
        folder, config_file, weights_file = resolve_checkpoint(path, CONFIG_FILE), CONFIG_FILE, WEIGHTS_FILE
    try:
        meta = json.loads((folder / config_file).read_text())
    except json.JSONDecodeError as exc:
        raise HyperEditError(f"{folder / config_file}: invalid JSON ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HyperEditError(f"{folder / config_file}: unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise HyperEditError(f"{folder / config_file}: not an editor checkpoint (expected a JSON object)")
    needed = (("editor", str), ("config", dict)) + ((("modules", dict),) if trained else ())
    missing = [k for k, kind in needed if not isinstance(meta.get(k), kind)]
    if not (folder / weights_file).is_file():
        missing.append(weights_file)
    if missing:
        raise HyperEditError(f"{folder}: not a complete editor checkpoint; missing or malformed: {', '.join(missing)}")
    if editor is not None and meta["editor"] != editor:
        raise HyperEditError(f"{path} holds a {meta['editor']!r} checkpoint, not {editor!r}")
    return SavedEditor(folder, meta, weights_file)
