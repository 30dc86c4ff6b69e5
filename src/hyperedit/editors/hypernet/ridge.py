"""Ridge least squares, the aggregation of MALMEN, RLEdit, HiEdit (``low=malmen``) and UltraEdit.

The shift of a module solves ``min_S ||K S - D||^2 + e^lambda tr(S^T R S)``: the normal equation
``S = (K^T K + e^lambda R)^{-1} K^T D`` from the accumulated ``K^T K`` (d_in, d_in) and ``K^T D``
(d_in, d_out), with R the identity or a given SPD matrix (the key second moment C0). Meta-training
differentiates it in closed form (``ridge_solve_backward``), reusing the forward factorisation.
"""
from __future__ import annotations

import torch


def ridge_matrix(ktk: torch.Tensor, log_lambda: torch.Tensor, ridge: torch.Tensor | None = None) -> torch.Tensor:
    """M = K^T K + e^lambda R, with R the identity (``ridge`` None) or a given SPD matrix (e.g. C0)."""
    lam = log_lambda.to(ktk.dtype).exp()
    if ridge is None:
        return ktk + lam * torch.eye(ktk.shape[0], dtype=ktk.dtype, device=ktk.device)
    return ktk + lam * ridge.to(ktk.dtype)


def ridge_solve(ktk: torch.Tensor, ktd: torch.Tensor, log_lambda: torch.Tensor,
                ridge: torch.Tensor | None = None) -> torch.Tensor:
    """S = (K^T K + e^lambda R)^{-1} K^T D, from accumulated K^T K (d_in, d_in) and K^T D (d_in, d_out)."""
    return torch.linalg.solve(ridge_matrix(ktk, log_lambda, ridge), ktd)


class RidgeFactor:
    """A factorisation of M = K^T K + e^lambda R, reused by the forward solve and its backward.

    Cholesky (M is symmetric positive definite), falling back to LU when rounding makes the
    Cholesky factorisation fail.
    """

    def __init__(self, ktk: torch.Tensor, log_lambda: torch.Tensor, ridge: torch.Tensor | None = None):
        m = ridge_matrix(ktk, log_lambda.detach(), ridge)
        factor, info = torch.linalg.cholesky_ex(m)
        self.cholesky = int(info) == 0
        self.factor = factor if self.cholesky else torch.linalg.lu_factor(m)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        if self.cholesky:
            return torch.cholesky_solve(rhs, self.factor)
        return torch.linalg.lu_solve(*self.factor, rhs)


def ridge_solve_backward(keys: torch.Tensor, ktk: torch.Tensor, shift: torch.Tensor, grad_shift: torch.Tensor,
                         log_lambda: torch.Tensor, ridge: torch.Tensor | None = None,
                         factor: RidgeFactor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a loss L(S) through ``ridge_solve``: (dL/dD (n, d_out), dL/dlambda (scalar)).

    With M = K^T K + e^lambda R (symmetric) and X = M^{-1} dL/dS: dL/dD = K X and
    dL/dlambda = -e^lambda <X, R S>. ``factor``: the forward solve's ``RidgeFactor`` of M.
    """
    lam = log_lambda.to(ktk.dtype).exp()
    grad_shift = grad_shift.to(ktk.dtype)
    x = factor.solve(grad_shift) if factor is not None else torch.linalg.solve(ridge_matrix(ktk, log_lambda, ridge),
                                                                              grad_shift)
    shift = shift.to(ktk.dtype)
    ridge_shift = shift if ridge is None else ridge.to(ktk.dtype) @ shift
    return keys.to(ktk.dtype) @ x, -lam * (x * ridge_shift).sum()
