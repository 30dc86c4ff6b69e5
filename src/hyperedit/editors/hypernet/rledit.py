"""RLEdit: the MALMEN hypernetwork trained over editing trajectories (lifelong editing).

Editing is MALMEN's (keys and value gradients on the current model, least-squares shifts); what
differs is the training (``hyperedit.training.trajectory``): losses with memory backtracking on a
model that carries every earlier shift of the trajectory, plus a shift-norm regulariser. This
editor implements the trajectory protocol the trainer talks to (``protocols.TrajectoryTrainable``,
``Proposal``), which HiEdit implements as well.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import register_editor
from ..protocols import Proposal
from .base import cache_requests
from .malmen import MalmenConfig, MalmenEditor


@dataclass
class RLEditConfig(MalmenConfig):
    """RLEdit settings: MALMEN's hypernetwork (paper: rank 1024, 4 blocks; smaller default for CPU)
    and its solve, including the direction control (``DirectionOptions``: covariance ridge,
    null-space projection) and ``online_norm``, our extensions."""


@register_editor("rledit", RLEditConfig, "MALMEN hypernetwork trained over lifelong editing trajectories",
                 needs_checkpoint=True, training="trajectory", warm_start=("malmen",), stateful=True)
class RLEditEditor(MalmenEditor):
    """MALMEN-style editing with a hypernetwork trained by ``training.trajectory``."""

    config_class = RLEditConfig
    JOINT_HINT_FACTS = None  # the joint solve's large-edit setting was measured for MALMEN only

    # ----- trajectory protocol (parameters, groups and ``load_weights``: ``HyperEditor``'s) -----
    def cache(self, lm, requests) -> dict:
        """Keys and value gradients of every edited module on the model as it is now."""
        return cache_requests(lm.adapter, list(requests), self.module_names, self.config.token)

    def begin_trajectory(self) -> None:
        """A trajectory starts on the unedited model: forget the keys of earlier edits."""
        self.keys.reset()

    def contrast_rows(self, lm, requests) -> dict[str, torch.Tensor]:
        """``contrast``: the rows of ``requests`` on the model as it is now (``contrast_gram``), for
        ``trajectory_propose``; empty when off. Training swaps within each edit's own requests only
        (``contrast_memory`` is an edit-time option)."""
        return self.contrast_gram(lm, list(requests), self.module_names)

    def trajectory_propose(self, cache: dict, rows: dict | None = None) -> Proposal:
        acc, shifts = self.predict(cache, rows=rows)
        self.remember_keys(acc.key_grams(), 0)  # the request count is not used in training
        return Proposal(shifts=shifts, state={"cache": cache, "acc": acc})

    def trajectory_backward(self, proposal: Proposal, grads: dict[str, torch.Tensor], reg_coef: float) -> None:
        """Accumulate network gradients of ``L + reg_coef ||S||^2`` given ``grads[m] = dL/dS_m``."""
        grad_shifts = {n: grads[n] + 2 * reg_coef * proposal.shifts[n] for n in self.module_names}
        self.backward(proposal.state["cache"], proposal.state["acc"], proposal.shifts, grad_shifts)
