"""The closed-form writes of the locate-then-edit editors, and how much of a plan they realise.

Every solver here is a linear map of the residuals, ``S = Q R`` with ``Q`` (d_in, n) depending
only on the keys, which is what MetaKE differentiates through. ``spread_and_solve`` is MEMIT's
layer loop over the edited layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ...delta import EditDelta
from ...models import LoadedModel
from ...requests import EditRequest
from .base import keys_and_hidden


# ----- closed-form solvers: S = Q R ---------------------------------------------------------
def memit_map(K: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """Q (d_in, n) with S = Q R solving min ||K S - R||^2 + lam tr(S^T C S):
    (lam C + K^T K) S = K^T R (MEMIT's normal equations)."""
    K, C = K.double(), C.double()
    return torch.linalg.solve(lam * C + K.T @ K, K.T)


def alphaedit_map(K: torch.Tensor, P: torch.Tensor, Kp_cov: torch.Tensor | None, l2: float) -> torch.Tensor:
    """Q (d_in, n) with S = Q R solving (P (K^T K + K_p^T K_p) + l2 I) S = P K^T R (AlphaEdit).

    S lies in the range of P, so keys in P's null space (preserved knowledge) keep their outputs."""
    K, P = K.double(), P.double()
    A = K.T @ K + (Kp_cov.double() if Kp_cov is not None else 0.0)
    eye = torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    return torch.linalg.solve(P @ A + l2 * eye, P @ K.T)


def proxy_grad(Q: torch.Tensor, grad_S: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """dL/dR (n, d_out) from dL/dS (d_in, d_out) through the linear solver map S = Q (scale * R)
    (``scale``: the adapter's ``output_scale``, None for 1)."""
    grad_R = Q.T @ grad_S.to(Q.dtype)
    return grad_R if scale is None else grad_R * scale.to(grad_R)


# ----- spreading the residual over the edited layers -------------------------------------------
@dataclass
class SolveRecord:
    """What the multi-layer solve used at each layer (for diagnostics and MetaKE's proxy)."""

    keys: dict[str, torch.Tensor] = field(default_factory=dict)  # (n, d_in)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # Q (d_in, n), float64
    residuals: dict[str, torch.Tensor] = field(default_factory=dict)  # R_l (n, d_out)
    scales: dict[str, torch.Tensor | None] = field(default_factory=dict)  # output_scale of R_l, None for 1


def spread_and_solve(lm: LoadedModel, requests: Sequence[EditRequest], z: torch.Tensor, modules: Sequence[str],
                     z_layer: int, prefixes: Sequence[str], make_map: Callable[[str, torch.Tensor], torch.Tensor],
                     batch_size: int = 64) -> tuple[dict[str, torch.Tensor], SolveRecord]:
    """MEMIT's layer loop: at layer i, R_i = (z - h_now) / (layers left), S_i = Q_i R_i, applied
    before the next layer's keys are read. The model is restored exactly before returning.

    Where the module's output is normalised before it joins the residual stream (Gemma), R_i is
    first mapped to the module-output change that makes it (``ModelAdapter.output_scale``)."""
    shifts, record, applied = {}, SolveRecord(), []
    try:
        for i, name in enumerate(modules):
            K, h = keys_and_hidden(lm, requests, name, prefixes, z_layer, batch_size)
            R = (z.to(h) - h) / (len(modules) - i)
            Q = make_map(name, K)
            scale = lm.adapter.output_scale(name, K)
            S = (Q @ (R if scale is None else R * scale).double()).to(torch.float32)
            shifts[name] = S
            record.keys[name], record.maps[name], record.residuals[name] = K, Q, R
            record.scales[name] = scale
            if i + 1 < len(modules):
                applied.append(EditDelta.from_in_out(lm.adapter, {name: S}, editor="partial").apply(lm.model))
    finally:
        for delta in reversed(applied):
            delta.revert(lm.model)
    return shifts, record


@torch.no_grad()
def realised_residual(lm: LoadedModel, requests: Sequence[EditRequest], shifts: dict[str, torch.Tensor],
                      z_layer: int, batch_size: int = 64) -> torch.Tensor:
    """Change (n, d) of block ``z_layer``'s output at the last subject token (bare prompt) that the
    shifts actually produce."""
    any_module = next(iter(shifts))
    _, before = keys_and_hidden(lm, requests, any_module, [""], z_layer, batch_size)
    with EditDelta.from_in_out(lm.adapter, shifts, editor="diagnostic").applied(lm.model):
        _, after = keys_and_hidden(lm, requests, any_module, [""], z_layer, batch_size)
    return after - before


def truncation_summary(planned: torch.Tensor, realised: torch.Tensor) -> dict:
    """Per request: realised fraction <dh, R>/||R||^2 and relative miss ||dh - R|| / ||R||."""
    norm2 = (planned * planned).sum(-1).clamp_min(1e-12)
    frac = (realised * planned).sum(-1) / norm2
    miss = (realised - planned).norm(dim=-1) / norm2.sqrt()
    active = planned.norm(dim=-1) > 0
    f, m = frac[active], miss[active]
    return {
        "realised_fraction": [round(float(x), 4) for x in frac],
        "relative_miss": [round(float(x), 4) for x in miss],
        "planned_norm": [round(float(x), 3) for x in planned.norm(dim=-1)],
        "mean_realised_fraction": float(f.mean()) if len(f) else None,
        "median_realised_fraction": float(f.median()) if len(f) else None,
        "mean_relative_miss": float(m.mean()) if len(m) else None,
        "n_planned": int(active.sum()),
    }
