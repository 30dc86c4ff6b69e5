"""A running mean / standard-deviation normaliser whose statistics are buffers (saved with the state)."""
from __future__ import annotations

import torch
from torch import nn

from ..distributed import World, all_reduce_floats, all_reduce_sum_


class RunningMeanStd(nn.Module):
    """Standardise features with the mean and std of everything passed to ``update``.

    Statistics are kept in float64 (count, mean, sum of squared deviations) and merged batch by
    batch with Chan's parallel formula, so the result does not depend on how data is chunked.
    Before any update (or after a single row) it is the identity: mean 0, std 1.
    """

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.size = size
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(size, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor, world: World | None = None) -> None:
        """Merge the rows of ``x`` (n, size) into the statistics.

        With a data-parallel ``world`` each rank passes its share of the rows and every rank merges
        the statistics of all of them (count, sum and squared deviations all-reduced).
        """
        world = world or World()
        x = x.detach().reshape(-1, self.size).to(torch.float64)
        n, total_sum = all_reduce_floats([x.shape[0]], world)[0], x.sum(0)
        all_reduce_sum_([total_sum], world)
        if n == 0:
            return
        batch_mean = total_sum / n
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        all_reduce_sum_([batch_m2], world)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta ** 2 * (self.count * n / total)
        self.count.fill_(total)

    @property
    def std(self) -> torch.Tensor:
        if self.count < 2:
            return torch.ones_like(self.m2)
        return (self.m2 / (self.count - 1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        return (x - mean) / std.clamp_min(self.eps)
