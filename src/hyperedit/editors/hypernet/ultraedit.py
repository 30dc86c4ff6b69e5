"""UltraEdit: training-free, one-step least-squares editing with lifelong normalisation
(Gu et al. 2025, arXiv 2505.14679).

Per edited module the edit reads, at the positions that predict the target (``token="ans"``),
the keys K (module inputs, n x d_in) and the value gradients G (dLoss/d module output, n x d_out)
in one forward and backward pass. The rows ``z = [k, g]`` are standardised with running
statistics (``RunningMeanStd``) that every edit first updates with its own rows and that persist
across edits: the *lifelong normalisation*, which keeps the step size of edit 10,000 comparable
to that of edit 1. With ``(k^, g^)`` the standardised parts, each row asks its module's output to
move by the change one gradient step of size ``lr`` would make there,
``v = -lr ||k^||^2 g^``, and the shift is the ridge least-squares solution
``S = (K^T K + ridge I)^{-1} K^T V`` (``ridge.ridge_solve``: the same normal equation as
MALMEN's and RLEdit's, whose value differences a trained hypernetwork proposes instead).

As in the authors' code, modules of one shape share one normaliser (``norm_scope="shape"``);
``"module"`` keeps one per module. ``lifelong_norm=False`` standardises each edit with its own
rows only (no state). The state a stream carries is the normalisers' statistics
(``stream_state`` / ``load_stream_state``, the ``SequentialState`` protocol).

Default modules: for models with a gated MLP (Llama family) the authors edit ``gate_proj`` of a
band of middle layers and ``up_proj`` of a band above it (Llama-3-8B: gate 11-15, up 18-24 of 32
layers); ``DEFAULT_BANDS`` scales those bands to the model's depth. Other architectures get the
output projection of the upper layers (their GPT-J setting: ``fc_out`` of layers 18-26 of 28).
The SmolLM2-135M measurement that chose these is in docs/ultraedit.md.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from ...delta import EditDelta
from ...errors import HyperEditError
from ...lm import TOKEN_SITES, iter_chunks
from ...nets.normalizer import RunningMeanStd
from ...requests import EditRequest
from ..base import register_editor
from .base import cache_requests
from .ridge import ridge_solve

log = logging.getLogger(__name__)

# (module kind, first layer, last layer) as fractions of the depth: Llama-3-8B's 11-15 and 18-24 of 32.
DEFAULT_BANDS = (("gate", 11 / 32, 15 / 32), ("up", 18 / 32, 24 / 32))
FALLBACK_BAND = ("down", 18 / 28, 26 / 28)
NORM_SCOPES = ("shape", "module")


@dataclass
class UltraEditConfig:
    """UltraEdit options.

    ``layers``/``module_kind``: edit the ``module_kind`` projection of these layers; ``layers``
    None uses the default bands (module docstring) and ``module_kind="auto"`` with explicit layers
    means ``down``. ``lr``: the step size of the pseudo gradient step (chosen for SmolLM2-135M,
    docs/ultraedit.md). ``ridge``: the ridge of the least-squares solve (the authors' 1).
    ``token``: rows read (``hyperedit.lm.site_mask``). ``lifelong_norm``: keep the normaliser
    statistics across edit calls. ``norm_scope``: one normaliser per module ``shape`` (the
    authors') or per ``module``. ``lm_batch_size`` requests per LM pass (speed and memory only).
    """

    layers: list[int] | None = None
    module_kind: str = "auto"
    lr: float = 1e-4
    ridge: float = 1.0
    token: str = "ans"
    lifelong_norm: bool = True
    norm_scope: str = "shape"
    lm_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = [int(v) for v in self.layers]
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise ValueError("layers must be a non-empty list of distinct layer indices")
        for key in ("lr", "ridge"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0")
        if self.token not in TOKEN_SITES:
            raise ValueError(f"token must be one of {', '.join(TOKEN_SITES)}")
        if self.norm_scope not in NORM_SCOPES:
            raise ValueError(f"norm_scope must be one of {', '.join(NORM_SCOPES)}")
        if self.lm_batch_size < 1:
            raise ValueError("lm_batch_size must be >= 1")


def band_layers(num_layers: int, first: float, last: float) -> list[int]:
    """Layers round(first * L) .. round(last * L) of an L-layer model (at least one, in range)."""
    lo = min(num_layers - 1, int(round(first * num_layers)))
    hi = min(num_layers - 1, max(lo, int(round(last * num_layers))))
    return list(range(lo, hi + 1))


def default_modules(adapter) -> list[str]:
    """The default edited modules of ``adapter``'s model (module docstring)."""
    bands = DEFAULT_BANDS if all(k in adapter.spec.mlp_modules for k, _, _ in DEFAULT_BANDS) else (FALLBACK_BAND,)
    names: list[str] = []
    for kind, first, last in bands:
        names += adapter.module_names(band_layers(adapter.num_layers, first, last), kind)
    return names


def pseudo_values(keys: torch.Tensor, grads: torch.Tensor, normalizer: RunningMeanStd, lr: float) -> torch.Tensor:
    """V = -lr ||k^||^2 g^ per row, with (k^, g^) = the standardised [k, g] split back."""
    z = normalizer(torch.cat([keys, grads], dim=-1).double())
    k_hat, g_hat = z.split([keys.shape[-1], grads.shape[-1]], dim=-1)
    return -lr * (k_hat * k_hat).sum(-1, keepdim=True) * g_hat


def least_squares_shift(keys: torch.Tensor, values: torch.Tensor, ridge: float) -> torch.Tensor:
    """S (d_in, d_out) = (K^T K + ridge I)^{-1} K^T V, in float64."""
    K = keys.double()
    return ridge_solve(K.T @ K, K.T @ values.double(), torch.tensor(math.log(ridge), dtype=torch.float64))


STATE_KIND = "ultraedit"


@register_editor("ultraedit", UltraEditConfig,
                 "UltraEdit: training-free one-step least-squares shifts, lifelong normalisation",
                 stateful=True)
class UltraEdit:
    """UltraEdit with its lifelong normalisers as sequential state."""

    def __init__(self, config: UltraEditConfig):
        self.config = config
        self.normalizers: dict[str, RunningMeanStd] = {}
        self.n_edits = 0

    def modules(self, lm) -> list[str]:
        cfg = self.config
        if cfg.layers is None:
            if cfg.module_kind != "auto":
                raise HyperEditError("ultraedit: module_kind needs layers (the default bands choose their own kinds)")
            return default_modules(lm.adapter)
        return lm.adapter.module_names(cfg.layers, "down" if cfg.module_kind == "auto" else cfg.module_kind)

    def _norm_key(self, lm, name: str) -> str:
        if self.config.norm_scope == "module":
            return name
        d_in, d_out = lm.adapter.in_out_shape(name)
        return f"{d_in}x{d_out}"

    def edit(self, lm, requests: Sequence[EditRequest]) -> EditDelta:
        """Shifts of every edited module for ``requests`` at once; the model is left unchanged.
        The normalisers first take in this edit's rows (all of them, before any solve)."""
        if not requests:
            raise HyperEditError("no requests to edit")
        cfg, names = self.config, self.modules(lm)
        rows: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in names}
        for chunk in iter_chunks(list(requests), cfg.lm_batch_size):
            cache = cache_requests(lm.adapter, chunk, names, cfg.token)
            for name in names:
                rows[name].append(cache[name])
        normalizers = self.normalizers if cfg.lifelong_norm else {}
        K = {name: torch.cat([k for k, _ in rows[name]]) for name in names}
        G = {name: torch.cat([g for _, g in rows[name]]) for name in names}
        for name in names:
            key = self._norm_key(lm, name)
            if key not in normalizers:
                normalizers[key] = RunningMeanStd(K[name].shape[1] + G[name].shape[1])
            normalizers[key].update(torch.cat([K[name], G[name]], dim=-1))
        shifts = {}
        with torch.no_grad():
            for name in names:
                values = pseudo_values(K[name], G[name], normalizers[self._norm_key(lm, name)], cfg.lr)
                shifts[name] = least_squares_shift(K[name], values, cfg.ridge)
        self.n_edits += len(requests)
        return EditDelta.from_in_out(lm.adapter, shifts, editor=self.name, config=asdict(cfg),
                                     n_requests=len(requests), modules=names)

    # ----- sequential state -----------------------------------------------------------------
    def reset(self) -> None:
        """Forget the normaliser statistics of earlier edits."""
        self.normalizers.clear()
        self.n_edits = 0

    def stream_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(``{"norm/<scope key>/{count,mean,m2}": float64, "n_edits": ()}``, ``{"kind": "ultraedit"}``):
        the lifelong normalisers (``protocols.SequentialState``)."""
        state = {f"norm/{key}/{field}": t.clone() for key, norm in self.normalizers.items()
                 for field, t in norm.state_dict().items()}
        state["n_edits"] = torch.tensor(self.n_edits)
        return state, {"kind": STATE_KIND}

    def load_stream_state(self, state: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        kind = (meta or {}).get("kind")
        if kind not in (None, STATE_KIND):
            raise HyperEditError(f"the editor state is {kind!r}, not UltraEdit's")
        if "n_edits" not in state:
            raise HyperEditError("UltraEdit state has no n_edits entry")
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in state.items():
            if name.startswith("norm/"):
                key, _, field = name[len("norm/"):].rpartition("/")
                grouped.setdefault(key, {})[field] = tensor
        normalizers = {}
        for key, fields in grouped.items():
            if set(fields) != {"count", "mean", "m2"} or fields["mean"].shape != fields["m2"].shape:
                raise HyperEditError(f"UltraEdit state: normaliser {key!r} needs count, mean and m2 of one size")
            norm = RunningMeanStd(fields["mean"].shape[0])
            norm.load_state_dict({k: v.double() for k, v in fields.items()})
            normalizers[key] = norm
        self.normalizers = normalizers
        self.n_edits = int(state["n_edits"])
