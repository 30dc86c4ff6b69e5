"""``hyperedit train``: meta-train a hypernetwork editor (MALMEN, MEND), checkpointed and resumable."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import HyperEditError
from ._common import add_data_dir_arg, add_model_args, emit_json, load_model_from_args, parse_overrides, seed_everything

log = logging.getLogger(__name__)

TRAINABLE = ("malmen", "mend", "rledit", "hiedit")


def register(sub) -> None:
    p = sub.add_parser("train", help="meta-train a hypernetwork editor (malmen, mend)",
                       description="Meta-trains the hypernetwork of MALMEN or MEND on a mix of training splits "
                                   "(never on the evaluation splits counterfact:val and zsre:knowedit-test). "
                                   "Writes OUT/checkpoints/step-N/ (editor.safetensors + editor.json, usable with "
                                   "`hyperedit edit/eval --checkpoint OUT`), OUT/LATEST and OUT/metrics.jsonl. "
                                   "A killed run continues from its last checkpoint with --resume and ends with "
                                   "the same weights as an uninterrupted run (same options, same thread count).")
    add_model_args(p)
    add_data_dir_arg(p)
    p.add_argument("--editor", choices=TRAINABLE, default="malmen")
    p.add_argument("--train", default="zsre,counterfact",
                   help="comma-separated training sources: zsre, counterfact, NAME:SPLIT or files")
    p.add_argument("--limit-train", type=int, help="use at most N requests of each source")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g = p.add_argument_group("editor")
    g.add_argument("--layers", help="edited layers, e.g. 24-29 or 20,22,24 (default: the last 6)")
    g.add_argument("--rank", type=int, default=256)
    g.add_argument("--n-blocks", type=int, default=2)
    g.add_argument("--lr-init", type=float, default=1e-4, help="initial per-module edit learning rate")
    g.add_argument("--lm-batch-size", type=int, default=16)
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="other editor option (e.g. --set solve_dtype=float64); repeatable")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--n-edits", type=int, default=64, help="facts edited together in one training step")
    t.add_argument("--meta-lr", type=float, default=1e-4)
    t.add_argument("--lr-meta-lr", type=float, help="Adam step size of the per-module lr (default: --meta-lr)")
    t.add_argument("--lambda-meta-lr", type=float,
                   help="Adam step size of MALMEN's log ridge strength (default: --meta-lr)")
    t.add_argument("--lambda-init", choices=("zero", "trace"), default="zero",
                   help="initial ridge: e^lambda = 1, or tr(K^T K)/d_in of the first batch's keys")
    t.add_argument("--no-fact-cache", dest="fact_cache", action="store_false",
                   help="recompute keys, value gradients and the frozen layers every step")
    t.add_argument("--cache-dir", help="where the fact caches are kept (default: --out)")
    t.add_argument("--loc-coef", type=float, default=1.0)
    t.add_argument("--max-grad-norm", type=float, default=1.0)
    t.add_argument("--val-size", type=int, default=64, help="held-out training requests used for validation")
    t.add_argument("--val-every", type=int, default=25, help="validate every N steps (0: only at the end)")
    t.add_argument("--ckpt-every", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="torch CPU threads (keep the same value when resuming)")
    p.add_argument("--json", action="store_true", help="print the final validation record as JSON")
    from ._trajectory import add_trajectory_args  # rledit, hiedit: training over editing trajectories

    add_trajectory_args(p)
    p.set_defaults(func=run)


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


def run(args) -> int:
    from ._trajectory import TRAJECTORY_EDITORS, run_trajectory

    if args.editor in TRAJECTORY_EDITORS:
        return run_trajectory(args)
    from ..training import CheckpointStore, MetaTrainConfig, MetaTrainer, load_pool, split_validation
    from ..training.data import fingerprint

    entry, editor_config = prepare_training(args)
    train_config = training_config(MetaTrainConfig, steps=args.steps, n_edits=args.n_edits, meta_lr=args.meta_lr,
                                   lr_meta_lr=args.lr_meta_lr, loc_coef=args.loc_coef,
                                   max_grad_norm=args.max_grad_norm, val_size=args.val_size,
                                   val_every=args.val_every, ckpt_every=args.ckpt_every, seed=args.seed,
                                   lambda_meta_lr=args.lambda_meta_lr, lambda_init=args.lambda_init,
                                   fact_cache=args.fact_cache, cache_dir=args.cache_dir)
    if CheckpointStore(args.out).latest() is not None and not args.resume:
        raise HyperEditError(f"{args.out} already holds a training run; pass --resume to continue it "
                             "or choose another --out")
    pool, sources = load_pool(args.train, data_dir=args.data_dir, limit=args.limit_train)
    train, val = split_validation(pool, args.val_size, args.seed) if args.val_size else (pool, [])
    lm = load_model_from_args(args)
    editor = entry.factory.create(editor_config, lm, seed=args.seed)
    info = {"sources": sources, "data": fingerprint(pool), "n_train": len(train), "n_val": len(val),
            "model_name": lm.name}
    log.info("training %s on %s (%d train, %d validation requests), modules %s", args.editor, "+".join(sources),
             len(train), len(val), ", ".join(editor.module_names))
    trainer = MetaTrainer(editor, lm, train, val, train_config, Path(args.out), info)
    validations = trainer.run(resume=args.resume)
    final = validations[-1] if validations else {}
    if args.json:
        emit_json(final)
    else:
        summary = ", ".join(f"{k} {final[k]:.3f}" for k in ("ES", "GS", "LS") if isinstance(final.get(k), float))
        print(f"trained {args.editor} for {trainer.step} steps -> {args.out} ({summary or 'no validation'})")
        print(f"use it: hyperedit eval --editor {args.editor} --checkpoint {args.out} --model {args.model}")
    return 0


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
