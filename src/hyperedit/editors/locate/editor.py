"""The shared flow of the closed-form locate-then-edit editors (MEMIT, AlphaEdit; MetaKE drives it).

Per edit: key statistics C per edited module (``hyperedit.stats``), target vectors at the last
edited layer (``targets``), then the multi-layer closed-form write (``solve.spread_and_solve``)
with the subclass's solver map. The model is unchanged on return.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch

from ...delta import EditDelta
from ...models import LoadedModel
from ...requests import EditRequest
from ...stats import key_second_moments
from .base import check_model, default_layers, generate_prefixes
from .solve import SolveRecord, realised_residual, spread_and_solve, truncation_summary
from .targets import TargetCache, Targets, compute_targets


class LocateEditor:
    """Shared flow of the closed-form editors: targets, statistics, multi-layer solve, delta.

    Subclasses define ``solver_map(name, K) -> Q`` and may override ``after_solve``.
    ``target_cache`` (optional, a ``TargetCache``) shares target vectors between editors.
    """

    name = "locate"

    def __init__(self, config):
        self.config = config
        self.target_cache: TargetCache | None = None
        self.last_info: dict = {}
        self._stats: dict[str, torch.Tensor] = {}
        self._prefixes: list[str] | None = None

    # ----- pieces ---------------------------------------------------------------------------
    def layers(self, lm: LoadedModel) -> tuple[int, ...]:
        """The edited layers (the config's, or ``default_layers`` for this model's depth)."""
        return self.config.layers or default_layers(lm.adapter.num_layers)

    def modules(self, lm: LoadedModel) -> list[str]:
        return lm.adapter.module_names(self.layers(lm), self.config.module)

    def prefixes(self, lm: LoadedModel) -> list[str]:
        if self._prefixes is None:
            cfg = self.config
            self._prefixes = generate_prefixes(lm, cfg.n_prefixes, cfg.prefix_tokens, cfg.seed)
        return self._prefixes

    def stats(self, lm: LoadedModel) -> dict[str, torch.Tensor]:
        """C per edited module, computed (or read from the cache) once per editor."""
        names = self.modules(lm)
        missing = [m for m in names if m not in self._stats]
        if missing:
            cfg = self.config
            self._stats.update(key_second_moments(lm, missing, corpus=cfg.stats_corpus, n_samples=cfg.stats_samples,
                                                  max_length=cfg.stats_max_length))
        return {m: self._stats[m] for m in names}

    def targets(self, lm: LoadedModel, requests: Sequence[EditRequest]) -> Targets:
        return compute_targets(lm, requests, self.layers(lm)[-1], self.prefixes(lm), self.config,
                               cache=self.target_cache)

    def solver_map(self, lm: LoadedModel, name: str, K: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_solve(self, record: SolveRecord) -> None:
        """Hook for editors with sequential state (AlphaEdit accumulates the edit keys)."""

    def before_edit(self, lm: LoadedModel) -> None:
        """Hook run before an edit's targets (AlphaEdit refreshes its memory here when due)."""

    def after_edit(self, requests: Sequence[EditRequest]) -> None:
        """Hook run after an edit's solve (AlphaEdit remembers the requests it refreshes)."""

    def solve(self, lm: LoadedModel, requests: Sequence[EditRequest], z: torch.Tensor):
        """Multi-layer closed-form write of targets ``z``: ``(shifts, SolveRecord)``, model unchanged."""
        cfg = self.config
        return spread_and_solve(lm, requests, z, self.modules(lm), self.layers(lm)[-1], self.prefixes(lm),
                                  lambda name, K: self.solver_map(lm, name, K), cfg.batch_size)

    def make_delta(self, lm: LoadedModel, shifts: dict, **extra) -> EditDelta:
        return EditDelta.from_in_out(lm.adapter, shifts, editor=self.name, config=dataclasses.asdict(self.config),
                                     **extra)

    # ----- protocol -----------------------------------------------------------------------
    def edit(self, lm: LoadedModel, requests: Sequence[EditRequest]) -> EditDelta:
        """Write all ``requests`` in one batch; returns the delta, the model is unchanged."""
        check_model(lm)
        requests = list(requests)
        t0 = time.perf_counter()
        self.stats(lm)
        self.before_edit(lm)
        t1 = time.perf_counter()
        targets = self.targets(lm, requests)
        t2 = time.perf_counter()
        shifts, record = self.solve(lm, requests, targets.z)
        self.after_solve(record)
        self.after_edit(requests)
        t3 = time.perf_counter()
        info = {"n_requests": len(requests), "stats_time_s": t1 - t0, "target_time_s": targets.time_s,
                "targets_cached": targets.n_cached, "target_cached_time_s": targets.cached_time_s,
                "solve_time_s": t3 - t2,
                "target_steps_mean": float(targets.steps.float().mean()),
                "target_nll_mean": float(targets.nll.nanmean())}
        if getattr(self.config, "diagnostics", False):
            realised = realised_residual(lm, requests, shifts, self.layers(lm)[-1], self.config.batch_size)
            info["truncation"] = truncation_summary(targets.residual, realised)
        self.last_info = info
        return self.make_delta(lm, shifts, info={k: v for k, v in info.items() if k != "truncation"})
