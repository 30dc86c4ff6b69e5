"""``hyperedit train --editor rledit|hiedit``: trajectory training (``training.trajectory``).

HiEdit's own options go through ``--set`` (``low=mend``, ``top_k=4``, ``sparsity_coef=1e-3``,
``policy_hidden=256``); the trajectory options are added to ``hyperedit train`` by
``add_trajectory_args``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ._common import load_model_from_args
from ._training_setup import apply_warm_start, prepare_training, training_config, warm_start_source

log = logging.getLogger(__name__)

def add_trajectory_args(parser) -> None:
    """The options of trajectory training (used only with --editor rledit|hiedit)."""
    g = parser.add_argument_group("trajectory training (rledit, hiedit)")
    g.add_argument("--traj-len", type=int, default=10, help="edits per trajectory")
    g.add_argument("--trajectories-per-step", type=int, default=1, metavar="N",
                   help="trajectories whose mean gradient makes one optimiser step; with --nproc, the ranks "
                        "share them (N >= ranks; docs/distributed.md)")
    g.add_argument("--back-depth", type=int, default=10, help="earlier edits in the backtracking loss")
    g.add_argument("--gamma", type=float, default=0.95, help="discount of earlier edits' losses")
    g.add_argument("--reg-coef", type=float, default=1e-4, help="weight of ||S||^2")
    g.add_argument("--loc-reference", choices=("unedited", "pre_edit"), default="unedited",
                   help="locality KL against the unedited model or the model just before each edit")
    g.add_argument("--edit-lr-init", type=float,
                   help="every per-module edit lr starts at this value (after --init-from; not on --resume)")
    g.add_argument("--no-baseline", action="store_true",
                   help="hiedit: skip measuring the return of editing every candidate module")


def run_trajectory(args) -> int:
    """Build the editor, train it over trajectories in ``--out`` (resumable), print where it is."""
    from ..training import load_pool
    from ..training.data import fingerprint
    from ..training.trajectory import TrajectoryConfig, TrajectoryTrainer

    entry, editor_config = prepare_training(args)
    source = warm_start_source(args, editor_config)
    config = training_config(TrajectoryConfig, steps=args.steps, traj_len=args.traj_len, n_edits=args.n_edits,
                             trajectories_per_step=args.trajectories_per_step,
                             back_depth=args.back_depth, gamma=args.gamma, loc_coef=args.loc_coef,
                             reg_coef=args.reg_coef, meta_lr=args.meta_lr, lr_meta_lr=args.lr_meta_lr,
                             max_grad_norm=args.max_grad_norm, baseline=not args.no_baseline,
                             loc_reference=args.loc_reference, edit_lr_init=args.edit_lr_init,
                             fact_cache=args.fact_cache,
                             ckpt_every=args.ckpt_every, seed=args.seed)
    pool, sources = load_pool(args.train, data_dir=args.data_dir, limit=args.limit_train)
    lm = load_model_from_args(args)
    editor = entry.factory.create(editor_config, lm, seed=args.seed)
    info = {"sources": sources, "data": fingerprint(pool), "model_name": lm.name}
    if source is not None:
        apply_warm_start(editor, source, lm, args, info)
    log.info("trajectory training of %s on %s, candidate modules %s", args.editor, "+".join(sources),
             ", ".join(editor.module_names))
    trainer = TrajectoryTrainer(editor, lm, pool, config, Path(args.out), info)
    records = trainer.run(resume=args.resume)
    if not trainer.world.is_main:
        return 0
    last = records[-1] if records else {}
    print(f"trained {args.editor} for {trainer.step} steps -> {args.out} (last loss {last.get('loss', float('nan')):.3f})")
    print(f"use it: hyperedit lifelong --editor {args.editor} --checkpoint {args.out} --run-dir RUN --model {args.model}")
    return 0
