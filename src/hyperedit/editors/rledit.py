"""RLEdit: the MALMEN hypernetwork trained over editing trajectories (lifelong editing).

Editing is MALMEN's (keys and value gradients on the current model, least-squares shifts); what
differs is the training (``hyperedit.training.trajectory``): losses with memory backtracking on a
model that carries every earlier shift of the trajectory, plus a shift-norm regulariser. This
editor implements the trajectory protocol the trainer talks to (``protocols.TrajectoryTrainable``,
``Proposal``), which HiEdit implements as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ._hypernet import WEIGHTS_FILE, cache_requests
from .base import register_editor
from .malmen import MalmenConfig, MalmenEditor
from .protocols import Proposal


@dataclass
class RLEditConfig(MalmenConfig):
    """RLEdit settings: MALMEN's hypernetwork (paper: rank 1024, 4 blocks; smaller default for CPU)
    and its solve, including the direction control (``DirectionOptions``: covariance ridge,
    null-space projection) and ``online_norm``, our extensions."""


def edit_lr_parameters(nets) -> list:
    """The per-module edit ``lr`` scalars of a ``HyperNets``."""
    return [p for n, p in nets.named_parameters() if n.endswith(".lr")]


def hypernet_parameter_groups(nets, meta_lr: float, lr_meta_lr: float) -> list[dict]:
    """Adam groups: the per-module edit ``lr`` scalars get their own step size."""
    lr_params = edit_lr_parameters(nets)
    others = [p for n, p in nets.named_parameters() if not n.endswith(".lr")]
    return [{"params": others, "lr": meta_lr}, {"params": lr_params, "lr": lr_meta_lr}]


@register_editor("rledit", RLEditConfig, "MALMEN hypernetwork trained over lifelong editing trajectories",
                 needs_checkpoint=True, training="trajectory", warm_start=("malmen",), stateful=True)
class RLEditEditor(MalmenEditor):
    """MALMEN-style editing with a hypernetwork trained by ``training.trajectory``."""

    config_class = RLEditConfig
    JOINT_HINT_FACTS = None  # the joint solve's large-edit setting was measured for MALMEN only

    # ----- trajectory protocol ----------------------------------------------------------------
    def parameters(self):
        return self.nets.parameters()

    def parameter_groups(self, meta_lr: float, lr_meta_lr: float) -> list[dict]:
        return hypernet_parameter_groups(self.nets, meta_lr, lr_meta_lr)

    def edit_lr_parameters(self) -> list:
        return edit_lr_parameters(self.nets)

    def train_mode(self, flag: bool = True) -> None:
        self.nets.train(flag)

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
        self.remember_keys(acc, 0)  # the request count is not used in training
        return Proposal(shifts=shifts, state={"cache": cache, "acc": acc})

    def trajectory_backward(self, proposal: Proposal, grads: dict[str, torch.Tensor], reg_coef: float) -> None:
        """Accumulate network gradients of ``L + reg_coef ||S||^2`` given ``grads[m] = dL/dS_m``."""
        grad_shifts = {n: grads[n] + 2 * reg_coef * proposal.shifts[n] for n in self.module_names}
        self.backward(proposal.state["cache"], proposal.state["acc"], proposal.shifts, grad_shifts)

    def load_weights(self, folder: str | Path) -> None:
        """Load network weights saved by ``save`` into this editor."""
        self.nets.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
