"""What the unedited model knows: accuracy on the facts that the benchmarks later rewrite.

    PYTHONPATH=src python benchmarks/pre_edit_accuracy.py --models smollm2-135m,gemma3-270m \
        --data counterfact:val,zsre:knowedit-test --n 200 --name pre_edit_accuracy

Per (model, split), over the first ``--n`` requests that carry their true answer (``old_target``):
``true_token_acc`` (teacher-forced token accuracy of the true answer after the prompt),
``true_exact`` (every token of the true answer is the model's argmax), ``true_prob`` (mean
geometric-mean token probability), and the same for the new target (``new_*``; the pre-edit ES)
and the share of requests where the true answer is more likely than the new one. The edit
numbers (ES/GS/LS) of the other result files are read against these.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from hyperedit.bench import current_command, write_results
from hyperedit.bench.records import make_record
from hyperedit.commands._common import dataset_label
from hyperedit.data import load_requests
from hyperedit.eval.metrics import mean, score_pairs
from hyperedit.models import load_model


def measure(lm, requests, batch_size: int) -> dict:
    known = [r for r in requests if r.old_target is not None]
    true = score_pairs(lm.adapter, [r.prompt for r in known], [r.old_target for r in known], batch_size, "true")
    new = score_pairs(lm.adapter, [r.prompt for r in known], [r.target for r in known], batch_size, "new")
    return {
        "ES": mean(s.accuracy for s in new),
        "true_token_acc": mean(s.accuracy for s in true),
        "true_exact": mean(float(s.accuracy == 1.0) for s in true),
        "true_prob": mean(s.prob for s in true),
        "new_exact": mean(float(s.accuracy == 1.0) for s in new),
        "new_prob": mean(s.prob for s in new),
        "true_beats_new": mean(float(t.mean_nll < n.mean_nll) for t, n in zip(true, new)),
        "n_scored": len(known),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m")
    ap.add_argument("--data", default="counterfact:val,zsre:knowedit-test")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="pre_edit_accuracy")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    command = "PYTHONPATH=src " + current_command()
    records = []
    for model in args.models.split(","):
        lm = load_model(model)
        for spec in args.data.split(","):
            dataset, split = dataset_label(spec)
            requests = load_requests(spec, limit=args.n)
            start = time.perf_counter()
            metrics = measure(lm, requests, args.batch_size)
            records.append(make_record(editor="none (unedited)", model=lm.name, dataset=dataset, split=split,
                                       mode="batch", n_edits=0, metrics=metrics,
                                       edit_time_s=time.perf_counter() - start, peak_rss_mb=None,
                                       command=command, n_requests=len(requests)))
            logging.info("%s %s: %s", model, spec, metrics)
            write_results(records, args.name, title="Pre-edit accuracy of the unedited models",
                          notes=f"First {args.n} requests of each split; scores over those with a true answer "
                                "(n_scored). ES here is the unedited model's accuracy on the new target. "
                                "edit_time_s is the scoring time.")
        del lm


if __name__ == "__main__":
    main()
