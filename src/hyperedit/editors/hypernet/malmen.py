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
from dataclasses import dataclass, field

import torch

from ...distributed import current_world
from ...errors import HyperEditError
from ...lm import key_gram
from ..base import register_editor
from ..locate.nullspace import held_directions, null_space_basis
from .base import Cache, HyperEditor, token_slices
from .config import SOLVE_DTYPES, DirectionOptions, HyperEditorConfig
from .contrast import asked, subject_swaps
from .joint import JointRows, JointSolve, joint_backward, solve_joint
from .ridge import RidgeFactor, ridge_solve_backward

log = logging.getLogger(__name__)


@dataclass
class ProjectedSolve:
    """A ``nullspace`` solve in the coordinates of the null-space basis U: the reduced system
    ``U^T (K^T K + w K_p^T K_p) U`` and its solution Z (the shift is U Z)."""

    basis: torch.Tensor
    reduced: torch.Tensor
    z: torch.Tensor


@dataclass
class NormalEquation:
    """One module's least-squares system: ``K^T K`` (with the rows to keep) and ``K^T D``; after
    the solve, its factorisation (and with ``nullspace`` the reduced system) for ``backward``."""

    ktk: torch.Tensor
    ktd: torch.Tensor
    factor: RidgeFactor | None = None
    projected: ProjectedSolve | None = None


