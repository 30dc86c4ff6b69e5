"""Token-by-token decoding for the OpenAI endpoints: greedy or sampled, seeded, with log-probabilities.

Written out (rather than ``model.generate``) so that a request's ``seed`` drives its own
``torch.Generator`` (reproducible whatever other requests run at the same time), and so that the
log-probability of every prompt and generated token is at hand for ``logprobs``/``echo``.
Temperature and nucleus filtering are transformers' own logits warpers. Reported log-probabilities
are the model's (log-softmax of its logits, before temperature or top-p).
"""
from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper


@dataclass
class Sampling:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    top_logprobs: int | None = None  # alternatives reported per token; None = no log-probabilities


@dataclass
class Sequence:
    """One generated continuation: its tokens (eos included when generated), their log-probabilities
    and top alternatives, and why it ended."""
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str = "length"


@dataclass
class Decoded:
    prompt_logprobs: list[float | None]  # None for the first prompt token
    prompt_top: list[list[tuple[int, float]] | None]
    sequences: list[Sequence]


def _top(logp: torch.Tensor, k: int) -> list[tuple[int, float]]:
    values, ids = logp.topk(k)
    return list(zip(ids.tolist(), values.tolist()))


def _forward(model, ids: torch.Tensor, cache):
    """One forward with a KV cache (the keyword is ``cache`` in newer transformers,
    ``past_key_values`` before); returns the logits and the cache."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True, **({name: cache} if cache is not None else {}))
    return out.logits, getattr(out, name, None)


@torch.no_grad()
def decode(model, prompt_ids: list[int], max_new: int, sampling: Sampling, eos_id: int | None,
           should_stop: Callable[[int, list[int]], bool], want_prompt_logprobs: bool = False) -> Decoded:
    """Continue ``prompt_ids`` ``sampling.n`` times; ``should_stop(i, ids)`` ends sequence ``i``
    early (a stop string appeared)."""
    n, k = sampling.n, sampling.top_logprobs
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids] * n, dtype=torch.long, device=device)
    all_logits, cache = _forward(model, ids, None)
    prompt_lp, prompt_top = [], []
    if want_prompt_logprobs:
        logp = torch.log_softmax(all_logits[0, :-1].float(), -1)
        chosen = logp.gather(1, ids[0, 1:, None]).squeeze(1).tolist()
        prompt_lp = [None] + chosen
        prompt_top = [None] + ([_top(row, k) for row in logp] if k else [[] for _ in chosen])
    logits = all_logits[:, -1].float()
    generator = torch.Generator(device="cpu").manual_seed(
        sampling.seed if sampling.seed is not None else random.getrandbits(63))
    warpers = [TemperatureLogitsWarper(sampling.temperature)] if sampling.temperature > 0 else []
    if sampling.temperature > 0 and sampling.top_p < 1:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    seqs = [Sequence() for _ in range(n)]
    done = [False] * n
    for step in range(max_new):
        logp = torch.log_softmax(logits, -1)
        if sampling.temperature == 0:
            nxt = logits.argmax(-1)
        else:
            scores = logits
            for warp in warpers:
                scores = warp(ids, scores)
            probs = torch.softmax(scores, -1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)
        for i, seq in enumerate(seqs):
            if done[i]:
                continue
            token = int(nxt[i])
            seq.ids.append(token)
            seq.logprobs.append(float(logp[i, token]))
            seq.top.append(_top(logp[i], k) if k else [])
            if token == eos_id or should_stop(i, seq.ids):
                done[i], seq.finish_reason = True, "stop"
        if all(done) or step == max_new - 1:
            break
        ids = torch.cat([ids, nxt[:, None]], 1)
        step_logits, cache = _forward(model, nxt[:, None], cache)
        logits = step_logits[:, -1].float()
    return Decoded(prompt_lp, prompt_top, seqs)
