"""MetaKE: aligned targets by bi-level optimisation over a closed-form inner solver.

Our implementation of the idea in ALGORITHMS.md (no public code exists). The inner solver
(MEMIT or AlphaEdit, ``inner``) maps the planned residuals R (n, d) to shifts; per layer that map
is linear, S_l = Q_l R_l. The upper level treats R as a meta-parameter and minimises the loss of
the model *as the solver would leave it*: target NLL on each request's prompt (bare and with the
editor's prefixes; with ``use_request_prompts`` also its rephrasings) plus ``loc_coef`` times the
KL between unedited and edited next-token distributions on unrelated texts. The "virtual post-edit"
model is the unedited one plus

    S_l(R) = S_l(R0) + w Q_l (R - R0),   w = 1 / number of edited layers

(exact at R0, the inner solver's real multi-layer output; the per-layer linear map is the
structural gradient proxy), so dL/dR = w sum_l Q_l^T dL/dS_l with dL/dS_l from one backward pass,
never unrolling the layer loop. Requests whose post-edit NLL is already below ``meta_stop_nll``
keep their residual. The refined targets h + R* are then written once by the inner solver.
Diagnostics per request: how much of the planned residual the solver realises (at the last
edited layer, last subject token) before and after refinement.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ...delta import EditDelta
from ...hooks import edit_output
from ...lm import target_logits
from ...models import LoadedModel
from ...progress import progress
from ...requests import EditRequest
from ...stats import corpus_texts
from ..base import register_editor
from ..protocols import MemoryReport, SequentialState
from .alphaedit import AlphaEdit, AlphaEditConfig
from .base import check_model
from .memit import MEMIT, MEMITConfig
from .solve import SolveRecord, proxy_grad, realised_residual, truncation_summary

log = logging.getLogger(__name__)
_INNER = {"memit": (MEMIT, MEMITConfig), "alphaedit": (AlphaEdit, AlphaEditConfig)}


@dataclass
class MetaKEConfig(AlphaEditConfig):
    """MetaKE options: the inner solver's options (MEMIT's ``lam``, AlphaEdit's null space) plus the
    upper level's."""

    inner: str = "memit"  # memit | alphaedit
    lam: float = 1500.0  # MEMIT's covariance weight (inner=memit)
    meta_steps: int = 3
    meta_lr: float = 0.25  # per step an active request's residual moves meta_lr * ||R0_i|| down its gradient
    meta_stop_nll: float = 0.3  # requests below this post-edit target NLL are left alone
    meta_max_scale: float = 3.0  # ||R_i|| <= meta_max_scale * ||R0_i||
    loc_coef: float = 1.0
    n_locality_texts: int = 16  # unrelated texts (from the statistics corpus) for the locality KL
    locality_tokens: int = 24
    use_request_prompts: bool = False  # also use requests' rephrasings/locality prompts (benchmark eval prompts!)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner not in _INNER:
            raise ValueError(f"inner must be one of {sorted(_INNER)}")
        if self.refresh_every and self.inner != "alphaedit":
            raise ValueError("refresh_every refreshes AlphaEdit's memory: it needs inner=alphaedit")
        if self.meta_steps < 0 or self.meta_lr <= 0 or self.meta_max_scale < 1:
            raise ValueError("meta_steps >= 0, meta_lr > 0 and meta_max_scale >= 1 required")


@register_editor("metake", MetaKEConfig, "MetaKE: targets refined through the inner solver's closed form (--set inner=memit|alphaedit)",
                 stateful=True)
