"""HiEdit's high-level policy: which of the candidate modules one edit changes.

Per shape group an encoder (normaliser, ``Linear(d_in + d_out -> hidden)``, ReLU, per-module
scale/shift) reads each module's ``[k; g]`` rows, averaged over tokens; the module codes are
concatenated in candidate order and a gate ``Linear(hidden * n_modules -> n_modules)`` with a
sigmoid scores every module. The top ``k`` scores give a hard 0/1 mask; ``straight_through``
makes it differentiable: forward value = the hard mask, gradient = the gate's.
"""
from __future__ import annotations

import torch
from torch import nn

from ..distributed import World
from .normalizer import RunningMeanStd
from .shapes import group_by_shape, shape_of


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Hard 0/1 mask of the ``k`` largest entries of ``scores`` (n,) (ties: lowest index first)."""
    k = max(0, min(int(k), scores.shape[-1]))
    mask = torch.zeros_like(scores)
    if k:
        mask[torch.topk(scores.detach(), k, sorted=False).indices] = 1.0
    return mask


def straight_through(mask: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``(mask - gate).detach() + gate``: the value of ``mask``, the gradient of ``gate``."""
    return (mask - gate).detach() + gate


class ShapeEncoder(nn.Module):
    """Encoder of the modules of one weight shape: ``[k; g]`` (n, d_in + d_out) -> (hidden,) per module."""

    def __init__(self, d_in: int, d_out: int, hidden: int, n_modules: int, generator: torch.Generator | None = None):
        super().__init__()
        self.normalizer = RunningMeanStd(d_in + d_out)
        self.linear = nn.Linear(d_in + d_out, hidden)
        if generator is not None:
            with torch.no_grad():
                bound = (d_in + d_out) ** -0.5
                self.linear.weight.uniform_(-bound, bound, generator=generator)
                self.linear.bias.zero_()
        self.scale = nn.Parameter(torch.ones(n_modules, hidden))
        self.shift = nn.Parameter(torch.zeros(n_modules, hidden))

    def forward(self, features: torch.Tensor, module_index: int) -> torch.Tensor:
        code = torch.relu(self.linear(self.normalizer(features))).mean(0)
        return self.scale[module_index] * code + self.shift[module_index]


class LayerPolicy(nn.Module):
    """Gate over ``shapes`` (candidate module -> (d_in, d_out), in candidate order); keeps ``k``."""

    def __init__(self, shapes: dict[str, tuple[int, int]], k: int, hidden: int = 256, seed: int | None = None):
        super().__init__()
        if not 1 <= k <= len(shapes):
            raise ValueError(f"k must be between 1 and the number of candidate modules ({len(shapes)})")
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.k, self.hidden = int(k), int(hidden)
        self.module_shapes, self.route, counts = group_by_shape(shapes)
        self.encoders = nn.ModuleDict({key: ShapeEncoder(*shape_of(key), hidden, count, generator)
                                       for key, count in counts.items()})
        self.gate = nn.Linear(hidden * len(shapes), len(shapes))
        if generator is not None:
            with torch.no_grad():
                bound = (hidden * len(shapes)) ** -0.5
                self.gate.weight.uniform_(-bound, bound, generator=generator)
                self.gate.bias.zero_()

    @property
    def module_names(self) -> list[str]:
        return list(self.module_shapes)

    def update_normalizers(self, features: dict[str, torch.Tensor], world: World | None = None) -> None:
        """Merge each module's ``[k; g]`` rows into its shape group's statistics (with a
        data-parallel ``world``, every rank's rows)."""
        for name in self.module_names:
            key, _ = self.route[name]
            self.encoders[key].normalizer.update(features[name], world)

    def scores(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Gate values in (0, 1), one per candidate module: ``features[name]`` is (n_tokens, d_in + d_out)."""
        codes = []
        for name in self.module_names:
            key, index = self.route[name]
            codes.append(self.encoders[key](features[name].float(), index))
        return torch.sigmoid(self.gate(torch.cat(codes)))

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask with straight-through gradient, gate values), both (n_modules,)."""
        gate = self.scores(features)
        return straight_through(top_k_mask(gate, self.k), gate), gate
