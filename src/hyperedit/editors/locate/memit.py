"""MEMIT: mass-editing memory in a transformer (locate-then-edit, closed form).

Per request a target residual-stream vector at the last edited layer (``targets``), then layer by
layer the remaining residual is spread and written by S = (lam C + K^T K)^{-1} K^T R, with C the
key second moment over a generic corpus (``hyperedit.stats``). With one layer this is the
single-layer (ROME-like, least-squares) special case. The model is unchanged on return.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...models import LoadedModel
from ..base import register_editor
from .base import LocateConfig
from .editor import LocateEditor
from .solve import memit_map


@dataclass
class MEMITConfig(LocateConfig):
    """MEMIT options: shared locate-then-edit options plus the covariance weight ``lam``."""

    lam: float = 1500.0  # weight of C = E[k k^T] against the edit keys (MEMIT's mom2_update_weight)
    diagnostics: bool = True  # measure how much of each planned residual the update realises

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam < 0:
            raise ValueError("lam must be non-negative")


@register_editor("memit", MEMITConfig, "MEMIT: target vectors + multi-layer least-squares closed form")
class MEMIT(LocateEditor):
    """MEMIT (Meng et al. 2023) over the adapter's MLP output projections."""

    def solver_map(self, lm: LoadedModel, name: str, K: torch.Tensor) -> torch.Tensor:
        return memit_map(K, self.stats(lm)[name].to(K.device), self.config.lam)
