"""Benchmark of the locate-then-edit editors (MEMIT, AlphaEdit, MetaKE over both) and baselines.

One process per (dataset, size, mode): the editors share one target-vector cache (targets depend
only on the model state and the target options, not on the solver), so the first editor pays for
them and later ones report the cached time separately (``edit_time_with_targets_s`` adds it back).

    PYTHONPATH=src python benchmarks/locate_edit.py --data counterfact:val --n 100 \
        --editors memit,alphaedit,metake-memit,metake-alphaedit --name locate_cf_val_100

Editor names: any registered editor, plus ``metake-memit`` / ``metake-alphaedit``, optionally with
``@TAG`` to run several configurations (``memit@lam5k``). Options: ``--set key=value`` (every editor
whose config has the field) or ``--set LABEL.key=value`` (one editor label).
"""
from __future__ import annotations

from pathlib import Path

import argparse
import dataclasses
import json
import logging
import time

import torch

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("locate_edit")


def parse_sets(items: list[str]) -> tuple[dict, dict]:
    common, per = {}, {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if "." in key:
            editor, _, field = key.partition(".")
            per.setdefault(editor, {})[field] = value
        else:
            common[key] = value
    return common, per


def build_editor(label: str, common: dict, per: dict, checkpoint: str | None, lm):
    """``label`` is ``NAME`` or ``NAME@TAG`` (several configurations of one editor in a run)."""
    from hyperedit.editors import editor_entry, get_editor

    name = label.split("@", 1)[0]
    base, inner = (("metake", name.split("-", 1)[1]) if name.startswith("metake-") else (name, None))
    entry = editor_entry(base)
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    options = {k: v for k, v in common.items() if k in fields}
    options.update(per.get(label, {}))
    if inner:
        options["inner"] = inner
    editor = get_editor(base, checkpoint=checkpoint, lm=lm, **options) if entry.needs_checkpoint \
        else get_editor(base, **options)
    return editor, options


class Recording:
    """Wraps an editor: same protocol, keeps each call's ``last_info`` (diagnostics)."""

    def __init__(self, editor, label: str):
        self.editor, self.name, self.config, self.infos = editor, label, getattr(editor, "config", None), []

    def edit(self, lm, requests):
        delta = self.editor.edit(lm, requests)
        self.infos.append(getattr(self.editor, "last_info", {}) or {})
        return delta


def summarise(infos: list[dict], keep_lists: bool) -> dict:
    """Locate-then-edit diagnostics of all edit calls (per-request lists only when asked)."""
    out: dict = {"calls": len(infos)}
    for key in ("target_time_s", "target_cached_time_s", "targets_cached", "meta_time_s", "solve_time_s"):
        vals = [i[key] for i in infos if i.get(key) is not None]
        if vals:
            out[key] = round(float(sum(vals)), 3)
    for key in ("target_steps_mean", "target_nll_mean", "mean_residual_scale"):
        vals = [i[key] for i in infos if i.get(key) is not None]
        if vals:
            out[key] = round(float(sum(vals) / len(vals)), 4)
    for key in ("truncation", "truncation_before", "truncation_after", "original_plan_realised_after"):
        parts = [i[key] for i in infos if key in i]
        if not parts:
            continue
        frac = [x for p in parts for x in p["realised_fraction"]]
        miss = [x for p in parts for x in p["relative_miss"]]
        t = torch.tensor(frac)
        entry = {"mean_realised_fraction": round(float(t.mean()), 4),
                 "median_realised_fraction": round(float(t.median()), 4),
                 "share_below_half": round(float((t < 0.5).float().mean()), 4),
                 "mean_relative_miss": round(float(torch.tensor(miss).mean()), 4)}
        if keep_lists:
            entry["realised_fraction"] = frac
            entry["planned_norm"] = [x for p in parts for x in p["planned_norm"]]
        out[key] = entry
    curves = [i["proxy_loss_curve"] for i in infos if "proxy_loss_curve" in i]
    if curves:
        out["proxy_loss_curves"] = curves
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="locate-then-edit benchmark")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="counterfact:val")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--mode", choices=["batch", "sequential"], default="batch")
    ap.add_argument("--batches", type=int, default=10, help="sequential: number of consecutive batches of n/batches")
    ap.add_argument("--editors", default="memit,alphaedit,metake-memit,metake-alphaedit")
    ap.add_argument("--set", action="append", default=[], metavar="[EDITOR.]KEY=VALUE")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="EDITOR=DIR")
    ap.add_argument("--pin-targets", action="store_true",
                    help="sequential: reuse targets computed on the unedited model (approximation, saves CPU)")
    ap.add_argument("--target-chunk", type=int, default=64,
                    help="--pin-targets: requests per chunk; the target cache is saved after each (resumable)")
    ap.add_argument("--target-cache", default=None,
                    help="file to load/save target vectors from/to (shared between runs on the same model)")
    ap.add_argument("--fluency", action="store_true")
    ap.add_argument("--keep-lists", action="store_true", help="keep per-request truncation diagnostics")
    ap.add_argument("--keep-rows", action="store_true", help="batch mode: keep per-request metric rows")
    ap.add_argument("--no-pre-metrics", action="store_true",
                    help="batch mode: skip the unedited model's metrics (already in another file of the same split)")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", required=True, help="results file name under benchmarks/results/")
    ap.add_argument("--notes", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from hyperedit.bench import current_command, write_results
    from hyperedit.data import load_requests
    from hyperedit.editors.locate import TargetCache
    from hyperedit.eval import locality_reference
    from hyperedit.eval.runner import run_batch, run_sequential
    from hyperedit.commands._common import dataset_label
    from hyperedit.models import load_model

    command = "PYTHONPATH=src " + current_command()
    lm = load_model(args.model)
    requests = load_requests(args.data, limit=args.n, offset=args.offset)
    dataset, split = dataset_label(args.data)
    common, per = parse_sets(args.set)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    cache = TargetCache.for_model(lm.model, pin=args.pin_targets, path=args.target_cache)
    records = []
    # batch mode: every editor edits the unedited model, so one locality reference serves them all
    reference = locality_reference(lm.adapter, requests, args.eval_batch_size) if args.mode == "batch" else None
    if args.pin_targets:  # all targets on the unedited model, before any edit is applied
        warm, _ = build_editor("memit", common, {}, None, lm)
        warm.target_cache = cache
        computed = 0
        for start in range(0, len(requests), args.target_chunk):
            info = warm.targets(lm, requests[start:start + args.target_chunk])
            computed += len(info.nll) - info.n_cached
            if args.target_cache:
                cache.save(args.target_cache)
            log.info("pinned targets: %d of %d done (%d computed here)",
                     min(len(requests), start + args.target_chunk), len(requests), computed)
    for i, name in enumerate(args.editors.split(",")):
        editor, options = build_editor(name, common, per, checkpoints.get(name), lm)
        if hasattr(editor, "target_cache"):
            editor.target_cache = cache
        rec = Recording(editor, name)
        start = time.perf_counter()
        if args.mode == "batch":
            record = run_batch(lm, rec, requests, dataset=dataset, split=split, command=command,
                               eval_batch_size=args.eval_batch_size, fluency=args.fluency,
                               pre_metrics=(i == 0 and not args.no_pre_metrics),
                               keep_rows=args.keep_rows, reference=reference)
        else:
            size = len(requests) // args.batches
            batches = [requests[b * size:(b + 1) * size] for b in range(args.batches)]
            record = run_sequential(lm, rec, batches, dataset=dataset, split=split, command=command,
                                    eval_batch_size=args.eval_batch_size, fluency=args.fluency)
            record["pinned_targets"] = args.pin_targets
        record["options"] = options
        record["wall_time_s"] = round(time.perf_counter() - start, 1)
        if rec.infos and rec.infos[0]:
            info = summarise(rec.infos, args.keep_lists)
            record["locate"] = info
            cached = info.get("target_cached_time_s", 0.0)
            record["edit_time_with_targets_s"] = round(record["edit_time_s"] + cached, 3)
            record["time_per_request_s"] = round(record["edit_time_with_targets_s"] / max(1, len(requests)), 4)
        records.append(record)
        if args.target_cache:
            cache.save(args.target_cache)
        log.info("%s: %s", name, {k: v for k, v in record["metrics"].items() if isinstance(v, float)})
        write_results(records, args.name, RESULTS_DIR, title=f"locate-then-edit: {args.data} n={args.n} {args.mode}",
                      notes=args.notes)


if __name__ == "__main__":
    main()
