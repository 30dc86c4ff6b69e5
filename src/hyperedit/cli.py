"""The ``hyperedit`` command line. Logging, warnings and seeding are configured here only.

Each subcommand lives in ``hyperedit/commands/<name>.py`` with ``register(subparsers)`` and
``run(args) -> int``; this file only discovers them and turns user errors into one line + exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from .errors import HyperEditError

log = logging.getLogger("hyperedit")

DESCRIPTION = """\
hyperedit: edit the facts stored in a language model, and measure the result.

  hyperedit demo                          edit a few real facts in the embedded model, show before/after
  hyperedit edit  --editor ft --requests my_edits.jsonl --out my_delta
  hyperedit eval  --editor ft --data counterfact:val --n-edits 100
  hyperedit COMMAND --help                options of one command
"""


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, commands

    parser = argparse.ArgumentParser(prog="hyperedit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hyperedit {__version__}")
    from .commands._common import verbosity_options

    sub = _Subcommands(parser.add_subparsers(dest="command", metavar="COMMAND"), [verbosity_options(0)])
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


class _Subcommands:
    """Subparser factory giving every subcommand the shared -v/-q options."""

    def __init__(self, action, parents):
        self._action, self._parents = action, parents

    def add_parser(self, name, **kwargs):
        return self._action.add_parser(name, parents=self._parents, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for commands that re-launch themselves
    _configure_logging(-1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0))
    try:
        rc = int(args.func(args) or 0)
        if rc == 0 and "torch.distributed" in sys.modules:  # torchrun ranks leave together
            from .distributed import leave_process_group

            leave_process_group()
        return rc
    except HyperEditError as exc:
        print(f"hyperedit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperedit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
