"""Before the first meta-training step: the initial edit ``lr`` (a grid search on the untrained
editor's loss) and, with ``lambda_init="trace"``, the initial ridge strength of every module."""
from __future__ import annotations

import logging
from typing import Callable

import torch

from ..delta import EditDelta
from ..distributed import World, all_reduce_floats
from ..editors.protocols import LearnedRidge
from .losses import generalization_loss, locality_loss, reference_log_probs

log = logging.getLogger(__name__)


def init_lambda(editor, cache: dict, world: World) -> None:
    """e^lambda[m] = tr(K^T K) / tr(R) of module m's keys in ``cache`` (``lambda_init="trace"``;
    R the ridge matrix, tr(I) = d_in), so the ridge starts at the scale of the keys."""
    names = editor.module_names
    squares = all_reduce_floats([float(cache[name][0].double().pow(2).sum()) for name in names], world)
    for name, total in zip(names, squares):
        net, index = editor.nets.net_for(name)
        ridge_trace = editor.ridge_trace(name) if isinstance(editor, LearnedRidge) else net.d_in
        scale = torch.tensor(total / ridge_trace, dtype=torch.float64)
        net.log_lambda.data[index] = float(scale.clamp_min(1e-12).log())
    log.info("initial e^lambda (tr(K^T K)/tr(R) of the first batch): %s", ", ".join(
        f"{float(net.log_lambda[i].detach().exp()):.3g}" for name in editor.module_names
        for net, i in [editor.nets.net_for(name)]))


def calibrate_lr(editor, adapter, batch: tuple, counts: tuple[int, int], world: World, loc_coef: float,
                 record: Callable[[dict], None], max_points: int = 16) -> float:
    """Set every module's initial ``lr`` to the grid value with the lowest untrained loss.

    The grid is ``lr_init * 10^(i/2)``: i = -2..2 first, extended half a decade at a time while
    the best value lies on an edge (at most ``max_points`` values). Each value is scored by the
    generalisation loss + ``loc_coef`` x locality KL on ``batch`` (cache, generalisation and
    locality examples of this rank's share; ``counts`` of the examples over all ranks), forward
    passes only; ``record`` gets each point's log record.
    """
    cache, gen_pairs, loc_pairs = batch
    bs = editor.config.lm_batch_size
    references = reference_log_probs(adapter, loc_pairs, bs)
    n_gen, n_loc = counts
    scores: dict[int, float] = {}

    def score(i: int) -> float:
        lr = editor.config.lr_init * 10 ** (i / 2)
        for net in editor.nets.nets.values():
            net.lr.data.fill_(lr)
        _, shifts = editor.predict(cache, world)
        delta = EditDelta.from_in_out(adapter, shifts, editor=editor.name)
        gen = generalization_loss(adapter, gen_pairs, delta, bs, backward=False, total_examples=n_gen)
        loc = locality_loss(adapter, loc_pairs, delta, bs, backward=False, references=references,
                            total_examples=n_loc)
        gen, loc = all_reduce_floats([gen, loc], world)
        record({"step": 0, "split": "calibration", "lr": lr, "gen_loss": gen, "loc_loss": loc})
        return gen + loc_coef * loc

    for i in range(-2, 3):
        scores[i] = score(i)
    while len(scores) < max_points:
        best = min(scores, key=lambda i: (scores[i], i))
        if best == max(scores):
            scores[best + 1] = score(best + 1)
        elif best == min(scores):
            scores[best - 1] = score(best - 1)
        else:
            break
    best = min(scores, key=lambda i: (scores[i], i))
    lr = editor.config.lr_init * 10 ** (best / 2)
    for net in editor.nets.nets.values():
        net.lr.data.fill_(lr)
    log.info("calibrated initial edit lr: %.3g (%d values tried)", lr, len(scores))
    return lr
