"""MEND-style editing with the MALMEN hypernetwork: shifts are sums of rank-1 terms.

``S = -lr[m] K~^T G~`` over every token of every request (ALGORITHMS.md). It shares everything
with MALMEN except the aggregation, which makes it the baseline that shows what least squares buys.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..base import register_editor
from .base import Cache, HyperEditor, token_slices
from .config import HyperEditorConfig


@dataclass
class SummedShifts:
    """What a MEND edit sums: the rank-1 terms of every token, per module."""

    shifts: dict[str, torch.Tensor] = field(default_factory=dict)

    def modules(self) -> list[str]:
        return list(self.shifts)

    def sums(self, names) -> list[torch.Tensor]:
        return [self.shifts[n] for n in names if n in self.shifts]

    def key_grams(self) -> dict[str, torch.Tensor]:
        return {}  # MEND keeps no memory of earlier keys


@dataclass
class MendConfig(HyperEditorConfig):
    """MEND settings (the same hypernetwork as MALMEN)."""


@register_editor("mend", MendConfig, "hypernetwork rank-1 shifts summed over facts (meta-trained)",
                 needs_checkpoint=True, splittable=True, training="meta", warm_start=("mend",), stateful=True)
class MendEditor(HyperEditor):
    """Summed rank-1 shifts from the shared hypernetwork."""

    config_class = MendConfig

    def new_accumulator(self) -> SummedShifts:
        return SummedShifts()

    def accumulate(self, acc: SummedShifts, name: str, keys: torch.Tensor, grads: torch.Tensor) -> None:
        net, index = self.nets.net_for(name)
        if name not in acc.shifts:
            acc.shifts[name] = torch.zeros(net.d_in, net.d_out, dtype=keys.dtype, device=keys.device)
        for part in token_slices(keys.shape[0], self.config.net_batch_size):
            acc.shifts[name] += net.rank_one_shift(keys[part], grads[part], index)

    def finish(self, acc: SummedShifts) -> dict[str, torch.Tensor]:
        return {name: shift.detach().clone() for name, shift in acc.shifts.items()}

    def backward(self, cache: Cache, acc: SummedShifts, shifts: dict[str, torch.Tensor],
                 grad_shifts: dict[str, torch.Tensor], replicated: bool = True) -> None:
        """dL/dS is also dL/d(each rank-1 term): re-run the hypernetwork chunk by chunk with grad."""
        for name in self.module_names:
            keys, grads = cache[name]
            net, index = self.nets.net_for(name)
            grad = grad_shifts[name].to(keys.dtype)
            for part in token_slices(keys.shape[0], self.config.net_batch_size):
                (grad * net.rank_one_shift(keys[part], grads[part], index)).sum().backward()
