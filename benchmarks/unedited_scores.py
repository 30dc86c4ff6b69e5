"""What not editing scores: ES / GS of the unedited model on a split's new targets, LS = 1.

The yardstick for the mean of ES, GS and LS that the lifelong comparisons use: LS is measured
against the unedited model's own predictions, so an editor that writes nothing scores LS 1 and
ES / GS at what the model already gives the new targets. Scored with ``hyperedit.eval.evaluate``
on the first ``--n`` requests (without ``old_target``, as the lifelong runner scores them).

    python benchmarks/unedited_scores.py --data counterfact:val,zsre:knowedit-test --n 1000 --out unedited_scores
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time

log = logging.getLogger("unedited_scores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="counterfact:val,zsre:knowedit-test")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="unedited_scores")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from hyperedit.bench import current_command, make_record, write_results
    from hyperedit.commands._common import dataset_label
    from hyperedit.data import load_requests
    from hyperedit.eval import evaluate
    from hyperedit.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    records = []
    for spec in args.data.split(","):
        dataset, split = dataset_label(spec)
        requests = [dataclasses.replace(r, old_target=None) for r in load_requests(spec, limit=args.n)]
        start = time.perf_counter()
        metrics, _ = evaluate(lm.adapter, requests, None, args.batch_size)
        seconds = time.perf_counter() - start
        metrics = {"ES": metrics["ES"], "GS": metrics["GS"], "LS": 1.0}
        metrics["mean"] = (metrics["ES"] + metrics["GS"] + metrics["LS"]) / 3
        records.append(make_record(editor="none (unedited)", model=lm.name, dataset=dataset, split=split,
                                   mode="batch", n_edits=0, metrics=metrics, edit_time_s=round(seconds, 3),
                                   peak_rss_mb=None, command=current_command(), seed=0, n_scored=len(requests)))
        log.info("%s: ES %.3f GS %.3f (mean with LS 1: %.3f)", spec, metrics["ES"], metrics["GS"], metrics["mean"])
    write_results(records, args.out, title="What not editing scores", notes=(
        "ES / GS: the unedited model's teacher-forced token accuracy on the new targets of the first "
        "`n_scored` requests (prompts / rephrasings); LS is 1 by definition (measured against the model's "
        "own predictions). `mean` = (ES + GS + LS) / 3, the yardstick of the lifelong comparisons. "
        "edit_time_s is the scoring time."))


if __name__ == "__main__":
    main()