@dataclass
class MalmenAccumulator:
    """What a MALMEN edit sums before its solve: a ``NormalEquation`` per module, or with ``joint``
    every module's ``JointRows``; after a joint solve, the ``K^T K`` the edit adds to the memory
    (``kept``) and what its backward needs (``joint``)."""

    systems: dict[str, NormalEquation] = field(default_factory=dict)
    rows: dict[str, JointRows] = field(default_factory=dict)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    joint: JointSolve | None = None

    def modules(self) -> list[str]:
        return list(self.rows or self.systems)

    def sums(self, names) -> list[torch.Tensor]:
        """``K^T K`` and ``K^T D`` of each module (a joint edit's rows are not sums: none)."""
        return [t for n in names if n in self.systems for t in (self.systems[n].ktk, self.systems[n].ktd)]

    def key_grams(self) -> dict[str, torch.Tensor]:
        return dict(self.kept) if self.rows else {n: system.ktk for n, system in self.systems.items()}


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
            from ...stats import key_second_moments

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
        return ridges[name].to(SOLVE_DTYPES[self.config.solve_dtype])

    def basis(self, name: str) -> torch.Tensor:
        """U of module ``name`` (``nullspace``; ``prepare`` computes it)."""
        bases = getattr(self, "bases", None)
        if bases is None:
            raise RuntimeError("nullspace: call prepare(lm) before solving")
        return bases[name]

    def ridge_trace(self, name: str) -> float:
        """tr(R) of module ``name``'s ridge matrix (d_in for the identity)."""
        ridge = self._ridge(name)
        return float(self.nets.net_for(name)[0].d_in if ridge is None else ridge.double().trace())

    def new_accumulator(self) -> MalmenAccumulator:
        return MalmenAccumulator()

    def accumulate(self, acc: MalmenAccumulator, name: str, keys: torch.Tensor, grads: torch.Tensor) -> None:
        """Add one chunk's ``K^T K`` and ``K^T D`` for module ``name`` (``joint``: keep its rows K, D)."""
        net, index = self.nets.net_for(name)
        dtype = SOLVE_DTYPES[self.config.solve_dtype]
        if self.config.joint:
            rows = acc.rows.setdefault(name, JointRows())
            for part in token_slices(keys.shape[0], self.config.net_batch_size):
                rows.keys.append(keys[part].to(dtype))
                rows.diffs.append(net.value_diffs(keys[part], grads[part], index).to(dtype))
            return
        if name not in acc.systems:
            acc.systems[name] = NormalEquation(torch.zeros(net.d_in, net.d_in, dtype=dtype, device=keys.device),
                                               torch.zeros(net.d_in, net.d_out, dtype=dtype, device=keys.device))
        ktk, ktd = acc.systems[name].ktk, acc.systems[name].ktd
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

    def add_rows(self, acc: MalmenAccumulator, grams: dict[str, torch.Tensor]) -> None:
        """Add rows with target 0 (their ``K^T K`` per module) to the systems in ``acc``; modules
        not in ``acc`` (HiEdit: not chosen) are skipped."""
        for name, gram in grams.items():
            if name in acc.rows and self.config.joint:
                acc.rows[name].kept.append(gram)
            elif name in acc.systems:
                ktk = acc.systems[name].ktk
                ktk.add_(gram.to(device=ktk.device, dtype=ktk.dtype))

    def finish(self, acc: MalmenAccumulator) -> dict[str, torch.Tensor]:
        """Solve each module's normal equation (``joint``: one for all, ``joint.solve_joint``); the
        factorisation is kept in ``acc`` for ``backward``."""
        if self.config.joint:
            shifts, acc.kept, acc.joint = solve_joint(self, acc.rows)
            return {n: shift.float() for n, shift in shifts.items()}
        shifts = {}
        for name, system in acc.systems.items():
            net, index = self.nets.net_for(name)
            ktk, ktd = system.ktk, system.ktd
            log_lambda = net.log_lambda[index].detach()
            if self.config.nullspace:
                U = self.basis(name).to(device=ktk.device, dtype=ktk.dtype)
                kp = self.keys.get(name)
                a = ktk if kp is None else ktk + self.config.memory_weight * kp.to(device=ktk.device, dtype=ktk.dtype)
                reduced = U.T @ a @ U
                factor = RidgeFactor(reduced, log_lambda)
                z = factor.solve(U.T @ ktd)
                system.factor, system.projected = factor, ProjectedSolve(U, reduced, z)
                shifts[name] = (U @ z).float()
            else:
                system.factor = RidgeFactor(ktk, log_lambda, self._ridge(name))
                shifts[name] = system.factor.solve(ktd).float()
        return shifts

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
            fill[name] = {**held_directions(self.basis(name), memory, ridge), "ridge": ridge}
        return fill

    def learned_ridge(self, name: str) -> float:
        """``e^lambda`` of module ``name`` (float64): the weight of its ridge in the solve."""
        net, index = self.nets.net_for(name)
        return float(net.log_lambda[index].detach().double().exp())

    def remember_keys(self, grams: dict[str, torch.Tensor], n_requests: int) -> None:
        """``nullspace``: add the keys of an edit (its accumulated ``K^T K``, contrast rows included) to K_p."""
        if not self.config.nullspace:
            return
        for name, gram in grams.items():
            self.keys.add(name, gram)
        self.keys.n_edits += n_requests

    def backward(self, cache: Cache, acc: MalmenAccumulator, shifts: dict[str, torch.Tensor],
                 grad_shifts: dict[str, torch.Tensor], replicated: bool = True) -> None:
        """Accumulate hypernetwork gradients of a loss whose gradient w.r.t. each shift is given.

        The solve is differentiated in closed form (reusing its factorisation; with ``nullspace``
        in U's coordinates, where the keys are K U and dL/dZ = U^T dL/dS); the hypernetwork is then
        re-run chunk by chunk with grad and ``<dL/dD, D_chunk>`` is backpropagated (no LM graph in
        memory). dL/dlambda depends only on the (all-reduced) sums, so in a data-parallel step one
        rank adds it (``replicated``); dL/dD is per token, each rank adds its share.
        """
        if self.config.joint:
            joint_backward(self, cache, acc.joint, grad_shifts, replicated)
            return
        for name in self.module_names:
            keys, grads = cache[name]
            net, index = self.nets.net_for(name)
            system = acc.systems[name]
            ktk, factor, projected = system.ktk, system.factor, system.projected
            log_lambda = net.log_lambda[index].detach()
            if projected is None:
                grad_d, grad_lam = ridge_solve_backward(keys, ktk, shifts[name], grad_shifts[name], log_lambda,
                                                        self._ridge(name), factor)
            else:
                U, reduced, z = projected.basis, projected.reduced, projected.z
                grad_d, grad_lam = ridge_solve_backward(keys.to(U.dtype) @ U, reduced, z,
                                                        U.T @ grad_shifts[name].to(U.dtype), log_lambda, None, factor)
            grad_d = grad_d.to(keys.dtype)
            if replicated:
                (grad_lam.to(net.log_lambda.dtype) * net.log_lambda[index]).backward()
            for part in token_slices(keys.shape[0], self.config.net_batch_size):
                d = net.value_diffs(keys[part], grads[part], index)
                (grad_d[part] * d).sum().backward()
