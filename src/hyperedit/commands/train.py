"""``hyperedit train``: meta-train a hypernetwork editor (MALMEN, MEND), checkpointed and resumable."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import HyperEditError
from ._common import (add_data_dir_arg, add_model_args, add_nproc_arg, add_overwrite_arg, emit_json, join_ranks,
                      load_model_from_args, relaunch_ranks)
from ._trajectory import add_trajectory_args, run_trajectory
from ._training_setup import (add_init_from_arg, apply_warm_start, check_run_paths, prepare_training, training_config,
                              warm_start_source)

log = logging.getLogger(__name__)

def register(sub) -> None:
    p = sub.add_parser("train", help="meta-train a hypernetwork editor (malmen, mend)",
                       description="Meta-trains the hypernetwork of MALMEN or MEND on a mix of training splits "
                                   "(never on the evaluation splits counterfact:val and zsre:knowedit-test). "
                                   "Writes OUT/checkpoints/step-N/ (editor.safetensors + editor.json, usable with "
                                   "`hyperedit edit/eval --checkpoint OUT`), OUT/LATEST and OUT/metrics.jsonl. "
                                   "A killed run continues from its last checkpoint with --resume and ends with "
                                   "the same weights as an uninterrupted run (same options, same thread count). "
                                   "--nproc N (or a torchrun launch) trains data-parallel: each rank takes its "
                                   "share of every step's facts (rledit, hiedit: of its trajectories); rank 0 "
                                   "writes the run (docs/distributed.md).")
    add_model_args(p)
    add_data_dir_arg(p)
    p.add_argument("--editor", default="malmen",
                   help="a trainable editor (malmen, mend: meta-training; rledit, hiedit: over trajectories; "
                        "`hyperedit editors` lists them); default: %(default)s")
    p.add_argument("--train", default="zsre,counterfact",
                   help="comma-separated training sources: zsre, zsre-10k (zsre:train-10k), counterfact, "
                        "NAME:SPLIT or files")
    p.add_argument("--limit-train", type=int, help="use at most N requests of each source")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_overwrite_arg(p, "an earlier training run in --out (it is deleted first)")
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
    add_init_from_arg(t)
    p.add_argument("--json", action="store_true", help="print the final validation record as JSON")
    add_nproc_arg(p)
    add_trajectory_args(p)  # rledit, hiedit: training over editing trajectories
    p.set_defaults(func=run)


def _training_kind(editor: str) -> str:
    """``meta`` or ``trajectory``, as ``editor`` declares (one line, exit 2, for an untrainable one)."""
    from ..editors import editor_entry, editors_that

    kind = editor_entry(editor).capabilities.training
    if kind is None:
        raise HyperEditError(f"--editor {editor}: not trainable; trainable: "
                             f"{', '.join(editors_that(lambda c: c.trainable))}")
    return kind


def run(args) -> int:
    kind = _training_kind(args.editor)
    if args.nproc > 1:  # options and --out are checked here, once, before any rank starts
        if kind == "trajectory" and args.trajectories_per_step < args.nproc:
            raise HyperEditError(f"--nproc {args.nproc}: {args.editor} shares whole trajectories over ranks; "
                                 f"give --trajectories-per-step {args.nproc} or more")
        check_run_paths(args)
        return relaunch_ranks(args, lambda capabilities: capabilities.trainable)  # training of either kind splits
    world = join_ranks(args)
    if world.is_main:
        check_run_paths(args)
    if kind == "trajectory":
        return run_trajectory(args)
    from ..training import MetaTrainConfig, MetaTrainer, load_pool, split_validation
    from ..training.data import fingerprint

    entry, editor_config = prepare_training(args)
    source = warm_start_source(args, editor_config)
    train_config = training_config(MetaTrainConfig, steps=args.steps, n_edits=args.n_edits, meta_lr=args.meta_lr,
                                   lr_meta_lr=args.lr_meta_lr, loc_coef=args.loc_coef,
                                   max_grad_norm=args.max_grad_norm, val_size=args.val_size,
                                   val_every=args.val_every, ckpt_every=args.ckpt_every, seed=args.seed,
                                   lambda_meta_lr=args.lambda_meta_lr, lambda_init=args.lambda_init,
                                   fact_cache=args.fact_cache, cache_dir=args.cache_dir)
    pool, sources = load_pool(args.train, data_dir=args.data_dir, limit=args.limit_train)
    train, val = split_validation(pool, args.val_size, args.seed) if args.val_size else (pool, [])
    lm = load_model_from_args(args)
    editor = entry.factory.create(editor_config, lm, seed=args.seed)
    info = {"sources": sources, "data": fingerprint(pool), "n_train": len(train), "n_val": len(val),
            "model_name": lm.name}
    if source is not None:
        _keep_trained_lr_and_ridge(train_config)
        apply_warm_start(editor, source, lm, args, info)
    log.info("training %s on %s (%d train, %d validation requests), modules %s", args.editor, "+".join(sources),
             len(train), len(val), ", ".join(editor.module_names))
    trainer = MetaTrainer(editor, lm, train, val, train_config, Path(args.out), info)
    validations = trainer.run(resume=args.resume)
    if not world.is_main:
        return 0
    final = validations[-1] if validations else {}
    if args.json:
        emit_json(final)
    else:
        summary = ", ".join(f"{k} {final[k]:.3f}" for k in ("ES", "GS", "LS") if isinstance(final.get(k), float))
        print(f"trained {args.editor} for {trainer.step} steps -> {args.out} ({summary or 'no validation'})")
        print(f"use it: hyperedit eval --editor {args.editor} --checkpoint {args.out} --model {args.model}")
    return 0


def _keep_trained_lr_and_ridge(train_config) -> None:
    """With ``--init-from`` the edit lr and ridge are trained values: the lr calibration and the
    trace init of the ridge, which would overwrite them, are off."""
    train_config.calibrate_lr = False
    if train_config.lambda_init != "zero":
        log.info("--init-from: --lambda-init %s ignored, the ridge strength is the checkpoint's",
                 train_config.lambda_init)
        train_config.lambda_init = "zero"
