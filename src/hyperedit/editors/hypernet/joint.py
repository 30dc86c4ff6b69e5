"""``joint`` (our extension, MALMEN's option): one least-squares solve for the shifts of all modules.

``min sum_i ||sum_m k_mi^T S_m - sum_m d_mi||^2 + sum_m tr(S_m^T R_m S_m)``: a row's value
differences are what the modules write in all, and a fact whose key collides with others' in one
module can be written through another. R_m = e^lambda_m I plus, per module as in the per-module
solve, the rows to keep (``contrast``) and, with ``nullspace``, the memory of earlier edits, in the
coordinates of the null-space basis U_m (S_m = U_m Z_m). The edit keeps every module's rows
(``JointRows``), not only their sums, so it runs on one rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import HyperEditError
from .base import Cache, token_slices
from .ridge import RidgeFactor


@dataclass
class JointRows:
    """One module's rows of a joint edit: keys, value differences and the grams of rows to keep."""

    keys: list[torch.Tensor] = field(default_factory=list)
    diffs: list[torch.Tensor] = field(default_factory=list)
    kept: list[torch.Tensor] = field(default_factory=list)


@dataclass
class JointSolve:
    """What ``joint_backward`` needs of a solve without rows to keep or memory: the keys K_m, the
    ridges e^lambda_m, the Cholesky factor of the rows' Gram (+ I) and the shifts."""

    keys: dict[str, torch.Tensor]
    ridges: dict[str, float]
    factor: torch.Tensor
    shifts: dict[str, torch.Tensor]


def solve_joint(editor, rows: dict[str, JointRows]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                              JointSolve | None]:
    """(shifts (float64), ``K^T K`` per module for the memory (``nullspace`` only), ``JointSolve``
    (None with rows to keep or ``nullspace``: training refuses those)) of a MALMEN ``editor``.

    Solved in the rows' space (float64): with K~_m the keys (times U_m) and P_m = R_m^-1 K~_m^T,
    ``Z_m = P_m (sum_m K~_m P_m + I)^-1 T``, T the summed value differences. Every module's cache
    holds the same rows (the same token positions), so the rows line up."""
    cfg = editor.config
    names = list(rows)
    keys, kept, plain = {}, {}, not cfg.nullspace and not any(rows[n].kept for n in names)
    total, gram, solves, bases, ridges = None, None, {}, {}, {}
    for name in names:
        k = torch.cat(rows[name].keys).double()
        held = sum(g.to(device=k.device, dtype=torch.float64) for g in rows[name].kept) if rows[name].kept else None
        if cfg.nullspace:
            kept[name] = k.T @ k if held is None else k.T @ k + held  # what ``remember_keys`` adds to K_p
            memory = editor.keys.get(name)
            if memory is not None:
                memory = cfg.memory_weight * memory.to(device=k.device, dtype=torch.float64)
                held = memory if held is None else held + memory
            U = editor.basis(name).to(device=k.device, dtype=torch.float64)
            bases[name], k = U, k @ U
            held = None if held is None else U.T @ held @ U
        ridges[name] = editor.learned_ridge(name)
        if held is None:  # R_m = e^lambda_m I
            solves[name] = k.T / ridges[name]
        else:  # R_m = held + e^lambda_m I, the per-module solve's factorisation
            net, index = editor.nets.net_for(name)
            solves[name] = RidgeFactor(held, net.log_lambda[index].detach()).solve(k.T)
        keys[name] = k
        part = k @ solves[name]
        gram = part if gram is None else gram + part
        d = torch.cat(rows[name].diffs).double()
        total = d if total is None else total + d
    gram.diagonal().add_(1.0)
    factor = torch.linalg.cholesky(gram)
    weights = torch.cholesky_solve(total, factor)
    shifts = {n: solves[n] @ weights for n in names}
    shifts = {n: bases[n] @ z if n in bases else z for n, z in shifts.items()}
    return shifts, kept, JointSolve(keys, ridges, factor, shifts) if plain else None


def joint_backward(editor, cache: Cache, solve: JointSolve | None, grad_shifts: dict[str, torch.Tensor],
                   replicated: bool) -> None:
    """``backward`` through ``solve_joint``. With G the rows' Gram (+ I), W = G^-1 T and
    S_m = K_m^T W / e^lambda_m: X = G^-1 sum_m K_m dL/dS_m / e^lambda_m is dL/dT, hence dL/dD_m
    for every module (T is their sum), and dL/dlambda_m = <K_m^T X - dL/dS_m, S_m>."""
    if solve is None:
        raise HyperEditError("joint with nullspace or contrast is an edit-time option; train without them")
    keys, ridges, factor, shifts = solve.keys, solve.ridges, solve.factor, solve.shifts
    grads = {n: grad_shifts[n].double() for n in keys}
    x = torch.cholesky_solve(sum(keys[n] @ grads[n] / ridges[n] for n in keys), factor)
    for name in keys:  # the modules solved (HiEdit: those chosen)
        net, index = editor.nets.net_for(name)
        if replicated:
            grad_lam = ((keys[name].T @ x - grads[name]) * shifts[name]).sum()
            (grad_lam.to(net.log_lambda.dtype) * net.log_lambda[index]).backward()
        k, g = cache[name]
        grad_d = x.to(k.dtype)
        for part in token_slices(k.shape[0], editor.config.net_batch_size):
            (grad_d[part] * net.value_diffs(k[part], g[part], index)).sum().backward()
