"""Evaluation protocols: batch (edit N requests at once), single (each request alone on the unedited
model) and sequential (batches on top of each other).

All leave the model exactly as they found it: every delta is reverted at the end, also on errors.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass

from ..bench.records import make_record, peak_rss_during
from ..models.limits import check_request_lengths
from ..progress import progress
from ..requests import EditRequest
from .evaluate import evaluate, locality_reference
from .metrics import mean

log = logging.getLogger(__name__)


def _config_dict(editor) -> dict:
    config = getattr(editor, "config", None)
    return asdict(config) if is_dataclass(config) else {}


def _edit_and_evaluate(lm, editor, requests: list[EditRequest], eval_batch_size: int, fluency_n: int,
                       reference=None, generated: bool = True):
    """Locality reference on the unedited model (unless given), edit, evaluate with the delta applied,
    revert.

    Returns ``(metrics, rows, delta, edit_seconds, peak_rss_mb)``; the model is as it was on return.
    """
    if reference is None:
        reference = locality_reference(lm.adapter, requests, eval_batch_size, generated=generated)
    delta, seconds, peak = peak_rss_during(editor.edit, lm, requests)
    with delta.applied(lm.model):
        metrics, rows = evaluate(lm.adapter, requests, reference, eval_batch_size, fluency_n, generated=generated)
    return metrics, rows, delta, seconds, peak


def _pre_edit_metrics(adapter, requests, eval_batch_size: int, fluency_n: int) -> dict:
    before, _ = evaluate(adapter, requests, None, eval_batch_size, fluency_n)
    before.pop("LS", None)
    return before


def run_batch(lm, editor, requests: list[EditRequest], *, dataset: str, split: str, command: str | None = None,
              seed: int = 0, eval_batch_size: int = 32, fluency: bool = False, pre_metrics: bool = True,
              keep_rows: bool = False, reference=None, generated: bool = True) -> dict:
    """Edit all ``requests`` at once, measure, revert; return one result record (mode ``batch``).

    ``generated``: also the generated-answer metrics (``ES_gen`` ..., ``eval.generation``).

    ``reference``: ``locality_reference`` of these requests on this (unedited) model, when several
    editors are measured on the same batch (it is computed here otherwise)."""
    check_request_lengths(lm.adapter, requests)
    fluency_n = min(len(requests), 50) if fluency else 0
    before = _pre_edit_metrics(lm.adapter, requests, eval_batch_size, fluency_n) if pre_metrics else None
    log.info("editing %d requests with %s", len(requests), editor.name)
    metrics, rows, delta, seconds, peak = _edit_and_evaluate(lm, editor, requests, eval_batch_size, fluency_n,
                                                             reference, generated)
    extra = {"config": _config_dict(editor), "metrics_pre_edit": before,
             "time_per_request_s": seconds / max(1, len(requests)), "delta_norm": sum(delta.norms().values())}
    if keep_rows:
        extra["rows"] = rows
    return make_record(editor=editor.name, model=lm.name, dataset=dataset, split=split, mode="batch",
                       n_edits=len(requests), metrics=metrics, edit_time_s=seconds, peak_rss_mb=peak,
                       command=command, seed=seed, **extra)


def run_single(lm, editor, requests: list[EditRequest], *, dataset: str, split: str, command: str | None = None,
               seed: int = 0, eval_batch_size: int = 32, fluency: bool = False, pre_metrics: bool = True,
               keep_rows: bool = False, generated: bool = True) -> dict:
    """Edit each request alone on the unedited model, evaluate it, revert (mode ``single``).

    This is the protocol of EasyEdit and most papers. Each metric of the record is the mean over
    requests of that request's own value (requests without a value, e.g. no rephrasing for GS,
    are left out of that mean); ``edit_time_s`` is the total editing time, ``time_per_request_s``
    its mean and ``edit_time_per_request_s`` the list of each request's editing time.
    """
    check_request_lengths(lm.adapter, requests)
    fluency_n = min(len(requests), 50) if fluency else 0
    before = _pre_edit_metrics(lm.adapter, requests, eval_batch_size, fluency_n) if pre_metrics else None
    per_request, rows, times, peak, delta_norms = [], [], [], 0.0, []
    for request in progress(requests, desc=f"{editor.name} single edits", unit="edit"):
        metrics, request_rows, delta, seconds, request_peak = _edit_and_evaluate(
            lm, editor, [request], eval_batch_size, 1 if fluency else 0, generated=generated)
        per_request.append(metrics)
        rows.extend(request_rows)
        times.append(seconds)
        peak = max(peak, request_peak)
        delta_norms.append(sum(delta.norms().values()))
    keys = list(dict.fromkeys(k for m in per_request for k in m))
    metrics = {k: mean(m.get(k) for m in per_request) for k in keys}
    total = sum(times)
    extra = {"config": _config_dict(editor), "metrics_pre_edit": before,
             "time_per_request_s": total / max(1, len(requests)),
             "edit_time_per_request_s": [round(t, 4) for t in times],
             "delta_norm": mean(delta_norms)}
    if keep_rows:
        extra["rows"] = rows
    return make_record(editor=editor.name, model=lm.name, dataset=dataset, split=split, mode="single",
                       n_edits=len(requests), metrics=metrics, edit_time_s=total, peak_rss_mb=peak,
                       command=command, seed=seed, **extra)


def run_sequential(lm, editor, batches: list[list[EditRequest]], *, dataset: str, split: str,
                   command: str | None = None, seed: int = 0, eval_batch_size: int = 32, fluency: bool = False,
                   generated: bool = True) -> dict:
    """Apply each batch's delta on top of the earlier ones, then evaluate every edit (mode ``sequential``)."""
    adapter = lm.adapter
    requests = [r for batch in batches for r in batch]
    check_request_lengths(adapter, requests)
    reference = locality_reference(adapter, requests, eval_batch_size, generated=generated)
    applied = []
    total_seconds, peak = 0.0, 0.0
    try:
        for batch in progress(batches, desc=f"{editor.name} sequential batches", unit="batch"):
            delta, seconds, batch_peak = peak_rss_during(editor.edit, lm, batch)
            delta.apply(lm.model)
            applied.append(delta)
            total_seconds += seconds
            peak = max(peak, batch_peak)
        metrics, _ = evaluate(adapter, requests, reference, eval_batch_size, min(len(requests), 50) if fluency else 0,
                              generated=generated)
    finally:
        for delta in reversed(applied):
            delta.revert(lm.model)
    return make_record(editor=editor.name, model=lm.name, dataset=dataset, split=split, mode="sequential",
                       n_edits=len(requests), metrics=metrics, edit_time_s=total_seconds, peak_rss_mb=peak,
                       command=command, seed=seed, config=_config_dict(editor), n_batches=len(batches),
                       batch_size=len(batches[0]) if batches else 0,
                       time_per_request_s=total_seconds / max(1, len(requests)))
