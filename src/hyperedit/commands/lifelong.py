"""``hyperedit lifelong``: a long stream of edits applied on top of each other, checkpointed and resumable."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..errors import HyperEditError
from ..atomic import atomic_write_text
from ..outputs import Output, check_paths, claim, start_run_directory
from ._common import (add_data_dir_arg, add_editor_args, add_model_args, add_overwrite_arg, dataset_label, editor_from_args,
                      input_paths, load_model_from_args, result_outputs, seed_everything)

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("lifelong", help="lifelong editing: a stream of edits never reverted, with curves",
                       description="Edits --num-seq requests of a split in batches of --batch, each applied on top "
                                   "of the earlier ones. Every --curve-every edits: ES/GS/LS of recent and earliest "
                                   "edits and zero-shot general ability. At the end: ES/GS/LS over all edits and the "
                                   "first --num-pre. The stream is checkpointed in --run-dir; --resume continues a "
                                   "killed run. Writes OUT.json, OUT.md and OUT.png.")
    add_model_args(p)
    add_editor_args(p, default=None)
    add_data_dir_arg(p)
    p.add_argument("--data", default="zsre:knowedit-test", help="NAME:SPLIT or a requests file")
    p.add_argument("--offset", type=int, default=0, help="skip the first N requests of the split")
    p.add_argument("--num-seq", type=int, default=100, help="edits in the stream")
    p.add_argument("--batch", type=int, default=1, help="edits per step")
    p.add_argument("--num-pre", type=int, default=100, help="earliest edits evaluated separately at the end")
    p.add_argument("--curve-every", type=int, default=100, help="edits between curve points (k)")
    p.add_argument("--curve-sample", type=int, default=50, help="recent / earliest edits evaluated per curve point")
    p.add_argument("--general-per-task", type=int, default=10, help="rows per general task (0: skip)")
    p.add_argument("--general-tasks", help="comma-separated general tasks (default: all)")
    p.add_argument("--ckpt-every", type=int, help="edits between checkpoints (default: --curve-every)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--run-dir", required=True, help="checkpoint directory of the stream")
    p.add_argument("--resume", action="store_true", help="continue the stream in --run-dir")
    add_overwrite_arg(p, "an earlier stream in --run-dir (deleted first) and earlier OUT.json/.md/.png")
    p.add_argument("--out", help="write OUT.json, OUT.md, OUT.png (e.g. results/lifelong_ft_zsre)")
    p.add_argument("--target-cache", metavar="FILE",
                   help="memit, alphaedit, metake: target vectors cached in FILE (read, then updated at the end)")
    p.add_argument("--pin-targets", action="store_true",
                   help="memit, alphaedit, metake: compute each target on the unedited model (cached, cheaper) "
                        "instead of on the model edited so far")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (keep the same value when resuming)")
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..bench import current_command
    from ..bench.records import pyplot, records_table
    from ..data import load_requests
    from ..eval.lifelong import RESULT_FILE, LifelongConfig, LifelongRunner
    from ..eval.lifelong_report import lifelong_record, write_lifelong

    if args.resume and args.overwrite:
        raise HyperEditError("--resume and --overwrite: choose one")
    if args.out:
        pyplot()  # --out writes OUT.png: without matplotlib say so before the stream runs
    check_paths([Output("--run-dir", args.run_dir, "lifelong-run"),
                 *result_outputs("--out", args.out, (".json", ".md", ".png"))],
                [p for p in input_paths(args) if p[0] != "--target-cache"], overwrite=args.overwrite,
                resume=args.resume)
    if args.target_cache:  # read, then updated in place: it must be a target cache or not exist yet
        claim(args.target_cache, "target-cache", option="--target-cache", overwrite=True)
    if args.overwrite:
        start_run_directory(args.run_dir, "lifelong-run", overwrite=True, option="--run-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    try:
        config = LifelongConfig(num_seq=args.num_seq, batch_size=args.batch, num_pre=args.num_pre,
                                curve_every=args.curve_every, curve_sample=args.curve_sample,
                                general_per_task=args.general_per_task,
                                general_tasks=args.general_tasks.split(",") if args.general_tasks else None,
                                eval_batch_size=args.eval_batch_size, ckpt_every=args.ckpt_every, seed=args.seed)
    except ValueError as exc:
        raise HyperEditError(str(exc)) from None
    requests = load_requests(args.data, data_dir=args.data_dir, limit=args.num_seq, offset=args.offset)
    lm = load_model_from_args(args)
    editor = editor_from_args(args, lm)
    cache = _target_cache(args, editor, lm)
    info = {"data": args.data, "offset": args.offset, "checkpoint": args.checkpoint, "overrides": args.overrides,
            "pinned_targets": args.pin_targets}
    runner = LifelongRunner(lm, editor, requests, config, args.run_dir, info=info, data_dir=args.data_dir)
    summary = runner.run(resume=args.resume)
    if cache is not None and args.target_cache:
        cache.save(args.target_cache)
    dataset, split = dataset_label(args.data)
    editor_config = getattr(editor, "config", None)
    from dataclasses import asdict, is_dataclass

    record = lifelong_record(summary, editor=editor.name, model=lm.name, dataset=dataset, split=split,
                             command=current_command(), seed=args.seed,
                             config=asdict(editor_config) if is_dataclass(editor_config) else {})
    atomic_write_text(Path(args.run_dir) / RESULT_FILE, json.dumps(record, indent=2, default=str))
    if args.out:
        for path in write_lifelong([record], Path(args.out).name, Path(args.out).parent):
            log.info("wrote %s", path)
    if args.json:
        json.dump(record, sys.stdout, indent=2, default=str)
        print()
    else:
        print(records_table([record]), end="")
    return 0


def _target_cache(args, editor, lm):
    """The locate-then-edit editor's target cache as asked (None when neither option is given).

    Must run on the unedited model: a pinned cache is keyed by the weights it starts from."""
    if not (args.target_cache or args.pin_targets):
        return None
    from ..editors.protocols import PinnableTargets

    if not isinstance(editor, PinnableTargets):
        raise HyperEditError(f"--target-cache / --pin-targets: editor {editor.name!r} computes no target vectors")
    from ..editors.locate import TargetCache

    cache = TargetCache.for_model(lm.model, pin=args.pin_targets, path=args.target_cache)
    editor.target_cache = cache
    return cache
