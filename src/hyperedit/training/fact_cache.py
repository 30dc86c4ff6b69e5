"""Per-fact caches of meta-training: what a training step reads and the unedited model fixes.

For one-shot hypernetwork editors (MALMEN, MEND) a request's keys and value gradients at its
answer positions depend only on the unedited model, and so do the hidden states entering the
lowest edited layer of its rephrasings and locality prompts, and the unedited locality
distribution. ``FactCache`` computes all of them once (chunked, sorted by length, progress bar);
a training step then runs only the hypernetwork and the edited layers + head.

Saved as one safetensors file whose metadata holds the cache key (model identity and a checksum of
its weights, edited modules, token mode, a fingerprint of the requests' text): a file whose key
differs from the wanted one is never used; it is rebuilt, and the log says which parts differed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_file
from ..errors import HyperEditError
from ..lm import cache_keys_and_value_grads, iter_chunks, site_mask
from ..prefix import PrefixExamples, compute_prefix
from ..progress import progress
from ..requests import EditRequest
from .losses import locality_examples, rephrase_examples

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def requests_fingerprint(requests: list[EditRequest]) -> str:
    """Hash of every text a training step reads (prompt, target, rephrasings, locality)."""
    digest = hashlib.sha256()
    for r in requests:
        loc = [(x.prompt, x.answer) for x in r.locality]
        digest.update(json.dumps([r.prompt, r.target, list(r.rephrasings), loc]).encode())
    return digest.hexdigest()[:24]


def weights_checksum(model: torch.nn.Module) -> str:
    """A cheap checksum of every parameter (float64 sums), so a fine-tuned copy gets another key."""
    with torch.no_grad():
        sums = [f"{float(p.double().sum()):.10e}/{float(p.double().abs().sum()):.10e}" for p in model.parameters()]
    return hashlib.sha256("|".join(sums).encode()).hexdigest()[:24]


def cache_key(adapter, requests: list[EditRequest], names: list[str], token: str, prompts: bool) -> dict:
    """Everything the cached tensors depend on."""
    return {"format": CACHE_FORMAT, "model": adapter.identity(), "weights": weights_checksum(adapter.model),
            "modules": list(names), "token": token, "prompts": bool(prompts),
            "data": requests_fingerprint(requests), "n_requests": len(requests)}


def _offsets(counts: list[int]) -> torch.Tensor:
    return torch.tensor([0] + list(counts), dtype=torch.long).cumsum(0)


def _rows(offsets: torch.Tensor, indices: list[int]) -> list[int]:
    return [j for i in indices for j in range(int(offsets[i]), int(offsets[i + 1]))]


@dataclass
class FactCache:
    """Cached training inputs of a list of requests (index i = request i).

    ``keys``/``grads``: per module, flat (tokens, d) delimited per request by ``token_offsets``;
    ``rephrase``/``locality``: cached prefixes of the generalisation and locality examples, request
    i owning examples ``[offsets[i], offsets[i+1])`` (locality with its unedited final hidden
    state); ``prompts``: the edit prompts' prefixes (validation ES), or None.
    """

    keys: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    token_offsets: torch.Tensor
    rephrase: PrefixExamples
    rephrase_offsets: torch.Tensor
    locality: PrefixExamples
    locality_offsets: torch.Tensor
    prompts: PrefixExamples | None = None

    def edit_cache(self, indices: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Keys and value gradients of the requests ``indices``, concatenated in that order."""
        rows = [slice(int(self.token_offsets[i]), int(self.token_offsets[i + 1])) for i in indices]
        return {name: (torch.cat([self.keys[name][r] for r in rows]), torch.cat([self.grads[name][r] for r in rows]))
                for name in self.keys}

    def rephrase_examples(self, indices: list[int]) -> PrefixExamples:
        return self.rephrase.subset(_rows(self.rephrase_offsets, indices))

    def locality_examples(self, indices: list[int]) -> PrefixExamples:
        return self.locality.subset(_rows(self.locality_offsets, indices))

    def prompt_examples(self, indices: list[int]) -> PrefixExamples:
        return self.prompts.subset(list(indices))

    def owners(self, offsets: torch.Tensor, indices: list[int]) -> list[int]:
        """For the examples of ``indices`` (as selected above), the position in ``indices`` of their request."""
        return [k for k, i in enumerate(indices) for _ in range(int(offsets[i]), int(offsets[i + 1]))]

    # ----- persistence ------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"token_offsets": self.token_offsets, "rephrase_offsets": self.rephrase_offsets,
               "locality_offsets": self.locality_offsets}
        for name in self.keys:
            out[f"keys.{name}"], out[f"grads.{name}"] = self.keys[name], self.grads[name]
        out.update(self.rephrase.tensors("rephrase"))
        out.update(self.locality.tensors("locality"))
        if self.prompts is not None:
            out.update(self.prompts.tensors("prompts"))
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], names: list[str], layer: int) -> "FactCache":
        return cls({n: t[f"keys.{n}"] for n in names}, {n: t[f"grads.{n}"] for n in names}, t["token_offsets"],
                   PrefixExamples.from_tensors(t, "rephrase", layer), t["rephrase_offsets"],
                   PrefixExamples.from_tensors(t, "locality", layer), t["locality_offsets"],
                   PrefixExamples.from_tensors(t, "prompts", layer) if "prompts.hidden" in t else None)


