"""What the edit ledger costs with 10 and 1,000 entries on the embedded model.

For each N, in a fresh workspace: N - 1 saved ft deltas are imported (10 real ft edits of one
CounterFact request each, reused in turn: blobs are content-addressed, so the workspace stores
each once, but the weights still sum all N - 1 entries), then timed:
  apply    one new ft edit computed on the current weights and recorded (apply_editor_s of it is
           the editor's own time; the rest is measuring ES/GS/LS and recording)
  import   one more saved delta recorded
  list     reading every entry
  revert   reverting an entry in the middle (the weights are re-summed over the remaining ones)
  cold     opening the workspace in a new Ledger with a freshly loaded model and syncing it
  export   writing the merged model as a Hugging Face model directory

    nice -n 10 python benchmarks/ledger_cost.py --sizes 10 1000

Writes benchmarks/results/ledger_cost.json and .md. Workspaces go to a temporary directory.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("ledger_cost")
FT = {"layers": [23], "lr": 5e-4, "max_rel_norm": 0.1, "steps": 5}


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, round(time.perf_counter() - start, 4)


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def measure(n: int, deltas, requests, model: str, root: Path) -> dict:
    from hyperedit.bench.records import make_record, peak_rss_during
    from hyperedit.ledger import Ledger
    from hyperedit.models import load_model

    workspace = root / f"ws-{n}"
    ledger = Ledger(workspace).attach(load_model(model))
    start = time.perf_counter()
    for i in range(n - 1):
        ledger.import_delta(deltas[i % len(deltas)], metrics=False)
        if (i + 1) % 100 == 0:
            log.info("%d entries recorded", i + 1)
    fill_s = time.perf_counter() - start
    entry, apply_s = _timed(ledger.apply, [requests[n % len(requests)]], "ft", FT)
    _, import_s = _timed(ledger.import_delta, deltas[0], metrics=False)
    entries, list_s = _timed(ledger.entries)
    _, revert_s = _timed(ledger.revert, entries[len(entries) // 2].id)
    fresh = load_model(model)
    cold = Ledger(workspace, create=False)
    _, attach_s = _timed(cold.attach, fresh)
    _, cold_s = _timed(cold.sync)
    out = root / f"export-{n}"
    _, export_s, peak = peak_rss_during(ledger.export, out)
    metrics = {"ES": entry.metrics.get("ES"), "GS": entry.metrics.get("GS"), "LS": entry.metrics.get("LS"),
               "entries": len(entries), "apply_s": apply_s, "apply_editor_s": round(entry.edit_time_s, 3), "import_s": import_s,
               "mean_import_s_while_filling": round(fill_s / max(1, n - 1), 4), "list_s": list_s,
               "revert_s": revert_s, "cold_attach_s": attach_s, "cold_sync_s": cold_s, "export_s": round(export_s, 3),
               "workspace_mb": _dir_mb(workspace), "distinct_delta_blobs": len(ledger.blobs.digests())}
    log.info("N=%d: %s", n, metrics)
    shutil.rmtree(out, ignore_errors=True)
    return make_record(editor="ft", model=model, dataset="counterfact", split="val", mode="sequential",
                       n_edits=len(entries), metrics=metrics, edit_time_s=apply_s, peak_rss_mb=peak,
                       seed=0, what="ledger cost", ft_options=FT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="ledger_cost")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from hyperedit.bench.records import write_results
    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.models import load_model

    requests = load_requests("counterfact:val", limit=20)
    lm = load_model(args.model)
    editor = get_editor("ft", **FT)
    deltas = [editor.edit(lm, [r]) for r in requests[:10]]
    log.info("computed %d ft deltas", len(deltas))
    root = Path(tempfile.mkdtemp(prefix="ledger-cost-"))
    try:
        records = [measure(n, deltas, requests[10:], args.model, root) for n in args.sizes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    notes = ("Seconds per operation on a ledger of N entries (ft deltas on one 576x1536 MLP matrix of SmolLM2-135M, "
             "float32, CPU shared with other jobs, so times are noisy). The weights are re-derived as base + float64 "
             "sum of the active shifts in id order, so `revert` and a cold `sync` grow with N; `apply` and `import` "
             "add one shift to a running sum. Ten distinct deltas are reused for the N - 1 imported entries, so the "
             "workspace holds eleven delta files (with the applied one) whatever N is. The ft setting is a cheap "
             "5-step one chosen for cost figures, not for edit quality: its ES/GS are 0 (the fact is not flipped).")
    write_results(records, args.out, RESULTS_DIR, title="Ledger cost: apply, revert, export with N entries", notes=notes)


if __name__ == "__main__":
    main()
