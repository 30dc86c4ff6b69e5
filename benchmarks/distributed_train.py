"""MALMEN meta-training steps on 1 rank and on N ranks (torchrun, gloo, one thread per rank).

Each configuration runs ``--steps`` training steps of ``--facts`` facts from the same editor on the
same batches, reading the fact cache in ``--cache-dir`` (built once, e.g. by an earlier
``hyperedit train`` on the same data; without a matching one it is built first). Measured per
configuration: wall time of each step, CPU seconds of each step summed over the ranks (and per
fact-step), peak RSS per rank, and how far the trained weights, losses and lambda are from the
fewest-ranks run. No calibration and no validation: only the steps are timed.

    python benchmarks/distributed_train.py --facts 256 --steps 3 --ranks 1,2 --cache-dir runs/malmen-cache

Writes benchmarks/results/distributed_train.{json,md}; the runs go under runs/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from distributed_edit import _run_sampling_load  # noqa: E402  (same measurement helper)

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("distributed_train")
META_LR = 1e-4


def worker(args) -> None:
    """One rank: the training steps; rank 0 gathers each rank's peak RSS into ranks.json."""
    import torch
    import torch.distributed as dist

    from hyperedit import load_model
    from hyperedit.bench import peak_rss_during
    from hyperedit.distributed import init_from_environment
    from hyperedit.editors import get_editor
    from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
    from hyperedit.training import MetaTrainConfig, MetaTrainer, load_pool, split_validation

    torch.set_num_threads(1)
    world = init_from_environment("cpu")
    lm = load_model(args.model)
    pool, _ = load_pool(args.train, limit=args.limit_train)
    train, _ = split_validation(pool, args.val_size, args.seed)
    if args.checkpoint:
        editor = get_editor("malmen", checkpoint=args.checkpoint, lm=lm, solve_dtype=args.solve_dtype)
    else:
        editor = MalmenEditor.create(MalmenConfig(solve_dtype=args.solve_dtype), lm, seed=args.seed)
    config = MetaTrainConfig(steps=args.steps, n_edits=args.facts, val_size=0, val_every=0, ckpt_every=args.steps,
                             calibrate_lr=False, cache_dir=args.cache_dir, seed=args.seed, meta_lr=META_LR)
    trainer = MetaTrainer(editor, lm, train, [], config, Path(args.out))
    _, seconds, peak = peak_rss_during(trainer.run)
    mine = {"rank": world.rank, "run_s": seconds, "peak_rss_mb": peak}
    stats = [mine] * world.size
    if world.size > 1:
        dist.all_gather_object(stats, mine)
    if world.is_main:
        (Path(args.out) / "ranks.json").write_text(json.dumps({"n_train": len(train), "ranks": stats}, indent=2))


def _weights(run: Path):
    from safetensors.torch import load_file

    latest = (run / "LATEST").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "editor.safetensors"))


