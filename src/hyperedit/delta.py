"""EditDelta: an edit as data — per-module weight shifts plus metadata.

Shifts are stored in each parameter's own layout, so applying is ``weight += shift``.
``revert`` restores the saved original tensors, bit for bit (subtracting the shift back would
not be exact in low precision). Saved as ``shifts.safetensors`` + ``delta.json`` in a directory,
written to a temporary sibling and renamed into place.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DeltaMismatchError, HyperEditError, NonFiniteDeltaError
from .models.adapters import ModelAdapter
from .models.placement import check_on_device
from .outputs import write_directory

SHIFTS_FILE = "shifts.safetensors"
META_FILE = "delta.json"


def _version() -> str:
    from .version import __version__

    return __version__


class EditDelta:
    """Per-module weight shifts ``{module_name: tensor}`` with metadata.

    ``meta`` holds the editor name and config, the model identity (architecture, sizes),
    the module shapes and the hyperedit version; ``apply`` refuses a model that does not match.
    """

    def __init__(self, shifts: dict[str, torch.Tensor], meta: dict | None = None):
        self.shifts = {name: t.detach() for name, t in shifts.items()}
        self.meta = dict(meta or {})
        self.meta.setdefault("hyperedit_version", _version())
        self.meta["shapes"] = {name: list(t.shape) for name, t in self.shifts.items()}
        self._backup: dict[str, torch.Tensor] | None = None
        self._applied_to: int | None = None

    @classmethod
    def from_in_out(cls, adapter: ModelAdapter, shifts_in_out: dict[str, torch.Tensor], editor: str,
                    config: dict | None = None, **extra) -> "EditDelta":
        """Build a delta from (d_in, d_out) shifts, converting to each parameter's layout."""
        shifts = {name: adapter.shift_to_param(name, s) for name, s in shifts_in_out.items()}
        meta = {"editor": editor, "config": config or {}, "model": adapter.identity(), **extra}
        return cls(shifts, meta)

    # ----- applying ----------------------------------------------------------------------
    @property
    def is_applied(self) -> bool:
        return self._backup is not None

    def check_fits(self, model: torch.nn.Module) -> None:
        """Raise DeltaMismatchError unless every shift matches a parameter of the model."""
        identity = self.meta.get("model") or {}
        config = getattr(model, "config", None)
        if identity and config is not None:
            model_type = getattr(config, "model_type", None)
            if identity.get("model_type") not in (None, model_type):
                raise DeltaMismatchError(
                    f"delta was made for a {identity.get('model_type')} model, not {model_type}"
                )
        params = dict(model.named_modules())
        for name, shift in self.shifts.items():
            module = params.get(name)
            if module is None or not hasattr(module, "weight"):
                raise DeltaMismatchError(f"delta edits module {name!r}, which this model does not have")
            if tuple(module.weight.shape) != tuple(shift.shape):
                raise DeltaMismatchError(
                    f"delta shift for {name!r} has shape {tuple(shift.shape)}, the model's weight is {tuple(module.weight.shape)}"
                )

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> "EditDelta":
        """Add the shifts to the model's weights in place, keeping the originals for ``revert``."""
        if self.is_applied:
            raise HyperEditError("delta is already applied; revert it first")
        self.check_fits(model)
        check_on_device(model, list(self.shifts))
        modules = dict(model.named_modules())
        self._backup = {}
        for name, shift in self.shifts.items():
            weight = modules[name].weight
            self._backup[name] = weight.detach().clone()
            weight.add_(shift.to(device=weight.device, dtype=weight.dtype))
        self._applied_to = id(model)
        return self

    @torch.no_grad()
    def revert(self, model: torch.nn.Module) -> None:
        """Restore exactly the weights the model had before ``apply``."""
        if not self.is_applied:
            raise HyperEditError("delta is not applied")
        if self._applied_to != id(model):
            raise HyperEditError("delta was applied to a different model object")
        modules = dict(model.named_modules())
        for name, original in self._backup.items():
            modules[name].weight.copy_(original)
        self._backup = None
        self._applied_to = None

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """``with delta.applied(model): ...`` — applied inside the block, reverted on exit (also on errors)."""
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)

    # ----- algebra -------------------------------------------------------------------
    def compose(self, other: "EditDelta") -> "EditDelta":
        """The delta whose shifts are the sum of both (same modules added, others kept)."""
        shifts = dict(self.shifts)
        for name, t in other.shifts.items():
            shifts[name] = shifts[name] + t if name in shifts else t
        meta = {**self.meta, "composed_of": [self.meta.get("editor"), other.meta.get("editor")]}
        return EditDelta(shifts, meta)

    def check_finite(self, where: str = "the edit") -> None:
        """Raise ``NonFiniteDeltaError`` if any shift holds inf or NaN (an unstable option such as a
        huge learning rate); every editor's result, every save and every ledger entry is checked."""
        for name, shift in self.shifts.items():
            if shift.is_meta:  # an offloaded module's shift has no values; applying it is refused
                continue
            bad = int((~torch.isfinite(shift)).sum())
            if bad:
                raise NonFiniteDeltaError(
                    f"{where}: the shift of {name} holds {bad} non-finite value(s) of {shift.numel()}; "
                    f"nothing was saved or applied (an option such as lr may be too large)")

    def norms(self) -> dict[str, float]:
        return {name: float(t.float().norm()) for name, t in self.shifts.items()}

    # ----- persistence -----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the delta into directory ``path`` atomically.

        An earlier delta there is replaced; anything else is refused (``hyperedit.outputs``)."""
        path = Path(path)
        self.check_finite()
        with write_directory(path, "delta") as tmp:
            save_file({k: v.contiguous().cpu() for k, v in self.shifts.items()}, str(tmp / SHIFTS_FILE))
            (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True, default=str))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "EditDelta":
        """Read a delta saved by ``save`` (safetensors only: no code runs on load)."""
        path = Path(path)
        shifts_file, meta_file = path / SHIFTS_FILE, path / META_FILE
        if not shifts_file.is_file() or not meta_file.is_file():
            raise HyperEditError(f"{path}: not a saved delta (expected {SHIFTS_FILE} and {META_FILE})")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise HyperEditError(f"{meta_file}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(meta, dict):
            raise HyperEditError(f"{meta_file}: expected a JSON object")
        try:
            shifts = load_file(str(shifts_file), device=str(device))
        except SafetensorError as exc:
            raise HyperEditError(f"{shifts_file}: unreadable safetensors file ({exc})") from exc
        delta = cls(shifts, meta)
        delta.check_finite(str(shifts_file))
        if meta.get("shapes") and {k: list(v.shape) for k, v in shifts.items()} != meta["shapes"]:
            raise HyperEditError(f"{path}: shapes in {META_FILE} do not match {SHIFTS_FILE}")
        return delta

    def __repr__(self) -> str:
        return f"EditDelta(editor={self.meta.get('editor')!r}, modules={list(self.shifts)})"
