"""Target vectors of locate-then-edit: where the residual stream should be to say the new target.

For each request, a vector ``delta`` (d,) is added to the output of block ``z_layer`` at the last
subject token and optimised to maximise log P(target | prefix + prompt) over a few prefixes, with a
KL term keeping the distribution after the subject's "essence" prompt ("{subject} is a"), a small
weight decay and a norm clamp. All requests are optimised together (one forward over every
request x prefix per step, chunked); each request stops once its target NLL is below a threshold,
so finished requests cost nothing. Nothing below ``z_layer`` requires grad.

Nothing below the injection point changes either, so where the model family allows it the hidden
states entering block ``z_layer + 1`` are computed once (``hyperedit.prefix``) and every step runs
only the blocks above ``z_layer`` and the head at the target positions (same results to float
rounding; on Gemma-3-270M with ``z_layer`` 9 of 18 a step costs about a third less).

Optimisation is independent per request, so results can be cached per request (``TargetCache``)
and shared between editors that edit the same model state with the same target options.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ...atomic import atomic_file
from ...hooks import edit_output
from ...lm import prediction_mask
from ...models import LoadedModel
from ...prefix import PrefixExamples, compute_prefix, frozen_prefix, supports_prefix
from ...progress import progress as progress_bar
from ...requests import EditRequest
from .base import LocateConfig, layer_module, subject_position, subjects_or_last

log = logging.getLogger(__name__)
_B1, _B2, _EPS = 0.9, 0.999, 1e-8


@dataclass
class Targets:
    """Per request: target ``z`` and unedited ``h`` (n, d) at the last subject token of block
    ``z_layer``; the planned residual is ``z - h``."""

    z: torch.Tensor
    h: torch.Tensor
    steps: torch.Tensor  # (n,) optimisation steps used
    nll: torch.Tensor  # (n,) last measured mean target NLL
    time_s: float  # compute time of these targets (cached ones count their original time)
    n_cached: int = 0
    cached_time_s: float = 0.0  # the part of time_s spent earlier, when the cached ones were computed

    @property
    def residual(self) -> torch.Tensor:
        return self.z - self.h


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter's sum and sum of squares: changes whenever an edit is applied."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            q = p.detach().double()
            digest.update(f"{name}:{float(q.sum()):.12e}:{float((q * q).sum()):.12e}".encode())
    return digest.hexdigest()[:16]


class TargetCache:
    """In-memory per-request cache of target vectors, keyed by model state, options and request.

    ``pinned_state`` (a ``weights_fingerprint``, e.g. of the unedited model) replaces the current
    model state in the key: targets computed on that model are then reused after earlier edits were
    applied (a cheaper approximation of sequential editing, where targets would be re-optimised on
    the edited model; residuals are still taken against the current model when they are written).
    """

    def __init__(self, pinned_state: str | None = None):
        self.pinned_state = pinned_state
        self._store: dict[str, tuple] = {}

    @classmethod
    def for_model(cls, model, pin: bool = False, path=None) -> "TargetCache":
        """A cache for runs starting from ``model``: pinned to its current weights when ``pin``,
        with the entries of ``path`` (if given and present) loaded."""
        cache = cls(pinned_state=weights_fingerprint(model) if pin else None)
        return cache.load(path) if path else cache

    @staticmethod
    def _hash(key: tuple) -> str:
        return hashlib.sha256(repr(key).encode()).hexdigest()[:24]

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: tuple):
        return self._store.get(self._hash(key))

    def put(self, key: tuple, value: tuple) -> None:
        self._store[self._hash(key)] = value

    def save(self, path) -> None:
        """Write the cache to ``path`` (safetensors; the entries' scalars in its metadata)."""
        tensors, meta = {}, {}
        for k, (z, h, steps, nll, t) in self._store.items():
            tensors[f"z/{k}"], tensors[f"h/{k}"] = z.contiguous(), h.contiguous()
            meta[k] = [steps, nll, t]
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"entries": json.dumps(meta)})

    def load(self, path) -> "TargetCache":
        """Add the entries saved in ``path`` (a missing file adds nothing)."""
        if not Path(path).is_file():
            return self
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["entries"])
            for k, (steps, nll, t) in meta.items():
                self._store[k] = (f.get_tensor(f"z/{k}"), f.get_tensor(f"h/{k}"), steps, nll, t)
        return self


def _options_key(cfg: LocateConfig, z_layer: int, prefixes: Sequence[str]) -> tuple:
    return (z_layer, tuple(prefixes), cfg.v_steps, cfg.v_lr, cfg.v_stop_nll, cfg.kl_factor,
            cfg.v_weight_decay, cfg.clamp_norm_factor)


