"""The trainer half of a training checkpoint: optimiser and RNG state (safetensors) plus JSON meta.

The generic pieces (``CheckpointStore``, ``optimizer_state``, ``rng_state``) live in
``hyperedit.checkpoints``; this adds the file layout both trainers share.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints import optimizer_state, rng_state

TRAINER_JSON = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def write_trainer_state(folder: Path, step: int, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Save a trainer's optimizer and RNG state (safetensors) and ``meta`` (JSON) into ``folder``."""
    from safetensors.torch import save_file

    opt_tensors, opt_meta = optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state()
    save_file({**opt_tensors, **rng_tensors}, str(folder / TRAINER_TENSORS))
    write_json(folder / TRAINER_JSON, {"step": step, "optimizer": opt_meta, "rng": rng_meta,
                                       "threads": torch.get_num_threads(), **meta})
