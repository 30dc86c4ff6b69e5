"""MALMEN: hypernetwork shifts aggregated by least squares (Tan et al., 2024; ALGORITHMS.md).

Per token the hypernetwork proposes a value difference ``d_i = -lr[m] <k_i, k~_i> g~_i``; the
shift of module m solves ``min_S ||K S - D||^2 + e^lambda[m] ||S||^2``, i.e. the normal equation
``S = (K^T K + e^lambda I)^{-1} K^T D``. ``K^T K`` and ``K^T D`` are accumulated chunk by chunk,
so thousands of facts cost one ``d_in x d_in`` system per module.

Direction control (our extension, ``DirectionOptions``; also used by RLEdit and HiEdit): the ridge
may be the key second moment C0 instead of the identity (``ridge="covariance"``), or the shift may
be confined to the null space of the preserved keys (``nullspace``): with U the basis of C0's
near-null space (AlphaEdit's projector P = U U^T) and K_p^T K_p the keys of this editor's earlier
edits (``KeyState``), ``S = U Z`` with ``Z = (U^T (K^T K + K_p^T K_p) U + e^lambda I)^{-1} U^T K^T D``,
which is AlphaEdit's solution ``(P (K^T K + K_p^T K_p) + e^lambda I) S = P K^T D`` written in
U's coordinates (S lies in the range of P). Keys orthogonal to U keep their outputs exactly; the
keys of earlier edits are kept in the least-squares sense. Every edit adds its keys to K_p.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from ..distributed import current_world
from ..errors import HyperEditError
from ..lm import key_gram
from ._contrast import asked, subject_swaps
from ._hypernet import Cache, HyperEditor, HyperEditorConfig, RidgeFactor, ridge_solve_backward, token_slices
from ._nullspace import NullSpaceOptions, held_directions, null_space_basis
from .base import register_editor

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_JOINT = "__joint__"  # the accumulator's entry for ``joint``'s solve, kept for ``backward``
RIDGES = ("identity", "covariance")


@dataclass
class DirectionOptions(NullSpaceOptions):
    """How the least-squares shift is solved; every option may be changed on a trained checkpoint.

    ``solve_dtype``: precision of the accumulated normal equations. ``ridge``: the regulariser,
    ``identity`` (the paper's ``e^lambda ||S||^2``) or ``covariance`` (our extension:
    ``e^lambda tr(S^T C0 S)`` with C0 the key second moment on generic text, ``hyperedit.stats``,
    so shifts are cheap where the model's ordinary keys lie and the edit reaches unrelated text
    less). ``ridge_samples``: corpus texts for C0. ``nullspace`` (our extension, AlphaEdit's
    projector): shifts confined to the null space of C0 (``nullspace_threshold``,
    ``threshold_relative``) and kept off the keys of earlier edits; needs ``ridge="identity"``.
    ``contrast`` (our extension, ``_contrast``): per request, that many prompts with the subject
    of another request of the edit, whose keys the shift must keep (target 0, weight
    ``contrast_weight`` against an edit row); each costs a forward pass, no backward.
    ``contrast_memory``: in a stream, the subjects of that many earlier requests may also be
    swapped in (after the edit's own), so edits of one request get contrast rows too.
    ``contrast_subjects``: generic subjects swapped in after those (a fixed list, no data), so a
    small edit gets its ``contrast`` rows even when it has too few requests of its own.
    ``joint`` (our extension): one least-squares solve over the keys of all modules side by side
    instead of one per module (``solve_joint``); identity ridge only, one rank; trainable without
    ``nullspace`` and ``contrast``, with them an edit-time option.
    The learned ``lambda`` was fitted for the solve the editor was trained with.
    """

    solve_dtype: str = "float32"
    ridge: str = "identity"
    ridge_samples: int = 2000
    nullspace: bool = False
    contrast: int = 0
    contrast_weight: float = 1.0
    contrast_memory: int = 0
    contrast_subjects: list[str] | None = None
    joint: bool = False

    DIRECTION_RUNTIME = ("solve_dtype", "ridge", "ridge_samples", "nullspace", "nullspace_threshold",
                         "threshold_relative", "memory_weight", "contrast", "contrast_weight", "contrast_memory",
                         "contrast_subjects", "joint")

    def check_direction_options(self) -> None:
        self.check_nullspace_options()
        if self.solve_dtype not in _DTYPES:
            raise ValueError(f"solve_dtype must be one of {sorted(_DTYPES)}")
        if self.ridge not in RIDGES:
            raise ValueError(f"ridge must be one of {', '.join(RIDGES)}")
        if self.nullspace and self.ridge != "identity":
            raise ValueError("nullspace needs ridge=identity (the null space already sets the direction)")
        if self.ridge_samples < 1:
            raise ValueError("ridge_samples must be >= 1")
        if self.contrast < 0 or self.contrast_memory < 0 or not self.contrast_weight > 0:
            raise ValueError("contrast and contrast_memory must be >= 0, contrast_weight > 0")
        subjects = self.contrast_subjects
        if subjects is not None and (not isinstance(subjects, list)
                                     or not all(isinstance(x, str) and x.strip() for x in subjects)):
            raise ValueError("contrast_subjects must be a list of non-empty strings")
        if self.joint and self.ridge != "identity":
            raise ValueError("joint needs ridge=identity")


@dataclass
class MalmenConfig(HyperEditorConfig, DirectionOptions):
    """MALMEN settings: the hypernetwork's (``HyperEditorConfig``) and the solve's (``DirectionOptions``).

    ``small_edit_facts`` (our extension, edit time): an edit of N <= that many facts is solved with
    ceil(``small_edit_contrast`` / N) contrast rows per request (at least one) in place of
    ``contrast``, so a smaller edit gets more rows per fact (drawn from ``contrast_subjects`` when
    its own requests run out); larger edits use ``contrast`` as set. A few facts fill few
    directions of the solve, so their shifts reach every prompt asking the same relation; the rows
    keep those. 0 (the dataclass default): off; the shipped SmolLM2 editor turns it on with values
    chosen by measurement (docs/malmen.md, "Small edits").
    """

    small_edit_facts: int = 0
    small_edit_contrast: int = 0

    RUNTIME = (HyperEditorConfig.RUNTIME + DirectionOptions.DIRECTION_RUNTIME
               + ("small_edit_facts", "small_edit_contrast"))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_direction_options()
        if self.small_edit_facts < 0 or self.small_edit_contrast < 0:
            raise ValueError("small_edit_facts and small_edit_contrast must be >= 0")
        if self.joint and self.partition:
            raise ValueError("joint and partition exclude each other (one solve for all modules, or one per chunk)")


@register_editor("malmen", MalmenConfig, "hypernetwork shifts aggregated by least squares (meta-trained)",
                 needs_checkpoint=True, splittable=True, training="meta", warm_start=("malmen",), stateful=True)
class MalmenEditor(HyperEditor):
    """Massive editing: any number of facts in one least-squares aggregation per module."""

    config_class = MalmenConfig
    _said_no_swaps = False  # ``contrast`` found no swaps once and said so
    _said_joint = False  # a large edit was told of ``joint`` once
    _said_small = False  # a small edit was told of ``small_edit_facts`` once
    #: From this many facts in one edit the joint solve with shifts scaled by 0.6 measured better
    #: on both evaluation splits (1,024 facts and whole splits; docs/malmen.md, "One solve for all
    #: six modules"); below a few hundred the per-module default writes more. None: no hint (an
    #: editor it was not measured for).
    JOINT_HINT_FACTS: int | None = 1000

    def edit(self, lm, requests):
        hint = self.JOINT_HINT_FACTS
        if hint is not None and len(requests) >= hint and not self.config.joint and not self._said_joint:
            self._said_joint = True
            log.info("editing %d facts at once: --set joint=true --set shift_scale=0.6 measured better for MALMEN "
                     "at this scale on SmolLM2-135M (docs/malmen.md, 'One solve for all six modules')", len(requests))
        small = self.small_edit_config(len(requests))
        if small is None:
            return super().edit(lm, requests)
        if not self._said_small:
            self._said_small = True
            log.info("editing %d facts (<= small_edit_facts %d): contrast=%d rows per request "
                     "(--set small_edit_facts=0: off)", len(requests), self.config.small_edit_facts, small.contrast)
        config, self.config = self.config, small
        try:
            return super().edit(lm, requests)
        finally:
            self.config = config

    def small_edit_config(self, n_facts: int) -> MalmenConfig | None:
        """The config an edit of ``n_facts`` facts is solved with when ``small_edit_facts`` covers
        it (its contrast rows per request replaced), else None (the editor's own config)."""
        cfg = self.config
        if not cfg.small_edit_facts or n_facts > cfg.small_edit_facts:
            return None
        per_request = -(-cfg.small_edit_contrast // max(n_facts, 1)) if cfg.small_edit_contrast else 0
        return dataclasses.replace(cfg, contrast=per_request)

    def prepare(self, lm) -> None:
        """Load C0 (``ridge="covariance"`` or ``nullspace``; cached by ``hyperedit.stats``) and the
        null-space bases."""
        cfg = self.config
        if cfg.joint and current_world().size > 1:  # the rows stay on their rank; only sums are all-reduced
            raise HyperEditError("joint is not supported in a data-parallel edit; run it on one rank")
        if (cfg.ridge == "covariance" or cfg.nullspace) and getattr(self, "ridges", None) is None:
            from ..stats import key_second_moments

            self.ridges = key_second_moments(lm, self.module_names, n_samples=cfg.ridge_samples)
        if cfg.nullspace and getattr(self, "bases", None) is None:
            self.bases = {n: null_space_basis(c, cfg.nullspace_threshold, cfg.threshold_relative)
                          for n, c in self.ridges.items()}

    def _ridge(self, name: str) -> torch.Tensor | None:
        if self.config.ridge == "identity":
            return None
        ridges = getattr(self, "ridges", None)
        if ridges is None:
            raise RuntimeError("covariance ridge: call prepare(lm) before solving")
        return ridges[name].to(_DTYPES[self.config.solve_dtype])

    def _basis(self, name: str) -> torch.Tensor:
        bases = getattr(self, "bases", None)
        if bases is None:
            raise RuntimeError("nullspace: call prepare(lm) before solving")
        return bases[name]

    def ridge_trace(self, name: str) -> float:
        """tr(R) of module ``name``'s ridge matrix (d_in for the identity)."""
        ridge = self._ridge(name)
        return float(self.nets.net_for(name)[0].d_in if ridge is None else ridge.double().trace())

    def new_accumulator(self) -> dict:
        return {}

    def accumulate(self, acc: dict, name: str, keys: torch.Tensor, grads: torch.Tensor) -> None:
        """Add one chunk's ``K^T K`` and ``K^T D`` for module ``name`` (``joint``: keep its rows K, D)."""
        net, index = self.nets.net_for(name)
        dtype = _DTYPES[self.config.solve_dtype]
        if self.config.joint:
            rows = acc.setdefault(name, ([], [], []))  # keys, value differences, grams of rows to keep
            for part in token_slices(keys.shape[0], self.config.net_batch_size):
                rows[0].append(keys[part].to(dtype))
                rows[1].append(net.value_diffs(keys[part], grads[part], index).to(dtype))
            return
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

    def contrast_gram(self, lm, requests, names: list[str]) -> dict[str, torch.Tensor]:
        """``contrast``: ``contrast_weight * K_c^T K_c`` of the subject-swapped prompts per module
        in ``names`` (float64; forward passes in chunks of ``lm_batch_size``); empty when off."""
        cfg = self.config
        if not cfg.contrast or not names:
            return {}
        swaps = subject_swaps(requests, cfg.contrast, self.asked if cfg.contrast_memory else (),
                              cfg.contrast_subjects or ())
        if not swaps:
            if not self._said_no_swaps:  # once per editor: a stream of single edits
                self._said_no_swaps = True
                log.info("contrast: no subject swaps among these %d requests (they need subjects and "
                         "other prompt templates); solved without contrast rows", len(requests))
            return {}
        grams = key_gram(lm.adapter, [p for p, _, _ in swaps], [t for _, t, _ in swaps], names,
                         chunk_size=cfg.lm_batch_size, token=cfg.token, subjects=[s for _, _, s in swaps],
                         desc="contrast keys")
        return {name: cfg.contrast_weight * g for name, g in grams.items()}

    def remember_subjects(self, requests) -> None:
        """``contrast_memory``: keep the (template, subject) of the last that many requests edited."""
        keep = self.config.contrast_memory
        if self.config.contrast and keep:
            self.asked = (self.asked + asked(requests))[-keep:]

    def add_rows(self, acc: dict, grams: dict[str, torch.Tensor]) -> None:
        """Add rows with target 0 (their ``K^T K`` per module) to the systems in ``acc``; modules
        not in ``acc`` (HiEdit: not chosen) are skipped."""
        for name, gram in grams.items():
            if name in acc and self.config.joint:
                acc[name][2].append(gram)
            elif name in acc:
                acc[name][0].add_(gram.to(device=acc[name][0].device, dtype=acc[name][0].dtype))

    def finish(self, acc: dict) -> dict[str, torch.Tensor]:
        """Solve each module's normal equation; the factorisation is kept in ``acc`` for ``backward``."""
        if self.config.joint:
            return self.solve_joint(acc)
        shifts = {}
        for name, entry in list(acc.items()):
            net, index = self.nets.net_for(name)
            ktk, ktd = entry[0], entry[1]
            log_lambda = net.log_lambda[index].detach()
            if self.config.nullspace:
                U = self._basis(name).to(device=ktk.device, dtype=ktk.dtype)
                kp = self.keys.get(name)
                a = ktk if kp is None else ktk + self.config.memory_weight * kp.to(device=ktk.device, dtype=ktk.dtype)
                reduced = U.T @ a @ U
                factor = RidgeFactor(reduced, log_lambda)
                z = factor.solve(U.T @ ktd)
                acc[name] = [ktk, ktd, factor, (U, reduced, z)]
                shifts[name] = (U @ z).float()
            else:
                factor = RidgeFactor(ktk, log_lambda, self._ridge(name))
                acc[name] = [ktk, ktd, factor, None]
                shifts[name] = factor.solve(ktd).float()
        return shifts

    def solve_joint(self, acc: dict) -> dict[str, torch.Tensor]:
        """``joint``: the shifts of all modules from one least-squares problem,
        ``min sum_i ||sum_m k_mi^T S_m - sum_m d_mi||^2 + sum_m tr(S_m^T R_m S_m)``: a row's value
        differences are what the modules write in all, and a fact whose key collides with others' in
        one module can be written through another. R_m = e^lambda_m I plus, per module as in the
        per-module solve, the rows to keep (``contrast``) and, with ``nullspace``, the memory of
        earlier edits, in the coordinates of the null-space basis U_m (S_m = U_m Z_m).

        Solved in the rows' space (float64): with K~_m the keys (times U_m) and P_m = R_m^-1 K~_m^T,
        ``Z_m = P_m (sum_m K~_m P_m + I)^-1 T``, T the summed value differences. Every module's cache
        holds the same rows (the same token positions), so the rows line up."""
        cfg = self.config
        names = [n for n in acc if n != _JOINT]
        keys, kept, plain = {}, {}, not cfg.nullspace and not any(acc[n][2] for n in names)
        total, gram, solves, bases, ridges = None, None, {}, {}, {}
        for name in names:
            k = torch.cat(acc[name][0]).double()
            held = sum(g.to(device=k.device, dtype=torch.float64) for g in acc[name][2]) if acc[name][2] else None
            if cfg.nullspace:
                kept[name] = k.T @ k if held is None else k.T @ k + held  # what ``remember_keys`` adds to K_p
                memory = self.keys.get(name)
                if memory is not None:
                    memory = cfg.memory_weight * memory.to(device=k.device, dtype=torch.float64)
                    held = memory if held is None else held + memory
                U = self._basis(name).to(device=k.device, dtype=torch.float64)
                bases[name], k = U, k @ U
                held = None if held is None else U.T @ held @ U
            ridges[name] = self.learned_ridge(name)
            if held is None:  # R_m = e^lambda_m I
                solves[name] = k.T / ridges[name]
            else:  # R_m = held + e^lambda_m I, the per-module solve's factorisation
                net, index = self.nets.net_for(name)
                solves[name] = RidgeFactor(held, net.log_lambda[index].detach()).solve(k.T)
            keys[name] = k
            part = k @ solves[name]
            gram = part if gram is None else gram + part
            d = torch.cat(acc[name][1]).double()
            total = d if total is None else total + d
        gram.diagonal().add_(1.0)
        factor = torch.linalg.cholesky(gram)
        weights = torch.cholesky_solve(total, factor)
        shifts = {n: solves[n] @ weights for n in names}
        shifts = {n: bases[n] @ z if n in bases else z for n, z in shifts.items()}
        acc.clear()
        acc.update({n: [kept.get(n), None, None, None] for n in names})  # ``remember_keys`` reads entry 0
        acc[_JOINT] = (keys, ridges, factor, shifts) if plain else None
        return {n: shift.float() for n, shift in shifts.items()}

    def _joint_backward(self, cache: Cache, acc: dict, grad_shifts: dict[str, torch.Tensor],
                        replicated: bool) -> None:
        """``backward`` through ``solve_joint``. With G the rows' Gram (+ I), W = G^-1 T and
        S_m = K_m^T W / e^lambda_m: X = G^-1 sum_m K_m dL/dS_m / e^lambda_m is dL/dT, hence dL/dD_m
        for every module (T is their sum), and dL/dlambda_m = <K_m^T X - dL/dS_m, S_m>."""
        if acc.get(_JOINT) is None:
            raise HyperEditError("joint with nullspace or contrast is an edit-time option; train without them")
        keys, ridges, factor, shifts = acc[_JOINT]
        grads = {n: grad_shifts[n].double() for n in keys}
        x = torch.cholesky_solve(sum(keys[n] @ grads[n] / ridges[n] for n in keys), factor)
        for name in keys:  # the modules solved (HiEdit: those chosen)
            net, index = self.nets.net_for(name)
            if replicated:
                grad_lam = ((keys[name].T @ x - grads[name]) * shifts[name]).sum()
                (grad_lam.to(net.log_lambda.dtype) * net.log_lambda[index]).backward()
            k, g = cache[name]
            grad_d = x.to(k.dtype)
            for part in token_slices(k.shape[0], self.config.net_batch_size):
                (grad_d[part] * net.value_diffs(k[part], g[part], index)).sum().backward()

    def memory_fill(self, lm=None) -> dict[str, dict]:
        """``nullspace``: per module, how much of its null space the earlier edits' keys hold above the
        learned ridge ``e^lambda`` (``held_directions``; nothing where a module has no keys yet, e.g. a
        HiEdit candidate never written with ``memory_modules=chosen``); empty before the first edit.
        With ``lm`` the null space is prepared first, otherwise ``prepare(lm)`` must have run."""
        if not self.keys.kp or not self.config.nullspace:
            return {}
        if lm is not None:
            self.prepare(lm)
        fill = {}
        for name in self.module_names:
            kp, ridge = self.keys.get(name), self.learned_ridge(name)
            memory = None if kp is None else self.config.memory_weight * kp
            fill[name] = {**held_directions(self._basis(name), memory, ridge), "ridge": ridge}
        return fill

    def learned_ridge(self, name: str) -> float:
        """``e^lambda`` of module ``name`` (float64): the weight of its ridge in the solve."""
        net, index = self.nets.net_for(name)
        return float(net.log_lambda[index].detach().double().exp())

    def remember_keys(self, acc: dict, n_requests: int) -> None:
        """``nullspace``: add the keys of an edit (its accumulated ``K^T K``, contrast rows included) to K_p."""
        if not self.config.nullspace:
            return
        for name, entry in acc.items():
            if name != _JOINT:
                self.keys.add(name, entry[0])
        self.keys.n_edits += n_requests

    def backward(self, cache: Cache, acc: dict, shifts: dict[str, torch.Tensor],
                 grad_shifts: dict[str, torch.Tensor], replicated: bool = True) -> None:
        """Accumulate hypernetwork gradients of a loss whose gradient w.r.t. each shift is given.

        The solve is differentiated in closed form (reusing its factorisation; with ``nullspace``
        in U's coordinates, where the keys are K U and dL/dZ = U^T dL/dS); the hypernetwork is then
        re-run chunk by chunk with grad and ``<dL/dD, D_chunk>`` is backpropagated (no LM graph in
        memory). dL/dlambda depends only on the (all-reduced) sums, so in a data-parallel step one
        rank adds it (``replicated``); dL/dD is per token, each rank adds its share.
        """
        if self.config.joint:
            self._joint_backward(cache, acc, grad_shifts, replicated)
            return
        for name in self.module_names:
            keys, grads = cache[name]
            net, index = self.nets.net_for(name)
            ktk, _, factor, projected = acc[name]
            log_lambda = net.log_lambda[index].detach()
            if projected is None:
                grad_d, grad_lam = ridge_solve_backward(keys, ktk, shifts[name], grad_shifts[name], log_lambda,
                                                        self._ridge(name), factor)
            else:
                U, reduced, z = projected
                grad_d, grad_lam = ridge_solve_backward(keys.to(U.dtype) @ U, reduced, z,
                                                        U.T @ grad_shifts[name].to(U.dtype), log_lambda, None, factor)
            grad_d = grad_d.to(keys.dtype)
            if replicated:
                (grad_lam.to(net.log_lambda.dtype) * net.log_lambda[index]).backward()
            for part in token_slices(keys.shape[0], self.config.net_batch_size):
                d = net.value_diffs(keys[part], grads[part], index)
                (grad_d[part] * d).sum().backward()