def _logits_at(lm: LoadedModel, batch: dict, mask: torch.Tensor) -> torch.Tensor:
    """Logits at the ``mask`` positions; a frozen-prefix batch carries ``inputs_embeds`` (the hidden
    states entering the first live block) instead of ``input_ids``."""
    model = lm.model
    if "inputs_embeds" in batch:
        inputs = {"inputs_embeds": batch["inputs_embeds"].to(model.dtype)}
    elif lm.adapter.spec.fast_logits:
        inputs = {"input_ids": batch["input_ids"]}
    else:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[mask]
    hidden = model.base_model(**inputs, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    return lm.adapter.head_logits(hidden[mask])


def compute_targets(lm: LoadedModel, requests: Sequence[EditRequest], z_layer: int, prefixes: Sequence[str],
                    cfg: LocateConfig, cache: TargetCache | None = None, progress: bool = True,
                    reuse_prefix: bool = True) -> Targets:
    """Target vectors for all requests (see module docstring); ``prefixes[0]`` must be ``""``.

    ``reuse_prefix=False`` runs every step from the embeddings (the reference for the frozen-prefix
    path; both give the same targets to float rounding)."""
    if not prefixes or prefixes[0] != "":
        raise ValueError('prefixes must start with the bare context ""')
    start = time.perf_counter()
    n, d = len(requests), lm.model.config.hidden_size
    z, h = torch.zeros(n, d), torch.zeros(n, d)
    steps, nll = torch.zeros(n, dtype=torch.long), torch.zeros(n)
    cached_time, keys, todo = 0.0, [None] * n, list(range(n))
    if cache is not None:
        state = cache.pinned_state or weights_fingerprint(lm.model)
        base = (state, _options_key(cfg, z_layer, prefixes))
        keys = [base + ((r.prompt, r.target, r.subject),) for r in requests]
        todo = []
        for i, key in enumerate(keys):
            hit = cache.get(key)
            if hit is None:
                todo.append(i)
            else:
                z[i], h[i], steps[i], nll[i], t = hit
                cached_time += t
    if todo:
        zt, ht, st, nt = _optimise(lm, [requests[i] for i in todo], z_layer, prefixes, cfg, progress, reuse_prefix)
        z[todo], h[todo], steps[todo], nll[todo] = zt.cpu(), ht.cpu(), st, nt
        per = (time.perf_counter() - start) / len(todo)
        if cache is not None:
            for j, i in enumerate(todo):
                cache.put(keys[i], (z[i].clone(), h[i].clone(), int(steps[i]), float(nll[i]), per))
    own = time.perf_counter() - start
    dev = lm.device
    return Targets(z.to(dev), h.to(dev), steps, nll, own + cached_time, n_cached=n - len(todo),
                   cached_time_s=cached_time)


@dataclass(frozen=True)
class TargetRow:
    """One sequence of the target optimisation: ``request`` (its index), ``essence`` (the KL
    prompt "{subject} is a", else a rewrite prompt with one prefix), the ``text`` and ``target``,
    the ``position`` of the last subject token and the row's ``index`` among all rows."""

    request: int
    essence: bool
    text: str
    target: str
    position: int
    index: int


def _target_rows(lm: LoadedModel, requests: Sequence[EditRequest], prefixes: Sequence[str],
                 cfg: LocateConfig) -> list[TargetRow]:
    """Per request: a rewrite row per prefix, then its essence row (with a subject and ``kl_factor``)."""
    subjects = subjects_or_last(requests)
    rows: list[TargetRow] = []
    for j, r in enumerate(requests):
        for p in prefixes:
            text = p + r.prompt
            rows.append(TargetRow(j, False, text, r.target, subject_position(lm, text, subjects[j], len(p)), len(rows)))
        if r.subject is not None and cfg.kl_factor > 0:
            text = f"{r.subject} is a"
            rows.append(TargetRow(j, True, text, r.target, subject_position(lm, text, r.subject), len(rows)))
    return rows


def _live_batches(lm: LoadedModel, rows: list[TargetRow], z_layer: int, reuse_prefix: bool, batch_size: int):
    """``(batches, context)``: ``batches(chunk)`` encodes rows (by index) for one pass, ``context``
    wraps that pass. With a frozen prefix the hidden states entering block ``z_layer + 1`` (the
    unedited output of block ``z_layer``, where ``delta`` is added) are computed once here."""
    adapter, dev = lm.adapter, lm.device
    live = z_layer + 1
    if reuse_prefix and supports_prefix(adapter) and live < len(adapter.get_module(adapter.spec.layers)):
        examples: PrefixExamples = compute_prefix(adapter, [(r.text, r.target) for r in rows], live, batch_size,
                                                  desc="target prefixes")

        def batches(chunk):
            return next(examples.subset([r.index for r in chunk]).batches(len(chunk), dev))
        return batches, lambda: frozen_prefix(adapter, live)

    def encode(chunk):
        return adapter.encode([r.text for r in chunk], [r.target for r in chunk], device=dev)
    return encode, contextlib.nullcontext


def _optimise(lm: LoadedModel, requests: Sequence[EditRequest], z_layer: int, prefixes: Sequence[str],
              cfg: LocateConfig, progress: bool, reuse_prefix: bool = True):
    dev = lm.device
    n, d, c = len(requests), lm.model.config.hidden_size, len(prefixes)
    rows = _target_rows(lm, requests, prefixes, cfg)
    encode, passes = _live_batches(lm, rows, z_layer, reuse_prefix, cfg.batch_size)
    delta = torch.zeros(n, d, device=dev, requires_grad=True)
    m1, v1 = torch.zeros(n, d, device=dev), torch.zeros(n, d, device=dev)
    t = torch.zeros(n, device=dev)
    h = torch.zeros(n, d, device=dev)
    kl_init: dict[int, torch.Tensor] = {}
    active = torch.ones(n, dtype=torch.bool)
    steps, last_nll = torch.zeros(n, dtype=torch.long), torch.full((n,), float("nan"))
    block = layer_module(lm, z_layer)
    bar = progress_bar(range(cfg.v_steps), desc="target vectors", enabled=progress)
    for step in bar:
        act_rows = [row for row in rows if active[row.request]]
        if not act_rows:
            break
        nll_sum = torch.zeros(n)
        for s in range(0, len(act_rows), cfg.batch_size):
            chunk = act_rows[s:s + cfg.batch_size]
            batch = encode(chunk)
            req = torch.tensor([r.request for r in chunk], device=dev)
            pos = torch.tensor([r.position for r in chunk], device=dev)
            arange = torch.arange(len(chunk), device=dev)
            bare = torch.tensor([not r.essence and r.text == requests[r.request].prompt for r in chunk], device=dev)

            def inject(inputs, out, req=req, pos=pos, arange=arange, bare=bare):
                if step == 0:
                    h[req[bare]] = out[arange[bare], pos[bare]].detach()
                add = torch.zeros_like(out).index_put((arange, pos), delta[req].to(out.dtype))
                return out + add

            mask = prediction_mask(batch["labels"], False)
            kinds = torch.tensor([int(r.essence) for r in chunk], device=dev)  # 1: essence (KL)
            first = mask & (mask.cumsum(1) == 1)
            mask = torch.where((kinds == 1)[:, None], first, mask)
            with passes(), edit_output(lm.model, block, inject):
                logits = _logits_at(lm, batch, mask).float()
            tok_row = arange[:, None].expand_as(mask)[mask]
            targets = batch["labels"][:, 1:][mask[:, :-1]]
            rewrite_tok = kinds[tok_row] == 0
            tok_nll = F.cross_entropy(logits[rewrite_tok], targets[rewrite_tok], reduction="none")
            row_sum = torch.zeros(len(chunk), device=dev).index_add_(0, tok_row[rewrite_tok], tok_nll)
            row_cnt = torch.zeros(len(chunk), device=dev).index_add_(0, tok_row[rewrite_tok],
                                                                     torch.ones_like(tok_nll))
            row_nll = row_sum / row_cnt.clamp_min(1)
            loss = (row_nll * (kinds == 0)).sum() / c
            kl_rows = (kinds == 1).nonzero().flatten()
            if len(kl_rows):
                logp = F.log_softmax(logits[~rewrite_tok], dim=-1)  # one position per essence row
                ref = []
                for k, r in enumerate(kl_rows.tolist()):
                    j = chunk[r].request
                    if j not in kl_init:
                        kl_init[j] = logp[k].detach()
                    ref.append(kl_init[j])
                ref = torch.stack(ref)
                loss = loss + cfg.kl_factor * (ref.exp() * (ref - logp)).sum()
            loss.backward()
            nll_sum.index_add_(0, req.cpu(), (row_nll.detach() * (kinds == 0)).cpu() / c)
        with torch.no_grad():
            act = active.nonzero().flatten()
            last_nll[act] = nll_sum[act]
            done = act[nll_sum[act] < cfg.v_stop_nll]
            active[done] = False
            upd = active.nonzero().flatten().to(dev)
            if len(upd):
                hn2 = (h[upd] * h[upd]).sum(-1, keepdim=True).clamp_min(1e-12)
                g = delta.grad[upd] + 2 * cfg.v_weight_decay * delta[upd] / hn2
                t[upd] += 1
                m1[upd] = _B1 * m1[upd] + (1 - _B1) * g
                v1[upd] = _B2 * v1[upd] + (1 - _B2) * g * g
                mhat = m1[upd] / (1 - _B1 ** t[upd])[:, None]
                vhat = v1[upd] / (1 - _B2 ** t[upd])[:, None]
                new = delta[upd] - cfg.v_lr * mhat / (vhat.sqrt() + _EPS)
                limit = cfg.clamp_norm_factor * hn2.sqrt()
                new = new * (limit / new.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                delta[upd] = new
                steps[upd.cpu()] += 1
            delta.grad = None
        bar.set_postfix(active=int(active.sum()), nll=f"{float(last_nll.nanmean()):.3f}")
    bar.close()
    log.info("target vectors: %d requests, mean steps %.1f, mean final NLL %.3f, %d unconverged",
             n, float(steps.float().mean()), float(last_nll.nanmean()), int(active.sum()))
    z = (h + delta).detach()
    return z, h, steps, last_nll
