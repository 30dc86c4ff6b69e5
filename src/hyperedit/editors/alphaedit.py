"""AlphaEdit: MEMIT's targets and keys, with the update projected onto the null space of the
preserved knowledge's keys.

P = U U^T over the eigenvectors of C = E[k k^T] with eigenvalue below ``nullspace_threshold``;
per layer S = (P (K^T K + K_p^T K_p) + l2 I)^{-1} P K^T R, which lies in the range of P, so keys in
P's null space keep their outputs. ``K_p`` are the keys of this editor's earlier edits: each
``edit`` call adds its keys (sequential editing), kept in ``state_dict()`` and saved with ``save``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import HyperEditError
from ..models import LoadedModel
from . import _locate as L
from .base import make_config, register_editor
from .memit import LocateEditor

STATE_FILE, CONFIG_FILE = "state.safetensors", "config.json"


@dataclass
class AlphaEditConfig(L.LocateConfig):
    """AlphaEdit options: shared locate-then-edit options plus the null space and the ridge."""

    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the preserved null space
    threshold_relative: bool = False  # threshold as a fraction of C's largest eigenvalue
    l2: float = 1.0  # ridge added to the projected normal matrix
    accumulate: bool = True  # remember the keys of earlier edits (K_p) across edit calls
    diagnostics: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nullspace_threshold <= 0 or self.l2 < 0:
            raise ValueError("nullspace_threshold must be positive and l2 non-negative")


@register_editor("alphaedit", AlphaEditConfig, "AlphaEdit: MEMIT with null-space projected updates, sequential K_p")
class AlphaEdit(LocateEditor):
    """AlphaEdit (Fang et al. 2025) with sequential state ``K_p^T K_p`` per edited module."""

    def __init__(self, config):
        super().__init__(config)
        self._projectors: dict[str, torch.Tensor] = {}
        self._kp: dict[str, torch.Tensor] = {}
        self.n_edits = 0

    def projector(self, lm: LoadedModel, name: str) -> torch.Tensor:
        """Null-space projector P (d_in, d_in), float64, computed once from the key statistics."""
        if name not in self._projectors:
            cfg = self.config
            self._projectors[name] = L.null_space_projector(self.stats(lm)[name], cfg.nullspace_threshold,
                                                            cfg.threshold_relative)
        return self._projectors[name]

    def null_space_dims(self, lm: LoadedModel) -> dict[str, int]:
        return {m: int(round(float(torch.trace(self.projector(lm, m))))) for m in self.modules(lm)}

    def solver_map(self, lm: LoadedModel, name: str, K: torch.Tensor) -> torch.Tensor:
        P = self.projector(lm, name).to(K.device)
        kp = self._kp.get(name)
        return L.alphaedit_map(K, P, kp.to(K.device) if kp is not None else None, self.config.l2)

    def after_solve(self, record: L.SolveRecord) -> None:
        if not self.config.accumulate:
            return
        for name, K in record.keys.items():
            K = K.double().cpu()
            self._kp[name] = self._kp.get(name, 0) + K.T @ K
        self.n_edits += len(next(iter(record.keys.values()))) if record.keys else 0

    # ----- sequential state -----------------------------------------------------------------
    def reset(self) -> None:
        """Forget the keys of earlier edits."""
        self._kp.clear()
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"kp/<module>": K_p^T K_p (d_in, d_in) float64, "n_edits": ()}``."""
        state = {f"kp/{name}": t.clone() for name, t in self._kp.items()}
        state["n_edits"] = torch.tensor(self.n_edits)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        kp = {k[len("kp/"):]: v.double().clone() for k, v in state.items() if k.startswith("kp/")}
        if "n_edits" not in state:
            raise HyperEditError("AlphaEdit state has no n_edits entry")
        self._kp, self.n_edits = kp, int(state["n_edits"])

    def save(self, path) -> Path:
        """Write config (JSON) and sequential state (safetensors) into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / STATE_FILE))
        (path / CONFIG_FILE).write_text(json.dumps({"editor": self.name, "config": asdict(self.config)}, indent=2))
        return path

    @classmethod
    def load(cls, path) -> "AlphaEdit":
        path = Path(path)
        if not (path / STATE_FILE).is_file() or not (path / CONFIG_FILE).is_file():
            raise HyperEditError(f"{path}: not a saved AlphaEdit editor ({STATE_FILE} and {CONFIG_FILE} expected)")
        meta = json.loads((path / CONFIG_FILE).read_text())
        editor = cls(make_config(AlphaEditConfig, meta.get("config", {})))
        editor.load_state_dict(load_file(str(path / STATE_FILE)))
        return editor
