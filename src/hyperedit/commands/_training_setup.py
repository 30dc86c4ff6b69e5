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


# The editor whose trained hypernetwork ``--init-from`` names, per trained editor; None: HiEdit's
# low level (``--set low=...``), or a HiEdit when the checkpoint holds one.
WARM_START_SOURCES = {"malmen": "malmen", "mend": "mend", "rledit": "malmen", "hiedit": None}
# What a HiEdit warm start takes over from a HiEdit checkpoint besides the hypernetwork's shape.
HIEDIT_SHAPE = ["low", "top_k", "policy_hidden"]


def _saved_editor(path: str) -> str | None:
    """The editor name a checkpoint (or training run) directory says it holds."""
    from ..editors._hypernet import read_checkpoint_meta

    try:
        return read_checkpoint_meta(path)[1].get("editor")
    except (HyperEditError, OSError):  # get_editor says what is wrong with it
        return None


def add_init_from_arg(group) -> None:
    group.add_argument("--init-from", metavar="DIR",
                       help="warm start: the hypernetwork starts as this trained editor's (malmen, mend: "
                            "the same editor, e.g. to go on training a shipped one on more data; rledit, "
                            "hiedit low=malmen: a MALMEN; hiedit low=mend: a MEND; hiedit: also a HiEdit, "
                            "policy included); its layers, rank and blocks are used")


def warm_start_source(args, editor_config):
    """The trained editor named by ``--init-from`` (or None). The hypernetwork shape options of
    ``editor_config`` (layers, module kind, rank, blocks) are set to the checkpoint's; the key site
    (``token``) too, unless ``--set token=...`` asks for another one (the shapes do not depend on
    it, so a network trained at one site may be trained on at another)."""
    if not args.init_from:
        return None
    from ..editors import get_editor

    wanted = WARM_START_SOURCES[args.editor]
    if wanted is None:
        wanted = "hiedit" if _saved_editor(args.init_from) == "hiedit" else editor_config.low
    source = get_editor(wanted, checkpoint=args.init_from)
    keys = ["layers", "module_kind", "rank", "n_blocks"] + (HIEDIT_SHAPE if wanted == "hiedit" else [])
    if "token" in parse_overrides(args):
        log.info("--init-from: token = %s (given; the checkpoint's is %s)", editor_config.token, source.config.token)
    else:
        keys.append("token")
    for key in keys:
        if getattr(editor_config, key) != getattr(source.config, key):
            log.info("--init-from: %s = %s (the checkpoint's)", key, getattr(source.config, key))
            setattr(editor_config, key, getattr(source.config, key))
    return source


def apply_warm_start(editor, source, lm, args, info: dict) -> None:
    """Check ``source`` fits ``lm``, record it in ``info`` and, unless resuming (a resumed run
    restores its own weights), start ``editor`` from its hypernetwork."""
    source.check_model(lm)
    info["init_from"] = args.init_from
    if not args.resume:
        editor.warm_start(source)
        log.info("hypernetwork initialised from the %s checkpoint %s", source.name, args.init_from)
