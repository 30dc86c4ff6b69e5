"""Data parallelism on PyTorch's own engine (torchrun, ``torch.distributed``; gloo on CPU, nccl on GPU).

``world``: which rank this process is, sharding of the facts, sum-reductions of accumulators.
``launch``: ``--nproc N`` re-runs the same command under torchrun.
"""
from .world import (World, all_reduce_floats, all_reduce_gradients_, all_reduce_sum_, barrier, current_world,
                    init_from_environment, leave_process_group, shard)

__all__ = ["World", "all_reduce_floats", "all_reduce_gradients_", "all_reduce_sum_", "barrier", "current_world",
           "init_from_environment", "leave_process_group", "shard"]