class MetaKE:
    """MetaKE over an inner MEMIT or AlphaEdit editor (whose sequential state it carries)."""

    def __init__(self, config: MetaKEConfig):
        self.config = config
        cls, cfg_cls = _INNER[config.inner]
        names = {f.name for f in dataclasses.fields(cfg_cls)}
        self.inner = cls(cfg_cls(**{k: v for k, v in dataclasses.asdict(config).items() if k in names}))
        self.last_info: dict = {}

    @property
    def target_cache(self):
        return self.inner.target_cache

    @target_cache.setter
    def target_cache(self, cache) -> None:
        self.inner.target_cache = cache

    def stream_state(self) -> tuple[dict, dict]:
        """The inner AlphaEdit's sequential state (none over MEMIT, which keeps no memory)."""
        if isinstance(self.inner, SequentialState):
            return self.inner.stream_state()
        return {}, {"kind": "memit"}

    def load_stream_state(self, tensors: dict, meta: dict | None = None) -> None:
        if isinstance(self.inner, SequentialState):
            self.inner.load_stream_state(tensors, meta)

    def memory_fill(self, lm: LoadedModel) -> dict[str, dict]:
        """The inner AlphaEdit's ``memory_fill`` (empty over MEMIT, which keeps no memory)."""
        return self.inner.memory_fill(lm) if isinstance(self.inner, MemoryReport) else {}

    # ----- the editor -------------------------------------------------------------------------
    def edit(self, lm: LoadedModel, requests: Sequence[EditRequest]) -> EditDelta:
        """Refine the targets against the post-edit loss, then write them with the inner solver."""
        check_model(lm)
        requests, inner, cfg = list(requests), self.inner, self.config
        inner.stats(lm)
        inner.before_edit(lm)
        targets = inner.targets(lm, requests)
        t1 = time.perf_counter()
        shifts0, record0 = inner.solve(lm, requests, targets.z)
        R0 = targets.residual
        R, curve = self.refine(lm, requests, shifts0, record0, R0)
        shifts, record = inner.solve(lm, requests, targets.h + R)
        inner.after_solve(record)
        inner.after_edit(requests)
        t2 = time.perf_counter()
        z_layer = inner.layers(lm)[-1]
        real0 = realised_residual(lm, requests, shifts0, z_layer, cfg.batch_size)
        real1 = realised_residual(lm, requests, shifts, z_layer, cfg.batch_size)
        scale = R.norm(dim=-1) / R0.norm(dim=-1).clamp_min(1e-12)
        self.last_info = {
            "n_requests": len(requests), "inner": cfg.inner, "target_time_s": targets.time_s,
            "targets_cached": targets.n_cached, "target_cached_time_s": targets.cached_time_s,
            "meta_time_s": t2 - t1, "proxy_loss_curve": curve,
            "residual_scale": [round(float(s), 4) for s in scale],
            "mean_residual_scale": float(scale[R0.norm(dim=-1) > 0].mean()) if (R0.norm(dim=-1) > 0).any() else None,
            "truncation_before": truncation_summary(R0, real0),
            "truncation_after": truncation_summary(R, real1),
            "original_plan_realised_after": truncation_summary(R0, real1),
        }
        summary = {k: v for k, v in self.last_info.items() if not isinstance(v, (list, dict))}
        return EditDelta.from_in_out(lm.adapter, shifts, editor=f"metake-{cfg.inner}",
                                     config=dataclasses.asdict(cfg), info=summary)

    def refine(self, lm: LoadedModel, requests: Sequence[EditRequest], shifts0: dict, record: SolveRecord,
               R0: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Upper level: normalised gradient steps on each request's R_i through the linear proxy (each
        active request moves ``meta_lr * ||R0_i||`` per step); returns (R*, proxy loss per step)."""
        cfg, inner = self.config, self.inner
        n = len(requests)
        modules = list(shifts0)
        w = 1.0 / len(modules)
        Q = {m: record.maps[m].float() for m in modules}
        prefixes = inner.prefixes(lm)
        edit_rows = [(i, p + r.prompt, r.target) for i, r in enumerate(requests) for p in prefixes]
        if cfg.use_request_prompts:
            edit_rows += [(i, x, r.target) for i, r in enumerate(requests) for x in r.rephrasings]
        per_request = torch.bincount(torch.tensor([row[0] for row in edit_rows]), minlength=n).float()
        loc_texts = corpus_texts(cfg.stats_corpus, cfg.n_locality_texts)
        if cfg.use_request_prompts:
            loc_texts = loc_texts + [lp.prompt for r in requests for lp in r.locality]
        loc_batch, loc_ref = self._locality_reference(lm, loc_texts)
        R = R0.clone()
        r0_norm = R0.norm(dim=-1, keepdim=True)
        active = R0.norm(dim=-1) > 0
        curve = []
        for step in progress(range(cfg.meta_steps), desc="MetaKE upper level"):
            S = {m: (shifts0[m] + w * (Q[m] @ _scaled(R - R0, record.scales.get(m)))).detach().requires_grad_(True)
                 for m in modules}
            rows = [row for row in edit_rows if active[row[0]]]
            nll = torch.zeros(n)
            with _virtual(lm, S):
                for s in range(0, len(rows), cfg.batch_size):
                    chunk = rows[s:s + cfg.batch_size]
                    out = target_logits(lm.adapter, lm.adapter.encode([c[1] for c in chunk], [c[2] for c in chunk]))
                    ex = out.per_example_mean(out.token_nll())
                    idx = torch.tensor([c[0] for c in chunk])
                    (ex / per_request[idx].to(ex)).sum().backward()
                    nll.index_add_(0, idx, ex.detach().cpu() / per_request[idx])
                kl = self._locality_kl(lm, loc_batch, loc_ref) if cfg.loc_coef > 0 else torch.zeros(())
                if kl.requires_grad:
                    (cfg.loc_coef * kl).backward()
            act = active.nonzero().flatten()
            curve.append(round(float(nll[act].sum() + cfg.loc_coef * kl.detach()), 4))
            done = act[nll[act] < cfg.meta_stop_nll]
            active[done] = False
            upd = active.nonzero().flatten()
            if not len(upd):
                break
            with torch.no_grad():
                g = sum(proxy_grad(record.maps[m], S[m].grad.double(), record.scales.get(m)).float() for m in modules
                        if S[m].grad is not None) * w
                if not torch.is_tensor(g):
                    g = torch.zeros_like(R)
                direction = g[upd] / g[upd].norm(dim=-1, keepdim=True).clamp_min(1e-20)
                new = R[upd] - cfg.meta_lr * r0_norm[upd] * direction
                limit = cfg.meta_max_scale * r0_norm[upd]
                R[upd] = new * (limit / new.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        log.info("MetaKE: proxy loss per step %s; %d of %d requests still above the NLL threshold",
                 curve, int(active.sum()), n)
        return R, curve

    @torch.no_grad()
    def _locality_reference(self, lm: LoadedModel, texts: list[str]):
        tok = lm.tokenizer
        batch = tok(texts, return_tensors="pt", padding=True, truncation=True,
                    max_length=self.config.locality_tokens).to(lm.device)
        return batch, F.log_softmax(lm.model(**batch, use_cache=False).logits.float(), dim=-1)

    def _locality_kl(self, lm: LoadedModel, batch, ref: torch.Tensor) -> torch.Tensor:
        """Sum over texts of the mean-over-tokens KL(unedited || edited)."""
        logp = F.log_softmax(lm.model(**batch, use_cache=False).logits.float(), dim=-1)
        mask = batch["attention_mask"].float()
        kl = (ref.exp() * (ref - logp)).sum(-1)
        return ((kl * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()


def _scaled(R: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return R if scale is None else R * scale.to(R)


def _virtual(lm: LoadedModel, shifts: dict[str, torch.Tensor]) -> contextlib.ExitStack:
    """Context: each edited module's output gets ``input @ S`` added (S differentiable, weights untouched)."""
    stack = contextlib.ExitStack()
    try:
        for m, S in shifts.items():
            stack.enter_context(edit_output(lm.model, m, lambda inputs, out, S=S: out + inputs[0] @ S.to(out.dtype)))
    except BaseException:
        stack.close()
        raise
    return stack
