"""``hyperedit ledger``: apply, list, show, revert and export the edits of a ledger workspace."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import HyperEditError
from ..outputs import Output, check_paths
from ._common import (add_data_dir_arg, add_editor_args, add_model_args, emit_json, parse_overrides, seed_everything,
                      verbosity_options)

WORKSPACE_ENV = "HYPEREDIT_LEDGER"


def register(sub) -> None:
    p = sub.add_parser("ledger", help="a managed, revertible history of edits to one base model",
                       description="A ledger workspace records every edit made to one base model (requests, "
                                   "editor, options, checkpoint hash, metrics, time, status) with its delta. "
                                   "The weights are the base model plus the active entries, summed in a fixed "
                                   "order and precision, so `revert` is exact. See docs/ledger.md.")
    actions = p.add_subparsers(dest="ledger_command", metavar="ACTION")

    def action(name, help_text, needs_model=False):
        q = actions.add_parser(name, help=help_text, description=help_text, parents=[verbosity_options()])
        add_workspace_arg(q)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if needs_model:
            add_model_args(q)
            q.set_defaults(model=None)
        q.set_defaults(func=run)
        return q

    q = action("apply", "compute an edit with an editor (or import a saved delta) and record it", needs_model=True)
    add_editor_args(q)
    add_data_dir_arg(q)
    q.add_argument("--requests", help="requests file or NAME:SPLIT (required unless --delta)")
    q.add_argument("--limit", type=int, help="use only the first N requests")
    q.add_argument("--offset", type=int, default=0, help="skip the first N requests")
    q.add_argument("--delta", help="import this saved delta directory instead of computing one")
    q.add_argument("--no-metrics", action="store_true", help="skip measuring ES/GS/LS at apply time")
    q.add_argument("--seed", type=int, default=0)
    q = action("list", "list the entries")
    q.add_argument("--status", choices=["active", "reverted"], help="only entries with this status")
    q = action("show", "show one entry in full, with its events")
    q.add_argument("id", type=int)
    q = action("revert", "revert an entry (exact: the weights become those without it)", needs_model=True)
    q.add_argument("id", type=int)
    q.add_argument("--recompute", action="store_true",
                   help="recompute every later entry on the history without this one (needed for an exact "
                        "'never applied' history with sequential editors such as AlphaEdit; loads the model)")
    q.add_argument("--seed", type=int, default=0)
    q = action("export", "write the edited model (base + active entries) as a Hugging Face model directory",
               needs_model=True)
    q.add_argument("out", help="new or empty directory (or, with --overwrite, a model directory hyperedit wrote)")
    q.add_argument("--overwrite", action="store_true", help="replace a model directory made by hyperedit")
    action("verify", "check the database and that every referenced delta file is intact")
    p.set_defaults(func=lambda args: p.print_help() or 2)


def add_workspace_arg(parser) -> None:
    parser.add_argument("-w", "--workspace", default=os.environ.get(WORKSPACE_ENV),
                        help=f"ledger workspace directory (default: ${WORKSPACE_ENV})")


def open_ledger(args, create: bool = False):
    from ..ledger import Ledger

    if not args.workspace:
        raise HyperEditError(f"--workspace is required (or set ${WORKSPACE_ENV})")
    return Ledger(args.workspace, create=create)


def attach_model(ledger, args, attach: bool = True):
    """Load ``--model`` (default: the workspace's base model, else the embedded one); returns (lm, spec)."""
    from ..models import load_model

    base = ledger.base_model or {}
    spec = args.model or base.get("spec") or "smollm2-135m"
    if Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())
    lm = load_model(spec, device=args.device, dtype=args.dtype, chat_template=args.chat_template)
    if attach:
        ledger.attach(lm, spec=spec)
    return lm, spec


def run(args) -> int:
    command = args.ledger_command
    if command == "apply":
        return _apply(args)
    ledger = open_ledger(args)
    if command == "list":
        entries = ledger.entries(args.status)
        if args.json:
            emit_json([e.summary() for e in entries])
            return 0
        if not entries:
            print("no entries")
        for e in entries:
            s = e.summary()
            metrics = " ".join(f"{k}={v:.2f}" for k, v in s["metrics"].items() if v is not None)
            print(f"{e.id:>5}  {e.status:<8} {e.created_at[:19]}  {e.editor or '-':<10} {s['n_requests']:>4} req  "
                  f"{metrics:<24} {s['first_request']}")
        return 0
    if command == "show":
        entry = ledger.get(args.id)
        emit_json({**entry.to_dict(), "events": ledger.events(entry.id)})
        return 0
    if command == "verify":
        report = ledger.verify()
        if args.json:
            emit_json(report)
        else:
            print(f"{report['entries']} entries ({report['active']} active); "
                  f"{len(report['unreferenced_blobs'])} unreferenced blob(s)")
            for problem in report["problems"]:
                print(f"problem: {problem}")
            for name in report["stale_temporaries"]:
                print(f"note: blobs/{name} is left by a killed write (removed by the next apply)")
        return 0 if report["ok"] else 1
    if command == "revert":
        seed_everything(args.seed)
        if args.recompute:
            attach_model(ledger, args)
        result = ledger.revert(args.id, recompute=args.recompute)
        if args.json:
            emit_json(result)
        else:
            print(f"entry {args.id} reverted" + (f"; recomputed {result['recomputed']}" if result["recomputed"] else "")
                  + (f"; imported entries kept as they were: {result['kept']}" if result["kept"] else ""))
            if result["computed_on_it"]:
                print(f"note: entries {result['computed_on_it']} were computed with entry {args.id} in place and keep "
                      f"their deltas; `--recompute` recomputes them without it (see docs/ledger.md)")
        return 0
    if command == "export":
        check_paths([Output("export", args.out, "model")], [("--workspace", args.workspace)], overwrite=args.overwrite)
        attach_model(ledger, args)
        out = ledger.export(args.out)
        active = [e.id for e in ledger.entries("active")]
        print(f"exported base model + {len(active)} active entries to {out}")
        return 0
    raise HyperEditError(f"unknown ledger action {command!r}")


def _apply(args) -> int:
    from ..data import load_requests
    from ..delta import EditDelta

    if not args.requests and not args.delta:
        raise HyperEditError("ledger apply: give --requests (compute an edit) or --delta (import a saved one)")
    seed_everything(args.seed)
    requests = []
    if args.requests:
        requests = load_requests(args.requests, data_dir=args.data_dir, limit=args.limit, offset=args.offset)
        if not requests:
            raise HyperEditError(f"{args.requests}: no requests to edit")
    delta = EditDelta.load(args.delta) if args.delta else None
    ledger = open_ledger(args, create=True)
    attach_model(ledger, args)
    if delta is not None:
        entry = ledger.import_delta(delta, requests, metrics=not args.no_metrics)
    else:
        entry = ledger.apply(requests, args.editor, parse_overrides(args), checkpoint=args.checkpoint,
                             metrics=not args.no_metrics)
    if args.json:
        emit_json(entry.summary())
    else:
        metrics = " ".join(f"{k}={v:.3f}" for k, v in entry.summary()["metrics"].items() if v is not None)
        print(f"entry {entry.id}: {len(entry.requests)} request(s) with {entry.editor or 'imported delta'}"
              + (f" in {entry.edit_time_s:.1f} s" if entry.edit_time_s else "") + (f"; {metrics}" if metrics else ""))
    return 0
