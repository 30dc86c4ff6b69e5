"""Validation of a meta-training run: the editor edits every validation request at once and the
edited model is scored (ES, GS, LS).

Through ``editor.edit`` and ``hyperedit.eval.evaluate``, or, with a fact cache of the validation
requests (``FactCache``), on the cached texts: ES/GS are teacher-forced target accuracy on the
prompts/rephrasings, LS the agreement with the unedited argmax on the locality prompts that have
an answer (per request, then averaged). In a data-parallel run each rank scores its share and the
means are reduced over the ranks.
"""
from __future__ import annotations

import time
from typing import Callable

from ..delta import EditDelta
from ..distributed import World, all_reduce_floats, shard


class Validator:
    """Scores ``editor`` on ``val``; the locality reference (and ``contrast_rows`` of the
    validation requests) are computed once, on the unedited model, at the first validation."""

    def __init__(self, editor, lm, val: list, world: World, contrast_rows: Callable[[list, list[int]], dict | None]):
        self.editor, self.lm, self.val, self.world = editor, lm, val, world
        self.contrast_rows = contrast_rows
        self.facts = None  # the validation requests' ``FactCache``, when the run has one
        self._reference = None
        self._rows: dict | None = None

    def metrics(self) -> dict:
        return self._cached() if self.facts is not None else self._full()

    def _reduced_means(self, columns: dict[str, list]) -> dict:
        """Means over all ranks of per-request values (None: no value), each rank holding its share."""
        local = [(sum(v for v in values if v is not None), sum(v is not None for v in values))
                 for values in columns.values()]
        totals = all_reduce_floats([x for pair in local for x in pair], self.world)
        return {key: (totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else None)
                for i, key in enumerate(columns)}

    def _full(self) -> dict:
        """Through ``editor.edit`` and ``hyperedit.eval.evaluate`` (no caches); with several ranks,
        the edit splits the requests itself and each rank scores its share of them."""
        from ..eval import evaluate, locality_reference

        adapter, mine = self.lm.adapter, shard(self.val, self.world)
        if self._reference is None:
            self._reference = locality_reference(adapter, mine)
        start = time.perf_counter()
        delta = self.editor.edit(self.lm, self.val)
        seconds = time.perf_counter() - start
        with delta.applied(self.lm.model):
            metrics, rows = evaluate(adapter, mine, self._reference)
        if self.world.size == 1:
            return {**metrics, "edit_seconds": round(seconds, 3)}
        keys = [k for k in ("ES", "GS", "LS", "LS_data") if k in rows[0]]
        return {**self._reduced_means({k: [row[k] for row in rows] for k in keys}), "edit_seconds": round(seconds, 3)}

    def _cached(self) -> dict:
        """ES/GS: teacher-forced target accuracy on prompts/rephrasings; LS: agreement with the
        unedited argmax on the locality prompts with an answer (per request, then averaged)."""
        from ..eval.metrics import agreement, mean, score_examples

        adapter, facts, bs = self.lm.adapter, self.facts, self.editor.config.lm_batch_size
        everything = shard(list(range(len(self.val))), self.world)  # this rank's share
        loc = facts.locality_examples(everything)
        if self._reference is None:
            self._reference = [s.predicted for s in score_examples(adapter, loc, bs)]
        self.editor.nets.eval()
        if self._rows is None:  # the unedited model and the same requests at every validation
            self._rows = self.contrast_rows(self.val, everything) or {}
        _, shifts = self.editor.predict(facts.edit_cache(everything), self.world, rows=self._rows)
        delta = EditDelta.from_in_out(adapter, shifts, editor=self.editor.name)
        with delta.applied(self.lm.model):
            es = score_examples(adapter, facts.prompt_examples(everything), bs)
            gs = score_examples(adapter, facts.rephrase_examples(everything), bs)
            ls = score_examples(adapter, loc, bs)

        def per_request(values, offsets):
            owners = facts.owners(offsets, everything)
            buckets = [[] for _ in everything]
            for owner, v in zip(owners, values):
                buckets[owner].append(v)
            return [mean(b) for b in buckets]

        return self._reduced_means({
            "ES": [s.accuracy for s in es],
            "GS": per_request([s.accuracy for s in gs], facts.rephrase_offsets),
            "LS": per_request([agreement(r, s.predicted) for r, s in zip(self._reference, ls)],
                              facts.locality_offsets)})
