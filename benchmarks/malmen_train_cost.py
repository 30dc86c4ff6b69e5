"""Meta-training cost with and without the fact caches, in one process on the same batches.

For each N (facts per step): the training requests of ``--steps`` steps are drawn as the trainer
draws them; the uncached trainer and the cached trainer (``FactCache`` built in memory over
exactly those requests, its build timed separately) each run the same steps from the same
untrained editor. Reported: CPU seconds per fact-step of a step, of the one-off cache build per
fact, and their ratio. A cached step and an uncached step give the same gradients (tested in
tests/unit/test_fact_cache.py), so only the cost differs.

    python benchmarks/malmen_train_cost.py --n 32 256 --steps 2 --threads 1

Writes benchmarks/results/malmen_train_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

RESULTS = Path("benchmarks") / "results"
log = logging.getLogger("malmen_train_cost")


def measure(lm, pool, n: int, steps: int, layers: list[int]) -> dict:
    from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
    from hyperedit.training import MetaTrainConfig, MetaTrainer
    from hyperedit.training.data import batch_for_step

    used = sorted({i for s in range(steps) for i in batch_for_step(list(range(len(pool))), s, n, 0)})
    requests = [pool[i] for i in used]  # the steps draw from these (re-drawn over this smaller list)
    editor = MalmenEditor.create(MalmenConfig(layers=layers, rank=256, lm_batch_size=16), lm, seed=0)
    out = {"n_requests_cached": len(requests)}
    with tempfile.TemporaryDirectory() as tmp:
        for cached in (False, True):
            config = MetaTrainConfig(steps=steps, n_edits=n, val_size=0, calibrate_lr=False, fact_cache=cached,
                                     cache_dir="", meta_lr=2e-5)
            trainer = MetaTrainer(copy.deepcopy(editor), lm, requests, [], config, Path(tmp) / str(cached))
            cpu = time.process_time()
            trainer.prepare_caches()
            build = time.process_time() - cpu
            step_cpu = []
            for step in range(steps):
                record = trainer.train_step(step)
                step_cpu.append(record["cpu_seconds"])
                log.info("N=%d cached=%s step %d: %.1f CPU s (gen %.4f loc %.5f)", n, cached, step,
                         record["cpu_seconds"], record["gen_loss"], record["loc_loss"])
            key = "cached" if cached else "uncached"
            out[f"{key}_cpu_s_per_step"] = round(sum(step_cpu) / steps, 3)
            out[f"{key}_cpu_s_per_fact_step"] = round(sum(step_cpu) / steps / n, 4)
            if cached:
                out["cache_build_cpu_s"] = round(build, 2)
                out["cache_build_cpu_s_per_fact"] = round(build / len(requests), 4)
    out["speedup_per_fact_step"] = round(out["uncached_cpu_s_per_fact_step"] / out["cached_cpu_s_per_fact_step"], 2)
    return out


def main() -> None:
    import torch

    from hyperedit import load_model
    from hyperedit.bench.records import make_record
    from hyperedit.training import load_pool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layers", default="24-29")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="malmen_train_cost")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.layers.split("-"))
    lm = load_model(args.model)
    pool, _ = load_pool("zsre,counterfact", limit=2000)
    records = []
    for n in args.n:
        result = measure(lm, pool, n, args.steps, list(range(lo, hi + 1)))
        records.append(make_record(editor="malmen", model=args.model, dataset="zsre+counterfact", split="train",
                                   mode="batch", n_edits=n, metrics={"ES": None, "GS": None, "LS": None,
                                                                      **result},
                                   edit_time_s=result["cached_cpu_s_per_step"], peak_rss_mb=None,
                                   kind="meta_training_cost", threads=args.threads, steps=args.steps,
                                   layers=args.layers))
        write(records, args.out)


def write(records: list[dict], name: str) -> None:
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(records, indent=2) + "\n")
    lines = ["# MALMEN meta-training cost with and without the fact caches", "",
             f"Command: `{records[0]['command']}` (SmolLM2-135M, layers {records[0]['layers']}, "
             f"{records[0]['threads']} thread, same batches for both). CPU seconds (process time).", "",
             "| facts per step | uncached CPU s / step | cached CPU s / step | uncached CPU s / fact-step | "
             "cached CPU s / fact-step | speed-up | cache build CPU s / fact |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        m = r["metrics"]
        lines.append(f"| {r['n_edits']} | {m['uncached_cpu_s_per_step']} | {m['cached_cpu_s_per_step']} | "
                     f"{m['uncached_cpu_s_per_fact_step']} | {m['cached_cpu_s_per_fact_step']} | "
                     f"{m['speedup_per_fact_step']}x | {m['cache_build_cpu_s_per_fact']} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
