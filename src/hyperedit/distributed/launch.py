"""``--nproc N``: run the same command as N data-parallel ranks under torchrun.

The parent process only launches; torchrun (``torch.distributed.run``) starts N copies of
``python -m hyperedit ...`` with the rendezvous variables set, and each joins the process group
(``world.init_from_environment``). Several machines: launch ``torchrun`` yourself with
``--nnodes``/``--rdzv-endpoint`` (docs/distributed.md).
"""
from __future__ import annotations

import os
import subprocess
import sys


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        out.append(item)
    return out


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(nproc: int, argv: list[str], threads_per_rank: int | None = None) -> int:
    """Run ``python -m hyperedit <argv>`` as ``nproc`` local ranks; returns the exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "hyperedit", *strip_nproc(argv)]
    env = dict(os.environ)
    if threads_per_rank:
        env["OMP_NUM_THREADS"] = str(threads_per_rank)
    return subprocess.run(cmd, env=env).returncode
