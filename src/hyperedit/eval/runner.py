"""Evaluation protocols: batch (edit N requests at once) and sequential (batches on top of each other).

Both leave the model exactly as they found it: every delta is reverted at the end, also on errors.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass

from ..bench.records import make_record, peak_rss_during
from ..requests import EditRequest
from .evaluate import evaluate, locality_reference

log = logging.getLogger(__name__)


def _config_dict(editor) -> dict:
    config = getattr(editor, "config", None)
    return asdict(config) if is_dataclass(config) else {}


def run_batch(lm, editor, requests: list[EditRequest], *, dataset: str, split: str, command: str | None = None,
              seed: int = 0, eval_batch_size: int = 32, fluency: bool = False, pre_metrics: bool = True,
              keep_rows: bool = False) -> dict:
    """Edit all ``requests`` at once, measure, revert; return one result record (mode ``batch``)."""
    adapter = lm.adapter
    fluency_n = min(len(requests), 50) if fluency else 0
    reference = locality_reference(adapter, requests, eval_batch_size)
    before = None
    if pre_metrics:
        before, _ = evaluate(adapter, requests, None, eval_batch_size, fluency_n)
        before.pop("LS", None)
    log.info("editing %d requests with %s", len(requests), editor.name)
    delta, seconds, peak = peak_rss_during(editor.edit, lm, requests)
    with delta.applied(lm.model):
        metrics, rows = evaluate(adapter, requests, reference, eval_batch_size, fluency_n)
    extra = {"config": _config_dict(editor), "metrics_pre_edit": before,
             "time_per_request_s": seconds / max(1, len(requests)), "delta_norm": sum(delta.norms().values())}
    if keep_rows:
        extra["rows"] = rows
    return make_record(editor=editor.name, model=lm.name, dataset=dataset, split=split, mode="batch",
                       n_edits=len(requests), metrics=metrics, edit_time_s=seconds, peak_rss_mb=peak,
                       command=command, seed=seed, **extra)


def run_sequential(lm, editor, batches: list[list[EditRequest]], *, dataset: str, split: str,
                   command: str | None = None, seed: int = 0, eval_batch_size: int = 32, fluency: bool = False) -> dict:
    """Apply each batch's delta on top of the earlier ones, then evaluate every edit (mode ``sequential``)."""
    adapter = lm.adapter
    requests = [r for batch in batches for r in batch]
    reference = locality_reference(adapter, requests, eval_batch_size)
    applied = []
    total_seconds, peak = 0.0, 0.0
    try:
        for batch in batches:
            delta, seconds, batch_peak = peak_rss_during(editor.edit, lm, batch)
            delta.apply(lm.model)
            applied.append(delta)
            total_seconds += seconds
            peak = max(peak, batch_peak)
        metrics, _ = evaluate(adapter, requests, reference, eval_batch_size, min(len(requests), 50) if fluency else 0)
    finally:
        for delta in reversed(applied):
            delta.revert(lm.model)
    return make_record(editor=editor.name, model=lm.name, dataset=dataset, split=split, mode="sequential",
                       n_edits=len(requests), metrics=metrics, edit_time_s=total_seconds, peak_rss_mb=peak,
                       command=command, seed=seed, config=_config_dict(editor), n_batches=len(batches),
                       batch_size=len(batches[0]) if batches else 0,
                       time_per_request_s=total_seconds / max(1, len(requests)))
