"""Do the shipped key statistics (float16 upper triangle) edit as float32 statistics do?

    python benchmarks/shipped_stats_precision.py --n 16 --threads 1

For each editor that reads key statistics, edits the first ``--n`` requests of ``--data`` (the
packaged CounterFact sample by default, so this runs without benchmark data) twice on the same
model: once with the float32 statistics of the user cache (computed from the packaged corpus with
the shipped files' key: run `hyperedit stats compute --layers 4-8,24-29` first), once with only
the statistics shipped in the package (an empty cache). Records ES / GS / LS of both,
the largest relative difference between their weight shifts, and whether the second edit
computed anything (it must not: the shipped files were used), in
``benchmarks/results/<out>.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
EDITORS = ("memit", "alphaedit", "metake", "rledit", "hiedit")


def _edit(lm, name, requests, cache: Path):
    from hyperedit.editors import get_editor

    os.environ["HYPEREDIT_STATS_CACHE"] = str(cache)
    editor = get_editor(name, lm=lm)
    start = time.perf_counter()
    delta = editor.edit(lm, requests)
    return delta, time.perf_counter() - start


def _shipped_layouts(modules) -> list[str]:
    """The layouts (``triu-float16``/``triu-float32``) of the shipped files of ``modules``."""
    from hyperedit.stats import SHIPPED_DIR
    from hyperedit.stats.store import read_meta

    files = [f for f in SHIPPED_DIR.rglob("*.safetensors") if f.name.split("-")[0] in modules]
    return sorted({(read_meta(f) or {}).get("layout", "?") for f in files})


def _max_rel_diff(a, b) -> float:
    worst = 0.0
    for key, shift in a.shifts.items():
        other = b.shifts[key]
        worst = max(worst, float((shift.double() - other.double()).norm() / shift.double().norm().clamp_min(1e-30)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", default=",".join(EDITORS))
    parser.add_argument("--data", default="counterfact:sample")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="shipped_stats_precision")
    args = parser.parse_args()

    import torch

    from hyperedit.bench import make_record, write_results
    from hyperedit.data import load_requests
    from hyperedit.eval import evaluate, locality_reference
    from hyperedit.models import load_model
    from hyperedit.stats import stats_cache_dir

    torch.set_num_threads(args.threads)
    os.environ["HYPEREDIT_NO_DATA_SEARCH"] = "1"
    lm = load_model("smollm2-135m")
    requests = load_requests(args.data, limit=args.n)
    reference = locality_reference(lm.adapter, requests)
    records = []
    computed = stats_cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        shipped_only = Path(tmp) / "shipped-only"
        for name in args.editors.split(","):
            deltas = {}
            for variant, cache in (("float32 computed", computed), ("shipped", shipped_only)):
                delta, seconds = _edit(lm, name, requests, cache)
                with delta.applied(lm.model):
                    metrics, _ = evaluate(lm.adapter, requests, reference)
                deltas[variant] = delta
                records.append(make_record(
                    editor=name, model=lm.name, dataset=args.data.split(":")[0], split=args.data.split(":")[-1],
                    mode="batch", n_edits=len(requests), seed=0, edit_time_s=round(seconds, 2), peak_rss_mb=None,
                    metrics={k: metrics[k] for k in ("ES", "GS", "LS")}, statistics=variant))
            records[-1]["max_rel_shift_diff"] = _max_rel_diff(deltas["float32 computed"], deltas["shipped"])
            records[-1]["statistics"] = "shipped " + "/".join(_shipped_layouts(deltas["shipped"].shifts))
            records[-1]["computed_with_shipped"] = sorted(p.name for p in shipped_only.rglob("*.safetensors"))
    write_results(records, args.out, RESULTS_DIR, title="Shipped key statistics (float16) against float32 ones",
                  notes="Same model, same requests; `max_rel_shift_diff`: the largest relative difference "
                        "(Frobenius norm) between the two edits' weight shifts over the edited modules; "
                        "`computed_with_shipped`: statistics files the shipped-only edit had to compute (none: "
                        "the shipped files were used).",
                  columns=("statistics", "max_rel_shift_diff", "computed_with_shipped"))


if __name__ == "__main__":
    main()
