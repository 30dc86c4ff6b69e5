"""``hyperedit bench run PROTOCOL_FILE...`` and ``hyperedit bench report``: the suite and its leaderboard."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("bench", help="run benchmark protocols and write the leaderboard",
                       description="run: measure every editor x model of each protocol in the files "
                                   "(benchmarks/protocols/*.json), one result JSON per experiment, skipping "
                                   "those already measured. report: write docs/leaderboard.md and its figure "
                                   "from those results (and, with --readme, the README's leaderboard block).")
    actions = p.add_subparsers(dest="bench_action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="measure the protocols' experiments not yet done")
    run.add_argument("protocols", nargs="+", metavar="PROTOCOL_FILE", help="JSON protocol file(s)")
    run.add_argument("--results", help="results folder (default: benchmarks/results/leaderboard)")
    run.add_argument("--only", help="comma-separated protocol names to run (default: every protocol of the files)")
    run.add_argument("--editors", help="comma-separated editor labels to run (default: all of the protocol)")
    run.add_argument("--models", help="comma-separated models to run (default: all of the protocol)")
    run.add_argument("--dry-run", action="store_true", help="list what would run, measure nothing")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.set_defaults(func=run_bench)
    report = actions.add_parser("report", help="write docs/leaderboard.md (and its figure) from the results")
    report.add_argument("--results", help="results folder (default: benchmarks/results/leaderboard)")
    report.add_argument("--out", default="docs/leaderboard.md", help="leaderboard file (default: %(default)s)")
    report.add_argument("--readme", help="also fill this file's <!-- leaderboard:start/end --> table block")
    report.set_defaults(func=report_bench)


def _names(text: str | None) -> set[str] | None:
    return {t.strip() for t in text.split(",") if t.strip()} if text else None


def run_bench(args) -> int:
    from ..errors import HyperEditError
    from ..suite import load_protocols, run_protocol

    if args.threads is not None:
        if args.threads < 1:
            raise HyperEditError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    protocols = [p for path in args.protocols for p in load_protocols(path)]  # all checked before any work
    only = _names(args.only)
    if only:
        unknown = only - {p.name for p in protocols}
        if unknown:
            raise HyperEditError(f"--only: no protocol named {', '.join(sorted(unknown))} in the files")
        protocols = [p for p in protocols if p.name in only]
    for protocol in protocols:
        for name, status in run_protocol(protocol, args.results, _names(args.editors), _names(args.models),
                                         args.dry_run):
            print(f"{status:>9}  {name}")
    return 0


def report_bench(args) -> int:
    from ..suite import write_report

    for path in write_report(args.results, args.out, args.readme):
        print(f"wrote {path}")
    return 0
