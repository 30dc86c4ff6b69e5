"""Every editor's demo on a user's machine: no benchmark data, an empty statistics cache.

    python benchmarks/demo_no_data.py

Runs ``hyperedit demo --editor NAME --json`` for every registered editor in a fresh process, with
``HYPEREDIT_NO_DATA_SEARCH=1``, no ``HYPEREDIT_DATA_DIR``, the working directory in an empty
folder and an empty statistics cache (so key statistics come from the package, as on a fresh
clone). Records the demo's ES / GS / LS, how many of its unrelated rows changed (and which), and
the wall time of the whole command (model load included) in
``benchmarks/results/<out>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def run_demo(name: str, threads: int) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("HYPEREDIT_DATA_DIR", "HYPEREDIT_STATS_CORPUS")}
        env.update(HYPEREDIT_NO_DATA_SEARCH="1", HYPEREDIT_STATS_CACHE=str(Path(tmp) / "stats"),
                   OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "hyperedit", "demo", "--editor", name, "--json", "-q"],
                              cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"demo --editor {name} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", default="", help="comma-separated (default: every registered editor)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="demo_no_data")
    parser.add_argument("--append", action="store_true",
                        help="keep the records of other editors already in OUT.json (replace this run's editors)")
    args = parser.parse_args()

    from hyperedit.bench import make_record, write_results
    from hyperedit.editors import editor_names

    names = args.editors.split(",") if args.editors else editor_names()
    earlier = RESULTS_DIR / f"{args.out}.json"
    records = [r for r in json.loads(earlier.read_text()) if r["editor"] not in names] if args.append and earlier.exists() else []
    for name in names:
        out, seconds = run_demo(name, args.threads)
        changed = out["unrelated_changed"]
        metrics = {k: out["metrics"][k] for k in ("ES", "GS", "LS")}
        records.append(make_record(
            editor=name, model=out["model"], dataset="demo", split="demo", mode="batch",
            n_edits=sum(row["kind"] == "edit" for row in out["rows"]), metrics=metrics,
            edit_time_s=out["edit_time_s"], peak_rss_mb=None, seed=0, wall_s=round(seconds, 1),
            unrelated_changed=f"{len(changed)} of {out['unrelated_rows']}", changed_rows="; ".join(changed)))
    write_results(records, args.out, RESULTS_DIR, title="`hyperedit demo` for every editor on a user's machine",
                  notes="No benchmark data, an empty statistics cache (key statistics from the package), a fresh "
                        "process per editor; `edit_time_s`: the edit alone (key statistics "
                        "looked up included); `wall_s`: the whole command, model load and generation included (the "
                        "model cache was warm); one CPU thread, on a machine shared with other jobs.",
                  columns=("wall_s", "unrelated_changed", "changed_rows"))


if __name__ == "__main__":
    main()
