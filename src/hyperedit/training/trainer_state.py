"""The trainer half of a training checkpoint, and the one save and resume both trainers use.

A checkpoint folder holds the editor's files (``editors.checkpoint``: ``editor.json`` +
``editor.safetensors``) and the trainer's: optimiser and RNG state (``trainer.safetensors``) plus
JSON meta (``trainer.json``: step, optimiser scalars, RNG, threads, ranks and the run's identity).
The generic pieces (``CheckpointStore``, ``optimizer_state``, ``rng_state``) live in
``hyperedit.checkpoints``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoints import (CheckpointStore, check_same_settings, load_optimizer_state, optimizer_state,
                           restore_rng_state, rng_state)

log = logging.getLogger(__name__)

TRAINER_JSON = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def write_trainer_state(folder: Path, step: int, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Save a trainer's optimizer and RNG state (safetensors) and ``meta`` (JSON) into ``folder``."""
    opt_tensors, opt_meta = optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state()
    save_file({**opt_tensors, **rng_tensors}, str(folder / TRAINER_TENSORS))
    write_json(folder / TRAINER_JSON, {"step": step, "optimizer": opt_meta, "rng": rng_meta,
                                       "threads": torch.get_num_threads(), **meta})


def save_checkpoint(store: CheckpointStore, step: int, editor, optimizer: torch.optim.Optimizer, identity: dict,
                    **meta) -> Path:
    """Publish checkpoint ``step``: the editor (its ``editor.json`` records the step and the run's
    ``identity``) and the trainer state (``identity`` and ``meta`` in ``trainer.json``)."""

    def write(folder: Path) -> None:
        editor.save(folder, extra_meta={"training": {"step": step, **identity}})
        write_trainer_state(folder, step, optimizer, {**identity, **meta})

    return store.save(step, write)


def resume_checkpoint(folder: Path, run_dir: Path, editor, optimizer: torch.optim.Optimizer, identity: dict,
                      ranks: int, resumable: tuple[str, ...] = ()) -> int:
    """Load checkpoint ``folder`` of ``run_dir`` into ``editor`` and ``optimizer`` (and the RNGs) and
    return its step. The run's ``identity`` must be the one saved (settings in ``resumable`` aside,
    ``train_config`` keys that may change on resume); another thread or rank count is a warning."""
    meta = json.loads((folder / TRAINER_JSON).read_text())
    mine = json.loads(json.dumps(identity))
    theirs = {k: meta.get(k) for k in mine}
    if resumable and "train_config" in theirs:
        theirs["train_config"] = {k: v for k, v in (theirs["train_config"] or {}).items() if k not in resumable}
    check_same_settings(run_dir, theirs, mine)
    if meta.get("threads") != torch.get_num_threads():
        log.warning("resuming with %d threads, the run used %s: results may differ in the last bits",
                    torch.get_num_threads(), meta.get("threads"))
    if meta.get("ranks", 1) != ranks:
        log.warning("resuming on %d rank(s), the run used %s: sums are added in another order, so results "
                    "may differ in the last bits", ranks, meta.get("ranks", 1))
    editor.load_weights(folder)
    tensors = load_file(str(folder / TRAINER_TENSORS))
    load_optimizer_state(optimizer, tensors, meta["optimizer"])
    restore_rng_state(tensors, meta["rng"])
    return int(meta["step"])
