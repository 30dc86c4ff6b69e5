"""``hyperedit edit``: requests file -> saved delta (and optionally an edited model directory)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import HyperEditError
from ..outputs import Output, check_paths, write_directory
from ._common import (add_data_dir_arg, add_editor_args, add_model_args, add_nproc_arg, add_overwrite_arg,
                      add_placement_args, editor_from_args, emit_json, input_paths, join_ranks, load_model_from_args,
                      relaunch_ranks, seed_everything)

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("edit", help="compute an edit from a requests file and save it",
                       description="Reads edit requests (a JSONL file in the user format of docs/data.md, any "
                                   "supported dataset file, or NAME:SPLIT such as counterfact:val), computes the "
                                   "edit with the chosen editor and saves it as a delta directory "
                                   "(shifts.safetensors + delta.json). With --save-model, also writes the edited "
                                   "model as a Hugging Face model directory.")
    add_model_args(p)
    add_editor_args(p)
    add_data_dir_arg(p)
    p.add_argument("--requests", required=True, help="requests file or NAME:SPLIT")
    p.add_argument("--limit", type=int, help="use only the first N requests")
    p.add_argument("--offset", type=int, default=0, help="skip the first N requests")
    p.add_argument("--out", required=True, help="directory to write the delta to")
    p.add_argument("--save-model", help="also write the edited model to this directory")
    add_overwrite_arg(p, "an earlier delta (--out) or model directory (--save-model)")
    add_nproc_arg(p)
    add_placement_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    p.set_defaults(func=run)


def _save_model(lm, delta, path: Path) -> None:
    """Write the edited model + tokenizer atomically (temp directory, then rename)."""
    with write_directory(path, "model") as tmp, delta.applied(lm.model):
        lm.model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)

def run(args) -> int:
    import time

    from ..data import load_requests

    check_paths([Output("--out", args.out, "delta"), Output("--save-model", args.save_model, "model")],
                input_paths(args), overwrite=args.overwrite)
    seed_everything(args.seed)
    requests = load_requests(args.requests, data_dir=args.data_dir, limit=args.limit, offset=args.offset)
    if not requests:
        raise HyperEditError(f"{args.requests}: no requests to edit")
    if args.nproc > 1:  # inputs are checked here, once, before any rank starts
        if len(requests) < args.nproc:
            raise HyperEditError(f"--nproc {args.nproc}: only {len(requests)} requests to share")
        return relaunch_ranks(args)
    world = join_ranks(args)
    lm = load_model_from_args(args)
    editor = editor_from_args(args, lm)
    start = time.perf_counter()
    delta = editor.edit(lm, requests)
    seconds = time.perf_counter() - start
    if not world.is_main:  # every rank computed the same delta; rank 0 writes it
        return 0
    delta.meta["requests"] = {"source": str(args.requests), "count": len(requests)}
    out = delta.save(args.out)
    summary = {"delta": str(out), "editor": editor.name, "model": lm.name, "n_edits": len(requests),
               "edit_time_s": round(seconds, 3), "modules": list(delta.shifts), "ranks": world.size}
    if args.save_model:
        _save_model(lm, delta, Path(args.save_model))
        summary["model_dir"] = args.save_model
    if args.json:
        emit_json(summary)
    else:
        print(f"edited {len(requests)} requests with {editor.name} in {seconds:.1f} s; delta saved to {out}")
        if args.save_model:
            print(f"edited model written to {args.save_model}")
    return 0
