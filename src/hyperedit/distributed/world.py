"""This process's place among the ranks of a data-parallel run, and the reductions that need.

Hypernetwork edits aggregate facts by sums (MALMEN's ``K^T K`` and ``K^T D``, MEND's summed rank-1
shifts), so a run over N ranks gives each rank a contiguous share of the facts, sums its share, and
all-reduces the sums before the one solve every rank then does identically. Outside torchrun (no
``WORLD_SIZE`` > 1) everything here is the one-process identity.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import HyperEditError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """``rank`` of ``size`` processes; rank 0 is the one that writes and prints."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _destroy_if_initialized() -> None:
    if dist.is_initialized():  # not yet left by leave_process_group
        dist.destroy_process_group()


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_environment(device: str = "cpu") -> World:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ...).

    gloo for CPU tensors, nccl for CUDA ones (each rank then uses ``cuda:LOCAL_RANK``). Returns the
    one-process world when not launched by torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_available():
        raise HyperEditError("this PyTorch build has no torch.distributed; run without --nproc")
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":  # one GPU per rank; nccl's collectives run on the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        atexit.register(_destroy_if_initialized)
    world = current_world()
    log.debug("rank %d of %d", world.rank, world.size)
    return world


def leave_process_group() -> None:
    """Leave the process group together: wait for every rank, then tear gloo/nccl down.

    Called after a command succeeded. A rank that tears its connections down while another is
    still sending (e.g. rank 0 writing the last checkpoint) can abort in gloo's teardown
    ("terminate called without an active exception"), failing a run that finished. On errors
    the ``atexit`` teardown runs without the barrier, so a failing rank never waits on the others.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        _all_returned_from_barrier()
        dist.destroy_process_group()


def _all_returned_from_barrier() -> None:
    """Wait, on the rendezvous store rather than on gloo's own connections, until every rank has
    returned from the barrier. A rank returns from a gloo barrier once it has heard from the others,
    possibly before its own last message has reached them; tearing its connections down then can
    cut that message off and abort the other rank in teardown (seen under CPU load)."""
    store = dist.distributed_c10d._get_default_store()  # the store init_process_group rendezvoused on
    world = current_world()
    store.set(f"hyperedit/left/{world.rank}", "1")
    store.wait([f"hyperedit/left/{rank}" for rank in range(world.size)])


def rank_device(device: str, world: World) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` on a multi-rank run (one GPU per rank); CPU unchanged."""
    if world.size > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', world.rank))}"
    return device


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's contiguous share of ``items`` (shares differ in size by at most one)."""
    n = len(items)
    return list(items[world.rank * n // world.size:(world.rank + 1) * n // world.size])


def all_reduce_sum_(tensors: list[torch.Tensor], world: World) -> None:
    """Sum each tensor over the ranks, in place (every rank ends with the same sums)."""
    if world.size <= 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_reduce_floats(values: Sequence[float], world: World) -> list[float]:
    """The sums over the ranks of a few Python numbers (float64), e.g. losses or counts."""
    if world.size <= 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_gradients_(parameters, world: World) -> None:
    """Sum every parameter's ``.grad`` over the ranks, in place.

    A parameter with a gradient on some ranks only gets zeros added on the others; one with no
    gradient on any rank keeps ``None`` (an optimiser then skips it, as it does in one process).
    """
    if world.size <= 1:
        return
    parameters = list(parameters)
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(present, op=dist.ReduceOp.SUM)
    for p, count in zip(parameters, present.tolist()):
        if count == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def _collective_device() -> torch.device:
    """Where small tensors made for a collective must live: the current GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(world: World) -> None:
    """Wait until every rank got here (e.g. until rank 0 has written a file the others read)."""
    if world.size > 1:
        dist.barrier()
