"""``hyperedit eval``: editor x dataset split x number of edits -> results JSON and a table."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..errors import HyperEditError
from ..outputs import check_paths
from ._common import (add_data_dir_arg, add_editor_args, add_model_args, add_nproc_arg, add_overwrite_arg,
                      add_placement_args, dataset_label, editor_from_args, input_paths, join_ranks,
                      load_model_from_args, relaunch_ranks, result_outputs, seed_everything)

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an editor on a dataset split (batch, single or sequential)",
                       description="Edits N requests of a dataset split at once (--mode batch), each alone "
                                   "on the unedited model (--mode single, the protocol of EasyEdit and most "
                                   "papers; metrics are means over requests), or in --batches consecutive "
                                   "batches applied on top of each other (--mode sequential), measures "
                                   "ES/GS/LS (and CounterFact probability scores), then restores the model. "
                                   "Writes OUT.json (a list of result records) and OUT.md (a table).")
    add_model_args(p)
    add_editor_args(p)
    add_data_dir_arg(p)
    p.add_argument("--data", default="counterfact:val", help="NAME:SPLIT (counterfact:sample, zsre:sample, fever:sample are packaged; others: "
                        "`hyperedit data fetch NAME`) or a requests file (default: %(default)s)")
    p.add_argument("--n-edits", type=int, default=100, help="number of requests edited (default: %(default)s)")
    p.add_argument("--offset", type=int, default=0, help="skip the first N requests of the split")
    p.add_argument("--mode", choices=["batch", "single", "sequential"], default="batch",
                   help="batch: all requests in one edit; single: each request edited alone and reverted; "
                        "sequential: --batches edits on top of each other (default: %(default)s)")
    p.add_argument("--batches", type=int, default=10, help="sequential mode: number of batches (default: %(default)s)")
    p.add_argument("--fluency", action="store_true", help="also measure fluency (n-gram entropy of generations)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--out", help="write OUT.json and OUT.md (e.g. results/my_run)")
    add_overwrite_arg(p, "OUT.json and OUT.md of an earlier evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 keeps timings steady on a shared machine)")
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    add_nproc_arg(p)
    add_placement_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import current_command, write_results
    from ..bench.records import records_table
    from ..data import load_requests
    from ..eval import run_batch, run_sequential, run_single

    if args.n_edits < 1:
        raise HyperEditError("--n-edits must be at least 1")
    if args.nproc > 1 and args.mode != "batch":
        raise HyperEditError(f"--nproc: only --mode batch splits one edit over ranks (not --mode {args.mode})")
    check_paths(result_outputs("--out", args.out), input_paths(args), overwrite=args.overwrite)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    requests = load_requests(args.data, data_dir=args.data_dir, limit=args.n_edits, offset=args.offset)
    if len(requests) < args.n_edits:
        log.warning("%s has only %d requests after offset %d", args.data, len(requests), args.offset)
    if args.nproc > 1:
        if len(requests) < args.nproc:
            raise HyperEditError(f"--nproc {args.nproc}: only {len(requests)} requests to share")
        return relaunch_ranks(args)
    world = join_ranks(args)
    lm = load_model_from_args(args)
    editor = editor_from_args(args, lm)
    if world.size > 1 and args.mode != "batch":
        raise HyperEditError(f"several ranks: only --mode batch splits one edit over ranks (not --mode {args.mode})")
    if not world.is_main:  # the other ranks only compute their share of the edit; rank 0 measures
        editor.edit(lm, requests)
        return 0
    dataset, split = dataset_label(args.data)
    common = dict(dataset=dataset, split=split, command=current_command(), seed=args.seed,
                  eval_batch_size=args.eval_batch_size, fluency=args.fluency)
    if args.mode == "batch":
        record = run_batch(lm, editor, requests, **common)
    elif args.mode == "single":
        record = run_single(lm, editor, requests, **common)
    else:
        if args.batches < 1 or len(requests) < args.batches:
            raise HyperEditError("--batches must be between 1 and the number of requests")
        size = len(requests) // args.batches
        batches = [requests[i * size:(i + 1) * size] for i in range(args.batches)]
        record = run_sequential(lm, editor, batches, **common)
    if args.out:
        json_path, md_path = write_results([record], Path(args.out).name, Path(args.out).parent)
        log.info("wrote %s and %s", json_path, md_path)
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        print()
    else:
        print(records_table([record]), end="")
    return 0
