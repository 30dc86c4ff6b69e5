"""MALMEN: hypernetwork shifts aggregated by least squares (Tan et al., 2024; ALGORITHMS.md).

Per token the hypernetwork proposes a value difference ``d_i = -lr[m] <k_i, k~_i> g~_i``; the
shift of module m solves ``min_S ||K S - D||^2 + e^lambda[m] ||S||^2``, i.e. the normal equation
``S = (K^T K + e^lambda I)^{-1} K^T D``. ``K^T K`` and ``K^T D`` are accumulated chunk by chunk,
so thousands of facts cost one ``d_in x d_in`` system per module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._hypernet import Cache, HyperEditor, HyperEditorConfig, RidgeFactor, ridge_solve_backward, token_slices
from .base import register_editor

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
RIDGES = ("identity", "covariance")


@dataclass
class MalmenConfig(HyperEditorConfig):
    """MALMEN settings; ``solve_dtype`` is the precision of the accumulated normal equations.

    ``ridge``: the regulariser of the solve, ``identity`` (the paper's ``e^lambda ||S||^2``) or
    ``covariance`` (our extension: ``e^lambda tr(S^T C0 S)`` with C0 the key second moment on
    generic text, ``hyperedit.stats``, so shifts are cheap where the model's ordinary keys lie
    and the edit reaches unrelated text less). ``ridge_samples``: corpus texts for C0.
    """

    solve_dtype: str = "float32"
    ridge: str = "identity"
    ridge_samples: int = 2000

    RUNTIME = ("lm_batch_size", "net_batch_size", "shift_scale", "solve_dtype")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solve_dtype not in _DTYPES:
            raise ValueError(f"solve_dtype must be one of {sorted(_DTYPES)}")
        if self.ridge not in RIDGES:
            raise ValueError(f"ridge must be one of {', '.join(RIDGES)}")


@register_editor("malmen", MalmenConfig, "hypernetwork shifts aggregated by least squares (meta-trained)",
                 needs_checkpoint=True)
class MalmenEditor(HyperEditor):
    """Massive editing: any number of facts in one least-squares aggregation per module."""

    config_class = MalmenConfig

    def prepare(self, lm) -> None:
        """Load the ridge matrices C0 (``ridge="covariance"``; cached by ``hyperedit.stats``)."""
        if self.config.ridge == "covariance" and getattr(self, "ridges", None) is None:
            from ..stats import key_second_moments

            self.ridges = key_second_moments(lm, self.module_names, n_samples=self.config.ridge_samples)

    def _ridge(self, name: str) -> torch.Tensor | None:
        if self.config.ridge == "identity":
            return None
        ridges = getattr(self, "ridges", None)
        if ridges is None:
            raise RuntimeError("covariance ridge: call prepare(lm) before solving")
        return ridges[name].to(_DTYPES[self.config.solve_dtype])

    def ridge_trace(self, name: str) -> float:
        """tr(R) of module ``name``'s ridge matrix (d_in for the identity)."""
        ridge = self._ridge(name)
        return float(self.nets.net_for(name)[0].d_in if ridge is None else ridge.double().trace())

    def new_accumulator(self) -> dict:
        return {}

    def accumulate(self, acc: dict, name: str, keys: torch.Tensor, grads: torch.Tensor) -> None:
        """Add one chunk's ``K^T K`` and ``K^T D`` for module ``name``."""
        net, index = self.nets.net_for(name)
        dtype = _DTYPES[self.config.solve_dtype]
        if name not in acc:
            acc[name] = [torch.zeros(net.d_in, net.d_in, dtype=dtype, device=keys.device),
                         torch.zeros(net.d_in, net.d_out, dtype=dtype, device=keys.device), None]
        ktk, ktd, _ = acc[name]
        for part in token_slices(keys.shape[0], self.config.net_batch_size):
            k = keys[part]
            d = net.value_diffs(k, grads[part], index)
            k = k.to(dtype)
            ktk.addmm_(k.t(), k)
            ktd.addmm_(k.t(), d.to(dtype))

    def finish(self, acc: dict) -> dict[str, torch.Tensor]:
        """Solve each module's normal equation; the factorisation is kept in ``acc`` for ``backward``."""
        shifts = {}
        for name, entry in list(acc.items()):
            net, index = self.nets.net_for(name)
            ktk, ktd = entry[0], entry[1]
            factor = RidgeFactor(ktk, net.log_lambda[index].detach(), self._ridge(name))
            acc[name] = [ktk, ktd, factor]
            shifts[name] = factor.solve(ktd).float()
        return shifts

    def backward(self, cache: Cache, acc: dict, shifts: dict[str, torch.Tensor],
                 grad_shifts: dict[str, torch.Tensor], replicated: bool = True) -> None:
        """Accumulate hypernetwork gradients of a loss whose gradient w.r.t. each shift is given.

        The solve is differentiated in closed form (reusing its factorisation); the hypernetwork
        is then re-run chunk by chunk with grad and ``<dL/dD, D_chunk>`` is backpropagated (no LM
        graph in memory). dL/dlambda depends only on the (all-reduced) sums, so in a data-parallel
        step one rank adds it (``replicated``); dL/dD is per token, each rank adds its share.
        """
        for name in self.module_names:
            keys, grads = cache[name]
            net, index = self.nets.net_for(name)
            ktk, _, factor = acc[name]
            grad_d, grad_lam = ridge_solve_backward(keys, ktk, shifts[name], grad_shifts[name],
                                                    net.log_lambda[index].detach(), self._ridge(name), factor)
            grad_d = grad_d.to(keys.dtype)
            if replicated:
                (grad_lam.to(net.log_lambda.dtype) * net.log_lambda[index]).backward()
            for part in token_slices(keys.shape[0], self.config.net_batch_size):
                d = net.value_diffs(keys[part], grads[part], index)
                (grad_d[part] * d).sum().backward()