def build_fact_cache(adapter, requests: list[EditRequest], names: list[str], token: str = "ans",
                     batch_size: int = 32, prompts: bool = False) -> FactCache:
    """Compute a ``FactCache`` (one forward + backward per request, forwards of its texts)."""
    layer = min(adapter.layer_of(n) for n in names)
    counts, lengths = [], []
    for r in requests:  # rows per request: the positions the key site reads
        batch = adapter.encode([r.prompt], [r.target])
        counts.append(int(site_mask(adapter, batch, token, [r.prompt], [r.subject]).sum()))
        lengths.append(batch["input_ids"].shape[1])
    order = sorted(range(len(requests)), key=lambda i: (lengths[i], i))
    per_request: list[dict | None] = [None] * len(requests)
    bar = progress(total=len(requests), desc="keys and value gradients", unit="fact")
    for chunk in iter_chunks(order, batch_size):
        raw = cache_keys_and_value_grads(adapter, [requests[i].prompt for i in chunk],
                                         [requests[i].target for i in chunk], names, chunk_size=batch_size, token=token,
                                         subjects=[requests[i].subject for i in chunk])
        start = 0
        for i in chunk:
            part = slice(start, start + counts[i])
            per_request[i] = {n: (k[part].float(), g[part].float()) for n, (k, g) in raw.items()}
            start += counts[i]
        bar.update(len(chunk))
    bar.close()
    keys = {n: torch.cat([p[n][0] for p in per_request]) for n in names}
    grads = {n: torch.cat([p[n][1] for p in per_request]) for n in names}
    reph = [rephrase_examples([r]) for r in requests]
    loc = [locality_examples([r]) for r in requests]
    rephrase = compute_prefix(adapter, [p for x in reph for p in x], layer, batch_size, desc="rephrasing prefixes")
    locality = compute_prefix(adapter, [p for x in loc for p in x], layer, batch_size, final=True,
                              desc="locality prefixes")
    prompt_cache = None
    if prompts:
        prompt_cache = compute_prefix(adapter, [(r.prompt, r.target) for r in requests], layer, batch_size,
                                      desc="prompt prefixes")
    return FactCache(keys, grads, _offsets(counts), rephrase, _offsets([len(x) for x in reph]), locality,
                     _offsets([len(x) for x in loc]), prompt_cache)


def load_or_build(path: str | Path | None, adapter, requests: list[EditRequest], names: list[str], token: str = "ans",
                  batch_size: int = 32, prompts: bool = False) -> FactCache:
    """The cache at ``path`` when its key matches; otherwise built (and written there, atomically).

    ``path`` None keeps the cache in memory only.
    """
    key = json.loads(json.dumps(cache_key(adapter, requests, names, token, prompts), sort_keys=True))
    layer = min(adapter.layer_of(n) for n in names)
    if path is not None and os.path.lexists(path):
        stored = _stored_key(Path(path))
        if stored is None:  # never replace a file that is not one of ours
            raise HyperEditError(f"{path}: exists and is not a fact cache; choose another --cache-dir")
        if stored == key:
            with safe_open(str(path), framework="pt") as f:
                log.info("fact cache %s: key matches, reused", path)
                return FactCache.from_tensors({k: f.get_tensor(k) for k in f.keys()}, names, layer)
        differ = sorted(k for k in key if stored.get(k) != key[k])
        log.warning("fact cache %s is stale (%s differ): rebuilding it", path, ", ".join(differ) or "format")
    log.info("building fact cache for %d requests (layers from %d up run per step)", len(requests), layer)
    cache = build_fact_cache(adapter, requests, names, token, batch_size, prompts)
    if path is not None:
        with atomic_file(path) as tmp:
            save_file(cache.tensors(), str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    return cache


def _stored_key(path: Path) -> dict | None:
    """The key a fact cache file was written with, or None when ``path`` is not a fact cache."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta["key"]) if "key" in meta else None
    except (OSError, ValueError, SafetensorError):
        return None
