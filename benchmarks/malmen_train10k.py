"""MALMEN retrained on ten times the zsRE facts (zsre:train-10k + counterfact:train) against the shipped one.

    python benchmarks/malmen_train10k.py train [--device cuda]   # resumable: rerun to continue
    python benchmarks/malmen_train10k.py eval  [--device cuda]   # shipped vs the run, then the table

``train`` runs the shipped editor's training command (``pretrained/malmen-smollm2-135m/training.json``:
layers 24-29, rank 256, 256 facts per step, 60 steps, same learning rates, seed 0) on the larger pool:
``--train zsre-10k,counterfact --limit-train 10000`` (18,976 training, 1,024 validation facts). The
shipped run drew 60 x 256 = 15,360 facts from 1,976 (about 8 epochs); here the same steps see each
fact at most once, so the comparison is at equal steps, not equal epochs. Facts are not cached
(``--no-fact-cache``): with under one epoch a cache of every fact costs more than it saves.

``eval`` edits the same facts with the shipped editor and with the run's best checkpoint (the same
``hyperedit eval`` code): zsre:knowedit-test and counterfact:val at 1,024 facts, plain and through the
joint solve (``joint=true, shift_scale=0.6``), and at 100 facts. Each evaluation is written under the
run directory and skipped when already there, so an interrupted ``eval`` continues. The records are
merged into ``benchmarks/results/malmen_train10k.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("malmen_train10k")

TRAIN_ARGS = ["--editor", "malmen", "--model", "smollm2-135m", "--train", "zsre-10k,counterfact",
              "--limit-train", "10000", "--layers", "24-29", "--rank", "256", "--steps", "60", "--n-edits", "256",
              "--meta-lr", "1e-4", "--lr-meta-lr", "1e-5", "--lambda-meta-lr", "2e-2", "--lambda-init", "trace",
              "--val-size", "1024", "--val-every", "10", "--ckpt-every", "5", "--threads", "1", "--no-fact-cache"]
EVALS = [  # (dataset, facts, variant)
    ("zsre:knowedit-test", 1024, "plain"), ("counterfact:val", 1024, "plain"),
    ("zsre:knowedit-test", 1024, "joint s0.6"), ("counterfact:val", 1024, "joint s0.6"),
    ("zsre:knowedit-test", 100, "plain"), ("counterfact:val", 100, "plain"),
]
VARIANT_SETS = {"plain": [], "joint s0.6": ["--set", "joint=true", "--set", "shift_scale=0.6"]}
EDITORS = {"shipped": "malmen (shipped: zsre 1k + cf 2k)", "run": "malmen (zsre-10k + cf 10k)"}


def hyperedit(args: list[str]) -> None:
    """Run the CLI in a child process (its own logging, one thread), failing loudly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.info("hyperedit %s", " ".join(args))
    subprocess.run([sys.executable, "-m", "hyperedit", *args], check=True, env=env)


def train(run: Path, device: str) -> None:
    resume = ["--resume"] if (run / "LATEST").is_file() else []
    hyperedit(["train", *TRAIN_ARGS, "--out", str(run), "--device", device, *resume])


def evaluate(run: Path, device: str) -> list[dict]:
    """Every (editor, evaluation) pair, each written once under ``run/compare``."""
    folder = run / "compare"
    records = []
    for who, checkpoint in (("shipped", []), ("run", ["--checkpoint", str(run / "best")])):
        for data, n, variant in EVALS:
            out = folder / f"{who}_{data.split(':')[0]}_{n}_{variant.replace(' ', '_')}"
            if not out.with_suffix(".json").is_file():
                hyperedit(["eval", "--editor", "malmen", *checkpoint, "--data", data, "--n-edits", str(n),
                           *VARIANT_SETS[variant], "--threads", "1", "--device", device, "--out", str(out), "-q"])
            for record in json.loads(out.with_suffix(".json").read_text()):
                records.append({**record, "editor": EDITORS[who], "variant": variant})
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "eval"])
    parser.add_argument("--run", default="runs/malmen-10k", help="training run directory")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = Path(args.run)
    if args.phase == "train":
        train(run, args.device)
        return 0
    if not (run / "best").is_dir():
        log.error("%s: no validated editor yet (best/); run `python benchmarks/malmen_train10k.py train` first", run)
        return 2
    from hyperedit.bench.records import write_results

    records = evaluate(run, args.device)
    notes = ("Same evaluation code and facts for both editors; the retrained editor is the best validation "
             f"checkpoint (RUN/best) of `hyperedit train {' '.join(TRAIN_ARGS)} --out {args.run}`. "
             "Targets of issue 41: zsRE at 1,024 facts ES >= .80, LS >= .65.")
    write_results(records, "malmen_train10k", RESULTS, title="MALMEN trained on zsre:train-10k vs the shipped MALMEN",
                  notes=notes, columns=["variant"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
