"""AlphaEdit: MEMIT's targets and keys, with the update projected onto the null space of the
preserved knowledge's keys.

P = U U^T over the eigenvectors of C = E[k k^T] with eigenvalue below ``nullspace_threshold``;
per layer S = (P (K^T K + K_p^T K_p) + l2 I)^{-1} P K^T R, which lies in the range of P, so keys in
P's null space keep their outputs. ``K_p`` are the keys of this editor's earlier edits: each
``edit`` call adds its keys (sequential editing), kept in ``stream_state()`` and saved with ``save``.

``refresh_every`` (our extension): every edit of a stream moves the keys that later layers read for
every subject, edited or not (each edited layer changes the input of the layers above it), so the
keys K_p remembered at edit time drift away from the keys the model reads for those facts later.
With ``refresh_every=N`` the editor remembers its edited requests and, once N more requests have
been edited, rebuilds K_p^T K_p from the keys the current model reads for all of them before the
next solve (one forward pass per request and prefix, up to each edited layer).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import HyperEditError
from ...models import LoadedModel
from ...requests import EditRequest
from ..base import make_config, register_editor
from ..checkpoint import read_editor, write_editor
from .base import LocateConfig, keys_and_hidden
from .editor import LocateEditor
from .nullspace import KeyState, NullSpaceOptions, held_directions, null_space_basis
from .solve import SolveRecord, alphaedit_map

STATE_KIND = "alphaedit"  # meta["kind"] of its stream_state
LEGACY_KIND = "state_dict"  # what lifelong checkpoints wrote for it before stream_state was its only name


@dataclass
class AlphaEditConfig(LocateConfig, NullSpaceOptions):
    """AlphaEdit options: shared locate-then-edit options plus the null space
    (``nullspace_threshold``, ``threshold_relative``: ``NullSpaceOptions``) and the ridge."""

    l2: float = 1.0  # ridge added to the projected normal matrix
    accumulate: bool = True  # remember the keys of earlier edits (K_p) across edit calls
    refresh_every: int = 0  # our extension: re-read K_p on the current model every N edited requests (0: never)
    diagnostics: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_nullspace_options()
        if self.l2 < 0:
            raise ValueError("l2 must be non-negative")
        if self.refresh_every < 0:
            raise ValueError("refresh_every must be >= 0")
        if self.refresh_every and not self.accumulate:
            raise ValueError("refresh_every needs accumulate=True (there are no earlier keys to re-read)")


@register_editor("alphaedit", AlphaEditConfig, "AlphaEdit: MEMIT with null-space projected updates, sequential K_p",
                 stateful=True)
class AlphaEdit(LocateEditor):
    """AlphaEdit (Fang et al. 2025) with sequential state ``K_p^T K_p`` per edited module."""

    def __init__(self, config):
        super().__init__(config)
        self._bases: dict[str, torch.Tensor] = {}
        self._projectors: dict[str, torch.Tensor] = {}
        self.keys = KeyState()
        self.edited: list[EditRequest] = []  # with refresh_every: every request edited so far
        self.refreshed_at = 0  # n_edits at the last refresh

    def basis(self, lm: LoadedModel, name: str) -> torch.Tensor:
        """U (d_in, r), float64: a basis of the null space, computed once from the key statistics."""
        if name not in self._bases:
            cfg = self.config
            self._bases[name] = null_space_basis(self.stats(lm)[name], cfg.nullspace_threshold, cfg.threshold_relative)
        return self._bases[name]

    def projector(self, lm: LoadedModel, name: str) -> torch.Tensor:
        """Null-space projector P = U U^T (d_in, d_in), float64, computed once."""
        if name not in self._projectors:
            U = self.basis(lm, name)
            self._projectors[name] = U @ U.T
        return self._projectors[name]

    def memory_fill(self, lm: LoadedModel) -> dict[str, dict]:
        """Per module with a memory, how much of its null space the earlier edits' keys hold above the
        ridge ``l2`` (``held_directions``); empty before the first edit or without ``accumulate``."""
        cfg = self.config
        return {name: {**held_directions(self.basis(lm, name), cfg.memory_weight * kp, cfg.l2), "ridge": cfg.l2}
                for name in self.modules(lm) if (kp := self.keys.get(name)) is not None}

    def null_space_dims(self, lm: LoadedModel) -> dict[str, int]:
        return {m: int(round(float(torch.trace(self.projector(lm, m))))) for m in self.modules(lm)}

    def solver_map(self, lm: LoadedModel, name: str, K: torch.Tensor) -> torch.Tensor:
        P = self.projector(lm, name).to(K.device)
        kp = self.keys.get(name)
        memory = self.config.memory_weight * kp.to(K.device) if kp is not None else None
        return alphaedit_map(K, P, memory, self.config.l2)

    def after_solve(self, record: SolveRecord) -> None:
        if not self.config.accumulate:
            return
        for name, K in record.keys.items():
            K = K.double()
            self.keys.add(name, K.T @ K)
        self.keys.n_edits += len(next(iter(record.keys.values()))) if record.keys else 0

    @property
    def n_edits(self) -> int:
        return self.keys.n_edits

    def before_edit(self, lm: LoadedModel) -> None:
        every = self.config.refresh_every
        if every and self.n_edits - self.refreshed_at >= every:
            self.refresh_keys(lm)

    def after_edit(self, requests) -> None:
        if self.config.refresh_every:
            self.edited += [EditRequest(prompt=r.prompt, target=r.target, subject=r.subject) for r in requests]

    @torch.no_grad()
    def refresh_keys(self, lm: LoadedModel) -> None:
        """Rebuild K_p^T K_p of every edited module from the keys ``lm`` (the model as edited so far)
        reads now for every request edited before."""
        if len(self.edited) != self.n_edits:
            raise HyperEditError(f"AlphaEdit state holds {self.n_edits} edited requests' keys but {len(self.edited)} "
                                 "requests: refresh_every needs a state saved with refresh_every on from the start")
        self.stats(lm)
        prefixes = self.prefixes(lm)
        for name in self.modules(lm):
            K, _ = keys_and_hidden(lm, self.edited, name, prefixes, lm.adapter.layer_of(name),
                                     self.config.batch_size)
            K = K.double()
            self.keys.kp[name] = (K.T @ K).cpu()
        self.refreshed_at = self.n_edits

    # ----- sequential state -----------------------------------------------------------------
    def reset(self) -> None:
        """Forget the keys of earlier edits."""
        self.keys.reset()
        self.edited, self.refreshed_at = [], 0

    def stream_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(``{"kp/<module>": K_p^T K_p (d_in, d_in) float64, "n_edits": ()}`` (``KeyState``), with
        ``refresh_every`` also the edited requests (``edited``: JSON as UTF-8 bytes) and
        ``refreshed_at``; ``{"kind": "alphaedit"}``) (``protocols.SequentialState``)."""
        state = self.keys.state_dict()
        if self.config.refresh_every:
            text = json.dumps([[r.prompt, r.target, r.subject] for r in self.edited])
            state["edited"] = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
            state["refreshed_at"] = torch.tensor(self.refreshed_at)
        return state, {"kind": STATE_KIND}

    def load_stream_state(self, state: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        """Restore a ``stream_state``; states saved before it had a kind (``{"kind": "state_dict"}``
        in lifelong checkpoints, none in ledger blobs and ``save`` directories) load too."""
        kind = (meta or {}).get("kind")
        if kind not in (None, STATE_KIND, LEGACY_KIND):
            raise HyperEditError(f"the editor state is {kind!r}, not AlphaEdit's")
        self.keys.load_state_dict(state, what="AlphaEdit")
        self.edited, self.refreshed_at = [], 0
        if "edited" in state:
            try:
                rows = json.loads(bytes(state["edited"].tolist()).decode("utf-8"))
                self.edited = [EditRequest(prompt=p, target=t, subject=s) for p, t, s in rows]
            except (ValueError, TypeError) as exc:
                raise HyperEditError(f"AlphaEdit state: unreadable edited requests ({exc})") from None
            self.refreshed_at = int(state.get("refreshed_at", torch.tensor(0)))

    def save(self, path) -> Path:
        """Write options and sequential state into directory ``path`` (``editors.checkpoint``)."""
        tensors, meta = self.stream_state()
        return write_editor(path, self.name, self.config, tensors, state=meta)

    @classmethod
    def load(cls, path) -> "AlphaEdit":
        """An editor saved by ``save`` (also in the format before ``editors.checkpoint``)."""
        saved = read_editor(path, "alphaedit", trained=False)
        editor = cls(make_config(AlphaEditConfig, saved.config))
        editor.load_stream_state(saved.tensors(), saved.meta.get("state"))
        return editor
