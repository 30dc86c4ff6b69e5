"""A MALMEN edit of many facts on 1 rank and on N ranks (torchrun, gloo, one thread per rank).

Measures, per rank count: the edit's wall time and peak RSS on every rank, and how far the delta
of N ranks is from the 1-rank delta (they differ only by summation order). Edit quality is not
the point here: without ``--checkpoint`` an untrained MALMEN of the default shape is used, which
costs exactly what a trained one costs.

    python benchmarks/distributed_edit.py --facts 10000 --ranks 1,2

Writes benchmarks/results/distributed_edit.json and .md; deltas and per-rank logs under runs/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("distributed_edit")


def worker(args) -> None:
    """One rank: join the group, edit its share, gather timings to rank 0, which saves the delta."""
    import torch.distributed as dist

    from hyperedit import load_model
    from hyperedit.bench import peak_rss_during
    from hyperedit.data import load_requests
    from hyperedit.distributed import init_from_environment
    from hyperedit.editors import get_editor
    from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor

    world = init_from_environment("cpu")
    lm = load_model(args.model)
    requests = load_requests(args.data, limit=args.facts)
    if args.checkpoint:
        editor = get_editor("malmen", checkpoint=args.checkpoint, lm=lm)
    else:
        editor = MalmenEditor.create(MalmenConfig(solve_dtype=args.solve_dtype), lm, seed=0)
    cpu_before = _cpu_seconds()
    delta, seconds, peak = peak_rss_during(editor.edit, lm, requests)
    mine = {"rank": world.rank, "edit_time_s": seconds, "peak_rss_mb": peak, "cpu_s": _cpu_seconds() - cpu_before}
    stats = [mine] * world.size
    if world.size > 1:
        dist.all_gather_object(stats, mine)
    if world.is_main:
        out = Path(args.out)
        delta.save(out / "delta")
        (out / "ranks.json").write_text(json.dumps({"n": len(requests), "ranks": stats}, indent=2))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_sampling_load(cmd: list[str], env: dict) -> list[float]:
    """Run ``cmd`` to the end, sampling the 1-minute load average every 10 s (the machine may be shared)."""
    process, loads = subprocess.Popen(cmd, env=env), [os.getloadavg()[0]]
    while True:
        try:
            code = process.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            loads.append(os.getloadavg()[0])
    if code:
        raise subprocess.CalledProcessError(code, cmd)
    return loads


def _relative_difference(a, b) -> float:
    return max(float((a.shifts[k] - b.shifts[k]).abs().max() / b.shifts[k].abs().max()) for k in b.shifts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=10000, help="number of facts edited")
    parser.add_argument("--data", default="counterfact:train")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--checkpoint")
    parser.add_argument("--solve-dtype", default="float64", choices=["float32", "float64"],
                        help="precision of the accumulated sums and the solve (untrained editor)")
    parser.add_argument("--runs", default="runs/distributed_edit")
    parser.add_argument("--name", default="distributed_edit", help="results file name under benchmarks/results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from hyperedit.bench import current_command, make_record, write_results
    from hyperedit.delta import EditDelta

    command, records, deltas = current_command(), [], {}
    for ranks in [int(r) for r in args.ranks.split(",")]:
        out = Path(args.runs) / f"ranks{ranks}"
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               __file__, "--worker", "--facts", str(args.facts), "--data", args.data, "--model", args.model,
               "--out", str(out), "--solve-dtype", args.solve_dtype]
        cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        log.info("%d rank(s): %s", ranks, " ".join(cmd))
        loads = _run_sampling_load(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "HYPEREDIT_PROGRESS": "0"})
        info = json.loads((out / "ranks.json").read_text())
        deltas[ranks] = EditDelta.load(out / "delta")
        per_rank = sorted(info["ranks"], key=lambda r: r["rank"])
        records.append(make_record(
            editor="malmen" + ("" if args.checkpoint else " (untrained, cost only)"), model=args.model,
            dataset=args.data.split(":")[0], split=args.data.split(":")[-1], mode="batch", n_edits=info["n"],
            metrics={}, edit_time_s=max(r["edit_time_s"] for r in per_rank),
            peak_rss_mb=max(r["peak_rss_mb"] for r in per_rank), command=command, seed=0, ranks=ranks,
            threads_per_rank=1, solve_dtype=args.solve_dtype,
            load_avg_1min_mean_max=[round(sum(loads) / len(loads), 2), round(max(loads), 2)],
            per_rank=[{k: round(v, 2) for k, v in r.items()} for r in per_rank]))
    base = deltas[min(deltas)]
    for record in records:
        record["max_rel_diff_vs_fewest_ranks"] = _relative_difference(deltas[record["ranks"]], base)
    rows = "\n".join(f"| {r['ranks']} | {r['edit_time_s']:.1f} | "
                     f"{', '.join(str(p['peak_rss_mb']) for p in r['per_rank'])} | "
                     f"{', '.join(str(p.get('cpu_s', '-')) for p in r['per_rank'])} | "
                     f"{r['load_avg_1min_mean_max'][0]} / {r['load_avg_1min_mean_max'][1]} | "
                     f"{r['max_rel_diff_vs_fewest_ranks']:.2e} |" for r in records)
    notes = ("One MALMEN edit of all facts; each rank runs one CPU thread. `edit_time_s` and `peak_rss_mb` "
             "are the largest over the ranks; the difference is the largest shift difference against the "
             "delta of the fewest ranks, relative to that module's largest shift. The machine is shared: the "
             "1-minute load average, sampled every 10 s during each run, says how busy it was (2 cores; "
             "the run itself accounts for up to its number of ranks).\n\n"
             "| ranks | edit time (s) | peak RSS per rank (MB) | CPU s per rank | load avg (1 min) mean / max "
             "| max relative difference |\n|---|---|---|---|---|---|\n"
             + rows)
    paths = write_results(records, args.name, RESULTS_DIR, title="Distributed MALMEN edit: 1 vs N ranks", notes=notes)
    log.info("wrote %s", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
