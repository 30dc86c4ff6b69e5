"""Options and helpers shared by several subcommands."""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
from pathlib import Path

from ..errors import HyperEditError

log = logging.getLogger(__name__)


def verbosity_options(default=argparse.SUPPRESS) -> argparse.ArgumentParser:
    """The shared -v/-q options; nested subcommands (``ledger list``) take them with SUPPRESS
    defaults, so ``ledger -v list`` and ``ledger list -v`` both count."""
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=default, help="more log output (-vv for debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=default or False,
                           help="only warnings and errors")
    return verbosity


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="smollm2-135m",
                       help="embedded model name (smollm2-135m, default; gemma3-270m after make setup-gemma) "
                            "or a local Hugging Face model directory")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    group.add_argument("--chat-template", action="store_true", help="wrap prompts in the model's chat template")


def add_placement_args(parser: argparse.ArgumentParser) -> None:
    """``--device-map`` and its companions: one model over several GPUs (edit, eval)."""
    group = parser.add_argument_group("model placement over several devices (docs/distributed.md)")
    group.add_argument("--device-map", metavar="MAP",
                       help="auto, balanced, balanced_low_0, sequential (accelerate) or a JSON file "
                            "{module: GPU index | cpu | disk}; replaces --device")
    group.add_argument("--max-memory", metavar="SPEC", help="with --device-map: e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    group.add_argument("--offload-folder", metavar="DIR", help="with --device-map: where disk-offloaded weights go")


def add_editor_args(parser: argparse.ArgumentParser, default: str | None = "ft") -> None:
    group = parser.add_argument_group("editor")
    group.add_argument("--editor", default=default, required=default is None,
                       help="editing method (see `hyperedit editors`); default: %(default)s")
    group.add_argument("--checkpoint", help="trained editor checkpoint directory (malmen, mend, rledit, hiedit)")
    group.add_argument("--config", help="JSON file of editor options")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="editor option, e.g. --set steps=40 --set layers=[20,21]; repeatable")
    group.add_argument("--stats-corpus", metavar="PATH",
                       help="text for key statistics: a .txt file (one text per line), .jsonl (field text) or a "
                            "folder of them; 'benchmark' for the benchmark corpus (default: the packaged corpus)")


def add_overwrite_arg(parser: argparse.ArgumentParser, what: str = "an earlier output of the same kind") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} made by hyperedit (never anything else)")


def input_paths(args) -> list[tuple[str, str]]:
    """(option, path) of the files and directories a command reads, for ``outputs.check_paths``."""
    found = []
    for option in ("requests", "data", "config", "checkpoint", "model", "init_from", "target_cache"):
        value = getattr(args, option, None)
        if isinstance(value, str) and value:
            found.append(("--" + option.replace("_", "-"), value))
    for item in (getattr(args, "train", None) or "").split(","):
        if item.strip():
            found.append(("--train", item.strip()))
    return found


def result_outputs(option: str, base: str | None, suffixes=(".json", ".md")) -> list:
    """The files ``--out NAME`` stands for (``NAME.json``, ``NAME.md``, ...), as outputs to check."""
    from ..outputs import Output

    return [Output(option, f"{base}{suffix}", "result") for suffix in suffixes] if base else []


def add_nproc_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel ranks on this machine, launched with torchrun (malmen, mend; train: also "
                             "rledit, hiedit); "
                             "default 1 (docs/distributed.md)")


def relaunch_ranks(args, splits=lambda capabilities: capabilities.splittable) -> int:
    """``--nproc N`` in the parent: run the same command as N ranks under torchrun (``splits``: whether
    this command can share an editor's work over ranks, from its declared ``Capabilities``)."""
    from ..distributed.launch import launched_by_torchrun, relaunch
    from ..editors import editors_that

    if args.nproc < 1:
        raise HyperEditError("--nproc must be at least 1")
    splittable = editors_that(splits)
    if getattr(args, "editor", None) not in splittable:
        raise HyperEditError(f"--nproc: {args.editor} does not split its work over ranks; "
                             f"use {' or '.join(splittable)}")
    if launched_by_torchrun():
        raise HyperEditError("--nproc inside a torchrun launch: give the number of ranks to torchrun only")
    return relaunch(args.nproc, args.argv)


def join_ranks(args):
    """In a torchrun rank: join the process group, pick this rank's device, quiet the other ranks."""
    import logging

    from ..distributed import init_from_environment
    from ..distributed.world import rank_device

    world = init_from_environment(args.device)
    args.device = rank_device(args.device, world)
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    return world


def add_data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="benchmark data directory (default: $HYPEREDIT_DATA_DIR, ../shared/data, or where "
                             "`hyperedit data fetch` puts it; docs/data.md)")


def parse_overrides(args) -> dict:
    """Editor options from ``--config FILE`` then ``--set KEY=VALUE`` (values parsed as JSON, else text)."""
    options: dict = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            raise HyperEditError(f"{path}: no such config file") from None
        except json.JSONDecodeError as exc:
            raise HyperEditError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(loaded, dict):
            raise HyperEditError(f"{path}: editor config must be a JSON object")
        options.update(loaded)
    for item in getattr(args, "overrides", []) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise HyperEditError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = value
    return options


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model_from_args(args):
    from ..models import load_model

    from ..models.placement import parse_device_map, parse_max_memory

    device_map = parse_device_map(getattr(args, "device_map", None))
    if device_map is None and (getattr(args, "max_memory", None) or getattr(args, "offload_folder", None)):
        raise HyperEditError("--max-memory and --offload-folder go with --device-map")
    if device_map is not None and getattr(args, "nproc", 1) > 1:
        raise HyperEditError("--device-map places one model over several devices; it does not combine with --nproc")
    return load_model(args.model, device=args.device, dtype=args.dtype, chat_template=args.chat_template,
                      device_map=device_map, max_memory=parse_max_memory(getattr(args, "max_memory", None)),
                      offload_folder=getattr(args, "offload_folder", None))


def use_stats_corpus(path: str | None) -> None:
    """``--stats-corpus``: checked now (one line on a bad file), then the process's default corpus
    for every editor's statistics (``$HYPEREDIT_STATS_CORPUS``, which ranks launched later inherit)."""
    if not path:
        return
    from ..stats import CORPUS_ENV, corpus_texts

    corpus = path if path in ("benchmark", "packaged") else str(Path(path).resolve())
    if not corpus_texts(corpus):
        raise HyperEditError(f"--stats-corpus: {path} has no text")
    os.environ[CORPUS_ENV] = corpus


def editor_from_args(args, lm):
    """The editor named on the command line; for an embedded model with measured settings
    (``editors.presets``) those fill in the options the user did not give, and the log says so."""
    from ..editors import get_editor
    from ..editors.presets import preset_options

    use_stats_corpus(getattr(args, "stats_corpus", None))
    options = parse_overrides(args)
    preset = preset_options(args.editor, lm.name, options)
    if preset:
        shown = ", ".join(f"{k}={v}" for k, v in preset.items())
        log.info("%s on %s: using the settings measured for this model (%s); --set overrides them",
                 args.editor, lm.name, shown)
    return get_editor(args.editor, checkpoint=args.checkpoint, lm=lm, **preset, **options)


def emit_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def dataset_label(spec: str) -> tuple[str, str]:
    """(dataset, split) for result records: ``counterfact:val`` -> (counterfact, val); a file -> (stem, file)."""
    if ":" in spec and not Path(spec).exists():
        name, split = spec.split(":", 1)
        return name, split
    return Path(spec).stem, "file"
