"""Constrained fine-tuning (ft) on 100 CounterFact (val) and 100 zsRE (KnowEdit test) requests.

    python benchmarks/ft_baseline.py [--n 100] [--set KEY=VALUE ...] [--name ft_baseline]

Each dataset is edited as one batch, evaluated (ES/GS/LS, CounterFact scores, fluency) and
reverted. Writes benchmarks/results/<name>.json and .md.
"""
from __future__ import annotations

from pathlib import Path

import argparse
import json
import logging

import torch

from hyperedit import get_editor, load_model
from hyperedit.bench import current_command, write_results
from hyperedit.commands._common import dataset_label
from hyperedit.data import load_requests
from hyperedit.eval import run_batch

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", nargs="+", default=["counterfact:val", "zsre:knowedit-test"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="ft_baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {k: json.loads(v) if v[:1] in "[{0123456789-.tf" else v
                 for k, _, v in (item.partition("=") for item in args.overrides)}
    lm = load_model(args.model)
    editor = get_editor("ft", **overrides)
    records = []
    for spec in args.data:
        dataset, split = dataset_label(spec)
        requests = load_requests(spec, limit=args.n)
        record = run_batch(lm, editor, requests, dataset=dataset, split=split, command=current_command(),
                           fluency=True)
        logging.info("%s: %s", spec, record["metrics"])
        records.append(record)
        write_results(records, args.name, RESULTS_DIR, title=f"ft (constrained fine-tuning) on {lm.name}",
                      notes=f"{args.n} requests per dataset edited in one batch; LS is agreement with the "
                            "unedited model's own predictions, LS_data with the dataset answers.")


if __name__ == "__main__":
    main()
