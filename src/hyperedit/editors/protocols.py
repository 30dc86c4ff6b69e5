"""The contracts between editors and what drives them, runtime-checkable.

Callers (the lifelong runner, the ledger, the trainers, the CLI) ask ``isinstance(editor, P)``
for one of these, never ``hasattr`` for a method name:

- ``Editor``: every editor. ``edit`` returns an ``EditDelta`` and leaves the model unchanged.
- ``SequentialState``: an editor whose next edit depends on its earlier ones (AlphaEdit's K_p,
  the hypernetwork editors' null-space memory and online normalisers). ``stream_state()``
  returns ``(tensors, meta)``: tensors for safetensors, ``meta`` a JSON-able dict that says
  whose state it is (``meta["kind"]``). ``load_stream_state(tensors, meta)`` restores it. The
  lifelong runner checkpoints it and the ledger keeps it with every entry.
- ``TrajectoryTrainable``: an editor ``training.trajectory`` can train over editing trajectories
  (RLEdit, HiEdit), through ``Proposal``. Such an editor also has ``module_names`` (the
  candidate modules) and ``config``, and is ``SequentialState`` (a trajectory starts fresh).
- ``LearnedRidge``, ``MemoryReport``, ``PinnableTargets``: smaller optional capabilities.

What an editor *can do* is declared where it registers (``register_editor(..., splittable=,
training=, warm_start=)``, ``Capabilities``), so no table elsewhere names editors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from ..delta import EditDelta
from ..models.loading import LoadedModel
from ..requests import EditRequest

TRAINING_KINDS = ("meta", "trajectory")


@runtime_checkable
class Editor(Protocol):
    name: str
    config: Any

    def edit(self, lm: LoadedModel, requests: Sequence[EditRequest]) -> EditDelta:
        """Compute the delta writing ``requests``; the model is unchanged on return."""
        ...


@runtime_checkable
class SequentialState(Protocol):
    def stream_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, meta)``: what the earlier edits left in the editor (copies)."""
        ...

    def load_stream_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore a ``stream_state``; a state of another kind is refused with ``HyperEditError``."""
        ...


@dataclass
class Proposal:
    """Shifts one edit proposes during training: ``shifts`` (d_in, d_out) per changed module;
    ``full`` the shifts of every candidate module when a policy chose a subset (else None);
    ``state`` whatever the editor's backward needs."""

    shifts: dict[str, torch.Tensor]
    full: dict[str, torch.Tensor] | None = None
    state: dict = field(default_factory=dict)


@runtime_checkable
class TrajectoryTrainable(SequentialState, Protocol):
    def parameters(self): ...

    def parameter_groups(self, meta_lr: float, lr_meta_lr: float) -> list[dict]:
        """Adam parameter groups (the per-module edit ``lr`` scalars get ``lr_meta_lr``)."""
        ...

    def edit_lr_parameters(self) -> list: ...

    def train_mode(self, flag: bool = True) -> None: ...

    def prepare(self, lm: LoadedModel) -> None:
        """Load what the solve needs from the model (ridge matrices, null-space bases)."""
        ...

    def cache(self, lm: LoadedModel, requests: Sequence[EditRequest]) -> dict:
        """Keys and value gradients of every candidate module on the model as it is now."""
        ...

    def update_normalizers(self, cache: dict, world=None) -> None: ...

    def begin_trajectory(self) -> None:
        """A trajectory starts on the unedited model: forget the earlier edits."""
        ...

    def contrast_rows(self, lm: LoadedModel, requests: Sequence[EditRequest]) -> dict: ...

    def trajectory_propose(self, cache: dict, rows: dict | None = None) -> Proposal: ...

    def trajectory_backward(self, proposal: Proposal, grads: dict[str, torch.Tensor], reg_coef: float) -> None:
        """Accumulate network gradients of ``L + reg_coef ||S||^2`` given ``grads[m] = dL/dS_m``."""
        ...

    def save(self, path, extra_meta: dict | None = None): ...

    def load_weights(self, folder) -> None: ...


@runtime_checkable
class LearnedRidge(Protocol):
    def ridge_trace(self, name: str) -> float:
        """tr(R) of module ``name``'s ridge matrix (d_in for the identity)."""
        ...


@runtime_checkable
class MemoryReport(Protocol):
    def memory_fill(self, lm: LoadedModel) -> dict[str, dict]:
        """How full the null-space memory of earlier edits is, per module (empty: none kept)."""
        ...


@runtime_checkable
class PinnableTargets(Protocol):
    target_cache: Any  # ``editors.locate.TargetCache`` or None


@dataclass(frozen=True)
class Capabilities:
    """What an editor declares at ``register_editor``.

    ``splittable``: its edits are sums over facts, so ``--nproc`` shares them over ranks.
    ``training``: None, ``"meta"`` (``training.meta``) or ``"trajectory"`` (``training.trajectory``);
    training of either kind is data-parallel. ``warm_start``: the editors whose trained checkpoint
    its training may start from (``--init-from``), the usual one first. ``stateful``: it is
    ``SequentialState`` (checked at registration).
    """

    splittable: bool = False
    training: str | None = None
    warm_start: tuple[str, ...] = ()
    stateful: bool = False

    @property
    def trainable(self) -> bool:
        return self.training is not None


def implements(cls: type, protocol: type) -> bool:
    """Whether class ``cls`` has every method of the method-only ``protocol``."""
    return issubclass(cls, protocol)
