"""Model weights as a pure function of the base weights and the active ledger entries.

For every module edited by any active entry: ``weight = cast(base + sum(shifts))`` where the sum
runs over the active entries in entry-id order and is taken in float64, and the base is added
once. The same set of active entries therefore always gives the same bits, whatever was applied
or reverted before; a module that no active entry edits holds exactly its base weight.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Shifts = dict[str, torch.Tensor]
Entry = tuple[int, str]  # (entry id, delta blob hash), in id order


class LedgerWeights:
    """Keeps one model's edited modules equal to ``base + sum(active shifts)``.

    The base of a module is copied the first time it is written, so the model must hold its base
    weights when handed over and nothing else may change the modules it manages.
    """

    def __init__(self, model: torch.nn.Module, load: Callable[[str], Shifts]):
        self.model = model
        self._load = load
        self._modules = dict(model.named_modules())
        self._base: dict[str, torch.Tensor] = {}
        self._totals: dict[str, torch.Tensor] = {}
        self.applied: tuple[Entry, ...] = ()

    def plan(self, entries: Sequence[Entry]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(new float64 totals, new weights) for ``entries``, without touching the model.

        When ``entries`` extends what is applied, only the new shifts are added to the running
        totals; the additions happen in the same order as a full recomputation, so the result is
        bit-for-bit the same.
        """
        entries = tuple(entries)
        n = len(self.applied)
        if entries[:n] == self.applied:
            totals, todo = dict(self._totals), entries[n:]
        else:
            totals, todo = {}, entries
        fresh: set[str] = set()  # totals created by this plan, safe to add into in place
        for _, digest in todo:
            for name, shift in self._load(digest).items():
                if name not in fresh:
                    start = totals.get(name)
                    totals[name] = torch.zeros(shift.shape, dtype=torch.float64) if start is None else start.clone()
                    fresh.add(name)
                totals[name].add_(shift)  # float32 -> float64 is exact; the sum is float64, in id order
        weights = {}
        for name in set(self._base) | set(totals):
            base = self._base.get(name)
            if base is None:
                base = self._modules[name].weight.detach().to("cpu", copy=True)
            if name in totals:
                weights[name] = torch.add(totals[name], base).to(base.dtype)  # float64 + base, added once
            else:
                weights[name] = base
        return totals, weights

    @torch.no_grad()
    def write(self, entries: Sequence[Entry], planned) -> None:
        """Copy planned weights into the model (fast: meant to run under a serving lock)."""
        totals, weights = planned
        for name, value in weights.items():
            weight = self._modules[name].weight
            if name not in self._base:
                self._base[name] = weight.detach().to("cpu", copy=True)
            weight.copy_(value.to(weight.device))
        self._totals, self.applied = totals, tuple(entries)

    def sync(self, entries: Sequence[Entry]) -> None:
        """Make the model's weights those of ``entries`` (nothing to do if they already are)."""
        entries = tuple(entries)
        if entries != self.applied:
            self.write(entries, self.plan(entries))

    def current(self) -> dict[str, torch.Tensor]:
        """The managed modules' weights as they are now (for copying to another model)."""
        return {name: self._modules[name].weight.detach() for name in self._base}
