"""Train RLEdit or HiEdit over editing trajectories (checkpointed, resumable with --resume).

    python benchmarks/lifelong_train.py --editor hiedit --low malmen --out runs/hiedit_malmen \
        --layers 22-29 --top-k 4 --steps 20 --traj-len 5 --back-depth 3 --threads 1

Trains on the training splits only (zsre:train + counterfact:train by default); the trained run
directory is usable as ``--checkpoint`` of ``hyperedit lifelong --editor rledit|hiedit``.
"""
from __future__ import annotations

import argparse
import logging

import torch


def main(argv=None) -> int:
    from hyperedit.commands._training_setup import parse_layers
    from hyperedit.editors.hypernet import HiEditConfig, HiEditEditor, RLEditConfig, RLEditEditor
    from hyperedit.models import load_model
    from hyperedit.training import load_pool
    from hyperedit.training.data import fingerprint
    from hyperedit.training.trajectory import TrajectoryConfig, TrajectoryTrainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--editor", choices=["rledit", "hiedit"], required=True)
    p.add_argument("--low", choices=["malmen", "mend"], default="malmen", help="HiEdit's low level")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--train", default="zsre,counterfact")
    p.add_argument("--limit-train", type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--layers", default="22-29")
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--n-blocks", type=int, default=2)
    p.add_argument("--lr-init", type=float, default=1e-4)
    p.add_argument("--sparsity-coef", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--traj-len", type=int, default=5)
    p.add_argument("--n-edits", type=int, default=1)
    p.add_argument("--back-depth", type=int, default=3)
    p.add_argument("--gamma", type=float, default=0.95)
    p.add_argument("--loc-coef", type=float, default=0.6)
    p.add_argument("--reg-coef", type=float, default=1e-4)
    p.add_argument("--meta-lr", type=float, default=1e-4)
    p.add_argument("--lr-meta-lr", type=float)
    p.add_argument("--no-baseline", action="store_true", help="skip the all-modules baseline return (HiEdit)")
    p.add_argument("--ckpt-every", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    lm = load_model(args.model)
    common = dict(layers=parse_layers(args.layers), rank=args.rank, n_blocks=args.n_blocks, lr_init=args.lr_init)
    if args.editor == "rledit":
        editor = RLEditEditor.create(RLEditConfig(**common), lm, seed=args.seed)
    else:
        editor = HiEditEditor.create(HiEditConfig(**common, low=args.low, top_k=args.top_k,
                                                  sparsity_coef=args.sparsity_coef), lm, seed=args.seed)
    pool, sources = load_pool(args.train, limit=args.limit_train)
    config = TrajectoryConfig(steps=args.steps, traj_len=args.traj_len, n_edits=args.n_edits,
                              back_depth=args.back_depth, gamma=args.gamma, loc_coef=args.loc_coef,
                              reg_coef=args.reg_coef, meta_lr=args.meta_lr, lr_meta_lr=args.lr_meta_lr,
                              baseline=not args.no_baseline, ckpt_every=args.ckpt_every, seed=args.seed)
    info = {"model": lm.name, "sources": sources, "data": fingerprint(pool)}
    TrajectoryTrainer(editor, lm, pool, config, args.out, info=info).run(resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
