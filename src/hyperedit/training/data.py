"""Training data for meta-training: a mix of training splits, a held-out validation slice, batches.

The evaluation splits (``counterfact:val``, ``zsre:knowedit-test``) are refused here, so nothing
evaluated by the benchmarks is ever trained on. Batches are a pure function of (seed, step):
a resumed run draws exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import hashlib

import torch

from ..errors import HyperEditError
from ..requests import EditRequest

TRAIN_ALIASES = {"zsre": "zsre:train", "zsre-10k": "zsre:train-10k", "counterfact": "counterfact:train"}
EVAL_SPLITS = ("counterfact:val", "zsre:knowedit-test")


def parse_sources(spec: str) -> list[str]:
    """``"zsre,counterfact"`` -> ``["zsre:train", "counterfact:train"]`` (files and NAME:SPLIT kept)."""
    sources = [TRAIN_ALIASES.get(s.strip(), s.strip()) for s in spec.split(",") if s.strip()]
    if not sources:
        raise HyperEditError("--train needs at least one source, e.g. zsre,counterfact")
    for source in sources:
        if source in EVAL_SPLITS:
            raise HyperEditError(f"{source} is an evaluation split and is never trained on; "
                                 f"use {', '.join(TRAIN_ALIASES.values())} or your own file")
    return sources


def load_pool(spec: str, data_dir=None, limit: int | None = None) -> tuple[list[EditRequest], list[str]]:
    """All requests of the sources in ``spec`` (``limit`` per source), usable for training.

    Requests need a rephrasing or fall back to their own prompt for the generalisation loss;
    locality prompts without an answer are skipped by the locality loss.
    """
    from ..data import load_requests

    sources = parse_sources(spec)
    pool = []
    for source in sources:
        requests = load_requests(source, data_dir=data_dir, limit=limit)
        if not requests:
            raise HyperEditError(f"{source}: no requests")
        pool.extend(requests)
    return pool, sources


def fingerprint(requests: list[EditRequest]) -> str:
    """A short hash of the requests' content (to check a resumed run sees the same data)."""
    digest = hashlib.sha256()
    for r in requests:
        digest.update(f"{r.prompt}\x1f{r.target}\x1f{r.rephrasings}\x1e".encode())
    return digest.hexdigest()[:16]


def split_validation(pool: list[EditRequest], val_size: int, seed: int) -> tuple[list[EditRequest], list[EditRequest]]:
    """(train, validation): a seeded shuffle, the first ``val_size`` requests held out."""
    if val_size >= len(pool):
        raise HyperEditError(f"validation size {val_size} leaves no training data (pool of {len(pool)})")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(int(seed) + 7919)).tolist()
    shuffled = [pool[i] for i in order]
    return shuffled[val_size:], shuffled[:val_size]


def batch_for_step(train: list[EditRequest], step: int, n_edits: int, seed: int) -> list[EditRequest]:
    """The ``n_edits`` requests of step ``step`` (0-based): consecutive slices of per-epoch permutations."""
    n = len(train)
    out = []
    position = step * n_edits
    while len(out) < n_edits:
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 100_003 + epoch))
        take = min(n_edits - len(out), n - offset)
        out.extend(train[i] for i in order[offset:offset + take].tolist())
        position += take
    return out
