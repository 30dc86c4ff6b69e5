"""CPU cost of evaluating N requests on the unedited model (locality reference, then ``evaluate``).

    PYTHONPATH=src python benchmarks/eval_cost.py --data counterfact:val --n 100 --label after --name eval_cost

Run it once per code version with the same arguments (``--label`` names the version, e.g. a
commit checked out elsewhere via PYTHONPATH) and ``--append`` to collect the records in one file.
``--separate-passes`` measures the generated metrics by their own passes (generation and locality
forwards apart from the scoring pass, as before ``eval.continuation``); ``--same-metrics-as LABEL``
records whether the metrics equal those of the record labelled LABEL in the file (exit 1 if not).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="counterfact:val")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--label", required=True, help="name of the code version measured")
    ap.add_argument("--append", action="store_true", help="add to the records already in the results file")
    ap.add_argument("--name", default="eval_cost")
    ap.add_argument("--results-dir", help="folder of the results file (default: benchmarks/results)")
    ap.add_argument("--generated", action="store_true",
                    help="also the generated-answer metrics (ES_gen ...; code versions that have them)")
    ap.add_argument("--separate-passes", action="store_true",
                    help="generated metrics from separate passes, not from the scoring pass's cache")
    ap.add_argument("--same-metrics-as", metavar="LABEL", help="check the metrics equal this record's")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    import torch

    torch.set_num_threads(1)
    from hyperedit.bench import current_command, make_record, peak_rss_during, write_results
    from hyperedit.commands._common import dataset_label
    from hyperedit.data import load_requests
    from hyperedit.eval import evaluate, locality_reference
    from hyperedit.models import load_model

    if args.separate_passes:
        from hyperedit.eval import continuation

        continuation.CONTINUATION_FAMILIES = ()  # every family takes the separate passes
    lm = load_model(args.model)
    requests = load_requests(args.data, limit=args.n)
    start = time.process_time()
    extra = {"generated": True} if args.generated else {}
    reference = locality_reference(lm.adapter, requests, 32, **extra)
    reference_cpu = time.process_time() - start
    start = time.process_time()
    (metrics, _), seconds, peak = peak_rss_during(evaluate, lm.adapter, requests, reference, 32, **extra)
    evaluate_cpu = time.process_time() - start
    dataset, split = dataset_label(args.data)
    record = make_record(editor="none (unedited)", model=lm.name, dataset=dataset, split=split, mode="batch",
                         n_edits=len(requests), metrics=metrics, edit_time_s=0.0, peak_rss_mb=peak,
                         command="PYTHONPATH=src " + current_command(), seed=0, label=args.label,
                         evaluate_cpu_s=round(evaluate_cpu, 2), evaluate_wall_s=round(seconds, 2),
                         reference_cpu_s=round(reference_cpu, 2), threads=1, generated=args.generated,
                         separate_passes=args.separate_passes)
    results_dir = Path(args.results_dir or RESULTS_DIR)
    path = results_dir / f"{args.name}.json"
    records = json.loads(path.read_text()) if args.append and path.is_file() else []
    same = True
    if args.same_metrics_as:
        other = [r for r in records if r.get("label") == args.same_metrics_as]
        if not other:
            raise SystemExit(f"{path}: no record labelled {args.same_metrics_as!r} to compare with")
        same = other[-1]["metrics"] == metrics
        record.update(same_metrics_as=args.same_metrics_as, metrics_equal=same)
    write_results(records + [record], args.name, results_dir, title="evaluation cost on the unedited model",
                  notes="CPU seconds of one thread; `label` names the code version measured.")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