def _weight_differences(a: dict, b: dict, step_size: float) -> dict:
    """How far weights ``a`` are from ``b``: the largest difference in units of Adam's step size,
    and the share of elements differing by more than a thousandth of it."""
    keys = [k for k in b if b[k].is_floating_point() and not k.endswith((".count", ".mean", ".m2"))]
    diffs = [(a[k] - b[k]).abs() for k in keys]
    return {"max_weight_diff_in_steps": float(max(d.max() for d in diffs)) / step_size,
            "share_weights_diff_over_1e-3_step": sum(int((d > 1e-3 * step_size).sum()) for d in diffs)
            / sum(d.numel() for d in diffs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=256, help="facts per training step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train", default="zsre,counterfact")
    parser.add_argument("--limit-train", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=1024, help="held out as `hyperedit train` does (not used)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="start from this MALMEN checkpoint (default: untrained)")
    parser.add_argument("--solve-dtype", default="float64", choices=["float32", "float64"],
                        help="precision of MALMEN's sums and solve (float32 rounding, amplified by the solve's "
                             "conditioning, hides the equality of the ranks' results)")
    parser.add_argument("--cache-dir", required=True, help="folder of train-cache.safetensors")
    parser.add_argument("--runs", default="runs/distributed_train")
    parser.add_argument("--name", default="distributed_train")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from hyperedit.bench import current_command, make_record, write_results
    from hyperedit.outputs import start_run_directory
    from hyperedit.training import MetricsLog

    command, records, weights, steps_of = current_command(), [], {}, {}
    passed = ["--facts", str(args.facts), "--steps", str(args.steps), "--model", args.model, "--train", args.train,
              "--limit-train", str(args.limit_train), "--val-size", str(args.val_size), "--seed", str(args.seed),
              "--cache-dir", args.cache_dir, "--solve-dtype", args.solve_dtype]
    passed += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    for ranks in [int(r) for r in args.ranks.split(",")]:
        out = Path(args.runs) / f"ranks{ranks}"
        start_run_directory(out, "training-run", overwrite=True)  # an earlier run of this benchmark
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               __file__, "--worker", "--out", str(out), *passed]
        log.info("%d rank(s): %s", ranks, " ".join(cmd))
        loads = _run_sampling_load(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "HYPEREDIT_PROGRESS": "0"})
        info = json.loads((out / "ranks.json").read_text())
        steps = [r for r in MetricsLog(out / "metrics.jsonl").read() if r.get("split") == "train"]
        steps_of[ranks], weights[ranks] = steps, _weights(out)
        cpu = [r.get("cpu_seconds_all_ranks", r["cpu_seconds"]) for r in steps]
        timed = steps[1:] or steps  # the first step also warms up
        cpu_timed = cpu[1:] or cpu
        per_rank = sorted(info["ranks"], key=lambda r: r["rank"])
        records.append(make_record(
            editor="malmen (meta-training step)", model=args.model, dataset=args.train.replace(",", "+"),
            split="train", mode="batch", n_edits=args.facts, metrics={},
            edit_time_s=sum(r["seconds"] for r in timed) / len(timed),
            peak_rss_mb=max(r["peak_rss_mb"] for r in per_rank), command=command, seed=args.seed, ranks=ranks,
            threads_per_rank=1, solve_dtype=args.solve_dtype, step_seconds=[r["seconds"] for r in steps],
            step_cpu_s_all_ranks=cpu,
            cpu_s_per_step=round(sum(cpu_timed) / len(cpu_timed), 3),
            cpu_s_per_fact_step=round(sum(cpu_timed) / len(cpu_timed) / args.facts, 4),
            losses=[{k: r[k] for k in ("gen_loss", "loc_loss", "lambda", "lr", "grad_norm")} for r in steps],
            load_avg_1min_mean_max=[round(sum(loads) / len(loads), 2), round(max(loads), 2)],
            per_rank=[{k: round(v, 2) for k, v in r.items()} for r in per_rank]))
    base = min(weights)
    for record in records:
        ranks = record["ranks"]
        record.update(_weight_differences(weights[ranks], weights[base], META_LR))
        record["max_rel_loss_diff_vs_fewest_ranks"] = max(
            abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for a, b in zip(steps_of[ranks], steps_of[base])
            for k in ("gen_loss", "loc_loss", "lambda"))
    rows = "\n".join(
        f"| {r['ranks']} | {r['edit_time_s']:.1f} | {r['cpu_s_per_step']:.1f} | {r['cpu_s_per_fact_step']:.4f} | "
        f"{', '.join(str(p['peak_rss_mb']) for p in r['per_rank'])} | "
        f"{r['load_avg_1min_mean_max'][0]} / {r['load_avg_1min_mean_max'][1]} | "
        f"{r['max_weight_diff_in_steps']:.1e} | {r['share_weights_diff_over_1e-3_step']:.1e} | "
        f"{r['max_rel_loss_diff_vs_fewest_ranks']:.1e} |"
        for r in records)
    notes = (f"MALMEN meta-training, {args.facts} facts per step, {args.steps} steps per configuration from the "
             "same editor on the same batches, fact caches read from disk, one CPU thread per rank, "
             f"MALMEN sums and solve in {args.solve_dtype}. Step time is "
             "the mean wall time of the steps after the first (`edit_time_s` in the records); CPU s per step is "
             "summed over the ranks (the whole machine's work); peak RSS per rank covers the whole run "
             "(including the cache in memory). The differences compare the trained weights (largest "
             "element difference, in units of Adam's step size meta_lr = 1e-4, and the share of elements "
             "differing by more than a thousandth of it) and the losses and lambda of every step with the "
             "fewest-ranks run. Adam divides each gradient element by its own running RMS, so elements whose "
             "gradient is essentially zero (e.g. of zero-initialised matrices) are moved by rounding noise: "
             "those few differ visibly, the rest agree to float32 rounding. The machine is shared by other jobs: "
             "the 1-minute load "
             "average sampled every 10 s during each run says how busy its 2 cores were.\n\n"
             "| ranks | step time (s) | CPU s per step (all ranks) | CPU s per fact-step | peak RSS per rank (MB) "
             "| load avg mean / max | max weight diff (steps) | share of weights differing | "
             "max rel. loss/lambda diff |\n|---|---|---|---|---|---|---|---|---|\n" + rows)
    paths = write_results(records, args.name, RESULTS_DIR, title="Distributed MALMEN meta-training: 1 vs N ranks", notes=notes)
    log.info("wrote %s", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
