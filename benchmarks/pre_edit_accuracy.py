"""What the unedited model knows, and what not editing scores, on the facts the benchmarks rewrite.

    python benchmarks/pre_edit_accuracy.py --models smollm2-135m,gemma3-270m \
        --data counterfact:val,zsre:knowedit-test --n 200 --name pre_edit_accuracy
    python benchmarks/pre_edit_accuracy.py --data counterfact:val,zsre:knowedit-test --n 1000 --name unedited_scores

Per (model, split), over the first ``--n`` requests:

- ``ES`` / ``GS``: the unedited model's teacher-forced token accuracy on the new targets (prompts /
  rephrasings), scored with ``hyperedit.eval.evaluate`` without the true answer, as the edit and
  lifelong runners score them; ``LS`` is 1 by definition (measured against the model's own
  predictions), and ``mean`` = (ES + GS + LS) / 3 is what an editor that writes nothing scores: the
  yardstick of the lifelong comparisons (``n_requests`` of them).
- Over the requests that carry their true answer (``old_target``; ``n_scored`` of them):
  ``true_token_acc`` (token accuracy of the true answer after the prompt), ``true_exact`` (every
  token of it is the argmax), ``true_prob`` (mean geometric-mean token probability), the same for
  the new target (``new_exact``, ``new_prob``) and ``true_beats_new``, the share where the true
  answer is the likelier one.
"""
from __future__ import annotations

from pathlib import Path

import argparse
import dataclasses
import logging
import time

import torch

from hyperedit.bench import current_command, make_record, write_results
from hyperedit.commands._common import dataset_label
from hyperedit.data import load_requests
from hyperedit.eval import evaluate
from hyperedit.eval.metrics import mean, score_pairs
from hyperedit.models import load_model

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def not_editing_scores(lm, requests, batch_size: int) -> dict:
    """ES / GS of the unedited model on the new targets, LS 1, and their mean."""
    plain = [dataclasses.replace(r, old_target=None) for r in requests]
    metrics, _ = evaluate(lm.adapter, plain, None, batch_size)
    scores = {"ES": metrics["ES"], "GS": metrics["GS"], "LS": 1.0}
    scores["mean"] = (scores["ES"] + scores["GS"] + scores["LS"]) / 3
    return scores


def true_answer_scores(lm, requests, batch_size: int) -> dict:
    """How the true answer and the new target compare before any edit (requests with a true answer)."""
    known = [r for r in requests if r.old_target is not None]
    true = score_pairs(lm.adapter, [r.prompt for r in known], [r.old_target for r in known], batch_size, "true")
    new = score_pairs(lm.adapter, [r.prompt for r in known], [r.target for r in known], batch_size, "new")
    return {
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
    records = []
    for model in args.models.split(","):
        lm = load_model(model)
        for spec in args.data.split(","):
            dataset, split = dataset_label(spec)
            requests = load_requests(spec, limit=args.n)
            start = time.perf_counter()
            metrics = {**not_editing_scores(lm, requests, args.batch_size),
                       **true_answer_scores(lm, requests, args.batch_size)}
            records.append(make_record(editor="none (unedited)", model=lm.name, dataset=dataset, split=split,
                                       mode="batch", n_edits=0, metrics=metrics,
                                       edit_time_s=time.perf_counter() - start, peak_rss_mb=None,
                                       command=current_command(), n_requests=len(requests)))
            logging.info("%s %s: %s", model, spec, metrics)
            write_results(records, args.name, RESULTS_DIR, title="The unedited models on the facts to be rewritten",
                          notes=f"First {args.n} requests of each split (n_requests). ES / GS: the unedited "
                                "model's token accuracy on the new targets; LS is 1 by definition; mean = "
                                "(ES + GS + LS) / 3, what not editing scores. true_* / new_* / true_beats_new "
                                "over the requests with a true answer (n_scored). edit_time_s is the scoring time.")
        del lm


if __name__ == "__main__":
    main()
