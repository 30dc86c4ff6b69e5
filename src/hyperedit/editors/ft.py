"""Constrained fine-tuning (``ft``): gradient steps on the target loss over chosen MLP weights.

The shift of each module is kept inside a Frobenius ball of radius ``max_rel_norm * ||W||``
(projected after every step), the "constrained" part that limits collateral damage.
Defaults were chosen on 32 requests of CounterFact *train* with SmolLM2-135M: a bound of 0.02
barely edits (ES 0.20, LS 0.78), 0.05 edits nearly everything but damages locality (ES 0.97,
LS 0.39); 0.03 sits between (ES 0.76, LS 0.57).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from ..delta import EditDelta
from ..lm import iter_chunks, target_logits, trainable_weights
from ..progress import progress
from ..requests import EditRequest
from .base import register_editor

log = logging.getLogger(__name__)


@dataclass
class FTConfig:
    layers: list[int] | None = None  # None: the adapter's default (three upper-middle layers)
    module: str = "down"
    steps: int = 25
    lr: float = 1e-3
    max_rel_norm: float = 0.03  # bound on ||shift||_F / ||W||_F per module
    batch_size: int = 32  # requests per forward pass (gradients accumulate over all requests)
    stop_loss: float = 0.05  # stop early once the mean target NLL is below this

    def __post_init__(self):
        if self.layers is not None and not list(self.layers):
            raise ValueError("layers must name at least one layer (or be null for the default)")
        if self.steps < 1 or self.lr <= 0 or self.max_rel_norm <= 0 or self.batch_size < 1:
            raise ValueError("steps, lr, max_rel_norm and batch_size must be positive")


@register_editor("ft", FTConfig, "constrained fine-tuning of MLP weights (norm-bounded shift)")
class FineTuneEditor:
    def __init__(self, config: FTConfig):
        self.config = config

    def edit(self, lm, requests: list[EditRequest]) -> EditDelta:
        cfg, adapter = self.config, lm.adapter
        layers = cfg.layers if cfg.layers is not None else adapter.default_layers(3)
        names = adapter.module_names(layers, cfg.module)
        device = lm.device
        batches = [adapter.encode([r.prompt for r in chunk], [r.target for r in chunk], device=device)
                   for chunk in iter_chunks(list(requests), cfg.batch_size)]
        with trainable_weights(adapter, names) as weights:
            originals = [w.detach().clone() for w in weights]
            radii = [cfg.max_rel_norm * float(w.norm()) for w in originals]
            try:
                optimiser = torch.optim.Adam(weights, lr=cfg.lr)
                for step in progress(range(cfg.steps), desc="ft steps", unit="step"):
                    optimiser.zero_grad(set_to_none=True)
                    total = 0.0
                    for batch in batches:
                        out = target_logits(adapter, batch)
                        loss = out.per_example_mean(out.token_nll()).sum() / len(requests)
                        loss.backward()
                        total += loss.item()
                    log.debug("ft step %d loss %.4f", step, total)
                    if total < cfg.stop_loss:
                        break
                    optimiser.step()
                    with torch.no_grad():
                        for w, w0, radius in zip(weights, originals, radii):
                            shift = w - w0
                            norm = float(shift.double().norm())  # float32's norm overflows to inf for huge steps
                            if norm > radius:
                                w.copy_(w0 + shift * (radius / norm))
                shifts = {n: (w.detach() - w0) for n, w, w0 in zip(names, weights, originals)}
            finally:
                with torch.no_grad():
                    for w, w0 in zip(weights, originals):
                        w.copy_(w0)
        return EditDelta(shifts, {"editor": self.name, "config": asdict(cfg), "model": adapter.identity(),
                                  "steps_run": step + 1, "final_loss": total})
