"""Checkpoints that survive ``kill -9``: one directory per step, a ``LATEST`` pointer, atomic writes.

A run directory looks like::

    RUN/LATEST                     name of the newest complete checkpoint (replaced atomically)
    RUN/checkpoints/step-000040/   the files of one checkpoint (e.g. editor.json + editor.safetensors,
                                   trainer.json + trainer.safetensors)
    RUN/metrics.jsonl

A checkpoint directory is written under a temporary name and renamed into place, and only then
does ``LATEST`` move to it, so a process killed at any moment leaves the previous checkpoint
intact. Anything resumable (meta-training, trajectory training, lifelong runs) uses
``CheckpointStore`` with its own files, and ``optimizer_state``/``rng_state`` for the pieces every
resumable loop needs; editors use ``resolve_checkpoint`` to find the files they load.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .atomic import atomic_write_text, publish_modes
from .errors import HyperEditError

LATEST = "LATEST"
CHECKPOINTS = "checkpoints"


class CheckpointStore:
    """Numbered checkpoints under ``root/checkpoints`` with an atomically updated ``LATEST``."""

    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = max(1, int(keep))

    @property
    def folder(self) -> Path:
        return self.root / CHECKPOINTS

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp_dir)`` to fill a new checkpoint, then publish it as step ``step``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:06d}"
        final = self.folder / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.folder))
        try:
            write(tmp)
            for item in tmp.iterdir():
                with open(item, "rb") as handle:
                    os.fsync(handle.fileno())
            publish_modes(tmp)
            if final.exists():  # a checkpoint of this step from an interrupted earlier attempt
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        atomic_write_text(self.root / LATEST, name + "\n", fsync=True)
        self._prune(name)
        return final

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.folder / pointer.read_text().strip()
        return path if path.is_dir() else None

    def _prune(self, current: str) -> None:
        names = sorted(p.name for p in self.folder.iterdir() if p.is_dir() and p.name.startswith("step-"))
        for stale in names[: max(0, len(names) - self.keep)]:
            if stale != current:
                shutil.rmtree(self.folder / stale, ignore_errors=True)
        for leftover in self.folder.glob(".step-*"):  # temporary directories of killed writes
            shutil.rmtree(leftover, ignore_errors=True)


def resolve_checkpoint(path: str | Path, marker: str) -> Path:
    """A directory holding ``marker``: ``path`` itself, or the latest checkpoint of a run directory."""
    path = Path(path)
    if (path / marker).is_file():
        return path
    if path.is_dir():
        latest = CheckpointStore(path).latest()
        if latest is not None and (latest / marker).is_file():
            return latest
        raise HyperEditError(f"{path}: no checkpoint here (expected {marker} or a training run with {LATEST})")
    raise HyperEditError(f"checkpoint directory not found: {path}")


# ----- state that every resumable loop needs ------------------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict, dict]:
    """(tensors, JSON meta) of an optimiser's state, for safetensors + JSON instead of pickle."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value.detach().cpu().clone()  # never share storage
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "optim") -> None:
    """Inverse of ``optimizer_state``."""
    entries: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            entries.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    # JSON turns tuples (Adam's betas) into lists, and torch's Adam does not treat them alike.
    groups = [{k: (v if k == "params" or not isinstance(v, list) else tuple(v)) for k, v in g.items()}
              for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": entries, "param_groups": groups})


def rng_state(generators: dict[str, torch.Generator] | None = None) -> tuple[dict, dict]:
    """(tensors, JSON meta) of the global torch and Python RNGs and any named torch generators."""
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    for name, gen in (generators or {}).items():
        tensors[f"rng.gen.{name}"] = gen.get_state()
    version, values, gauss = random.getstate()
    return tensors, {"python": [version, list(values), gauss]}


def restore_rng_state(tensors: dict, meta: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of ``rng_state``."""
    torch.set_rng_state(tensors["rng.torch"])
    for name, gen in (generators or {}).items():
        gen.set_state(tensors[f"rng.gen.{name}"])
    version, values, gauss = meta["python"]
    random.setstate((version, tuple(values), gauss))


# ----- resuming with the settings of the run ------------------------------------------------
_MISSING = "(not set)"


def setting_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``"key: run has A, now B"`` for each setting that differs, nested objects walked (``a.b``)."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        name = f"{prefix}{key}"
        old, new = saved.get(key, _MISSING), current.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(new, dict):
            out.extend(setting_differences(old, new, name + "."))
        elif old != new:
            out.append(f"{name}: run has {_short(old)}, now {_short(new)}")
    return out


def _short(value, limit: int = 60) -> str:
    text = value if value is _MISSING else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_same_settings(run_dir: Path, saved: dict, current: dict, what: str = "run") -> None:
    """Refuse to resume ``run_dir`` with settings other than its own, naming each difference."""
    differences = setting_differences(saved, current)
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise HyperEditError(f"{run_dir} holds a {what} with other settings ({shown}); resume with the same "
                             "options or choose another --out")


def half_matrices(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 matrices -> float16 (a smaller stored editor); vectors, scalars and float64 statistics
    unchanged. ``load_state_dict`` casts them back to the module's dtype on load."""
    return {k: v.half() if v.dtype == torch.float32 and v.dim() >= 2 else v for k, v in tensors.items()}
