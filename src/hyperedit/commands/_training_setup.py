"""What both kinds of ``hyperedit train`` share: threads, seeds and the editor and training configs.

``commands/train.py`` (meta-training) and ``commands/_trajectory.py`` (trajectory training) both
import from here, so neither imports the other's internals.
"""
from __future__ import annotations

import logging

from ..errors import HyperEditError
from ..outputs import Output, check_paths, start_run_directory
from ._common import input_paths, parse_overrides, seed_everything

log = logging.getLogger(__name__)


def parse_layers(text: str | None) -> list[int] | None:
    """``"24-29"`` -> [24..29]; ``"20,22"`` -> [20, 22]; None stays None."""
    if not text:
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise HyperEditError(f"--layers {text!r}: expected e.g. 24-29 or 20,22,24") from None
    return layers


def check_run_paths(args) -> None:
    """Refuse a bad ``--out`` before any work; with ``--overwrite``, clear an earlier run there."""
    if args.resume and args.overwrite:
        raise HyperEditError("--resume and --overwrite: choose one")
    check_paths([Output("--out", args.out, "training-run")], input_paths(args), overwrite=args.overwrite,
                resume=args.resume)
    if args.overwrite:
        start_run_directory(args.out, "training-run", overwrite=True)


def prepare_training(args):
    """Threads and seeds as asked; returns the editor's registry entry and its config."""
    import torch

    from ..editors import editor_entry

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    entry = editor_entry(args.editor)
    return entry, editor_config_from_args(args, entry)


def training_config(config_class, **fields):
    """``config_class(**fields)``, its validation errors as one-line ``HyperEditError``."""
    try:
        return config_class(**fields)
    except ValueError as exc:
        raise HyperEditError(f"invalid training option: {exc}") from None


def editor_config_from_args(args, entry):
    """The hypernetwork editor's config from the shared train options plus ``--set`` overrides."""
    from ..editors.base import make_config

    options = {"layers": parse_layers(args.layers), "rank": args.rank, "n_blocks": args.n_blocks,
               "lr_init": args.lr_init, "lm_batch_size": args.lm_batch_size, **parse_overrides(args)}
    return make_config(entry.config_class, options)


def add_init_from_arg(group) -> None:
    group.add_argument("--init-from", metavar="DIR",
                       help="warm start: the hypernetwork starts as this trained editor's (malmen, mend: "
                            "the same editor, e.g. to go on training a shipped one on more data; rledit, "
                            "hiedit low=malmen: a MALMEN; hiedit low=mend: a MEND; hiedit: also a HiEdit, "
                            "policy included); its layers, rank and blocks are used")


def warm_start_source(args, editor_config):
    """The trained editor named by ``--init-from`` (or None), ``editor_config``'s shape set to its
    (``editors._warm_start``); the key site too, unless ``--set token=...`` asks for another."""
    if not args.init_from:
        return None
    from ..editors._warm_start import warm_start_source as source_for

    keep = ("token",) if "token" in parse_overrides(args) else ()
    return source_for(args.editor, editor_config, args.init_from, keep=keep)


def apply_warm_start(editor, source, lm, args, info: dict) -> None:
    """Check ``source`` fits ``lm``, record it in ``info`` and, unless resuming (a resumed run
    restores its own weights), start ``editor`` from its hypernetwork."""
    source.check_model(lm)
    info["init_from"] = args.init_from
    if not args.resume:
        editor.warm_start(source)
        log.info("hypernetwork initialised from the %s checkpoint %s", source.name, args.init_from)
