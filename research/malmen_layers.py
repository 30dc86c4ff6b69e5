"""Which layers should MALMEN edit in SmolLM2? An untrained (calibrated) editor per layer range.

For each range, a fresh MALMEN editor gets its normaliser and edit ``lr`` from the same
calibration a training run starts with (first batch of ``--calib`` training facts), then edits
``--n`` other training facts at once; ES/GS/LS of that edit and its cost are recorded. Training
data only (CounterFact and zsRE *train*): the evaluation splits stay untouched.

    python research/malmen_layers.py --ranges 12-17,18-23,24-29

Writes benchmarks/results/<out>.json and .md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("malmen_layers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train", default="zsre,counterfact")
    parser.add_argument("--ranges", default="12-17,18-23,24-29")
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--calib", type=int, default=32, help="facts of the calibration batch")
    parser.add_argument("--lambda-init", choices=("zero", "trace"), default="zero",
                        help="initial ridge of the untrained editor, as in training")
    parser.add_argument("--n", type=int, default=64, help="facts edited at once in the measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="malmen_layers")
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.rewrite:
        _write(json.loads((RESULTS / f"{args.out}.json").read_text()), args.out)
        return

    import torch

    from hyperedit.bench import current_command, make_record, peak_rss_during
    from hyperedit.commands._training_setup import parse_layers
    from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
    from hyperedit.eval import evaluate, locality_reference
    from hyperedit.models import load_model
    from hyperedit.training import MetaTrainConfig, MetaTrainer, load_pool, split_validation

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    pool, _ = load_pool(args.train)
    train, held_out = split_validation(pool, args.n, seed=123)
    requests = [dataclasses.replace(r, old_target=None) for r in held_out]
    reference = locality_reference(lm.adapter, requests)
    records, command = [], current_command()
    for text in args.ranges.split(","):
        layers = parse_layers(text)
        editor = MalmenEditor.create(MalmenConfig(layers=layers, rank=args.rank), lm, seed=0)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = MetaTrainer(editor, lm, train, [], MetaTrainConfig(n_edits=args.calib, seed=0, lambda_init=args.lambda_init), run_dir)
            lr = trainer.calibrate()
        cpu = time.process_time()
        delta, seconds, peak = peak_rss_during(editor.edit, lm, requests)
        cpu = time.process_time() - cpu
        with delta.applied(lm.model):
            metrics, _ = evaluate(lm.adapter, requests, reference)
        records.append(make_record(editor="malmen-untrained", model=lm.name, dataset="zsre+counterfact",
                                   split="train-heldout", mode="batch", n_edits=len(requests), metrics=metrics,
                                   edit_time_s=seconds, peak_rss_mb=peak, command=command, seed=0, layers=layers,
                                   calibrated_lr=lr, lambda_init=args.lambda_init, edit_cpu_s=round(cpu, 3),
                                   delta_norm=sum(delta.norms().values())))
        log.info("layers %s: ES %.3f GS %.3f LS %.3f (lr %.2g, edit cpu %.1fs)", text, metrics["ES"], metrics["GS"],
                 metrics["LS"], lr, cpu)
    _write(records, args.out)


def _write(records: list[dict], name: str) -> None:
    from hyperedit.bench import write_results

    lines = ["| layers | calibrated lr | ES | GS | LS | edit CPU s |", "|---|---|---|---|---|---|"]
    for r in records:
        m, layers = r["metrics"], r["layers"]
        lines.append(f"| {layers[0]}-{layers[-1]} | {r['calibrated_lr']:.2g} | {m['ES']:.3f} | {m['GS']:.3f} | "
                     f"{m['LS']:.3f} | {r['edit_cpu_s']:.1f} |")
    notes = ("Untrained hypernetwork (identity blocks) with the normaliser and edit lr of the calibration every "
             f"training run starts with; the same {records[0]['n_edits']} held-out training facts edited at once for "
             "every range (one run each; with 64 facts, differences below ~0.1 are within noise).\n\n"
             + "\n".join(lines))
    write_results(records, name, RESULTS, title="MALMEN layer ranges (untrained, calibrated editor)", notes=notes)


if __name__ == "__main__":
    main()
