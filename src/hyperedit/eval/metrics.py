"""Metrics of knowledge editing (see the project's algorithm notes).

Everything is teacher-forced and batched: one pass over (prompt, target) pairs yields, per pair,
the model's argmax tokens at the target positions and the mean target-token NLL, from which
accuracy (ES/GS/LS) and probability scores (CounterFact) are derived.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from ..lm import iter_chunks, target_logits
from ..prefix import encoded_batches, passes_for
from ..models.adapters import ModelAdapter
from ..models.limits import context_limit
from ..progress import progress


@dataclass
class PairScore:
    """Teacher-forced result for one (prompt, target) pair."""

    predicted: list[int]  # argmax token at each target position
    target: list[int]  # the target tokens
    mean_nll: float  # mean target-token negative log-likelihood

    @property
    def accuracy(self) -> float:
        return sum(p == t for p, t in zip(self.predicted, self.target)) / max(1, len(self.target))

    @property
    def prob(self) -> float:
        """Geometric-mean token probability, exp(-mean NLL)."""
        return math.exp(-self.mean_nll)


def score_pairs(adapter: ModelAdapter, prompts: list[str], targets: list[str], batch_size: int = 32,
                desc: str = "scoring") -> list[PairScore]:
    """Score every (prompt, target) pair in batches."""
    return score_examples(adapter, list(zip(prompts, targets)), batch_size, desc)


@torch.no_grad()
def score_examples(adapter: ModelAdapter, examples, batch_size: int = 32, desc: str = "scoring") -> list[PairScore]:
    """Score (prompt, target) pairs or cached prefixes (``hyperedit.prefix.PrefixExamples``) in batches."""
    results: list[PairScore] = []
    bar = progress(total=len(examples), desc=desc, unit="pair")
    with passes_for(adapter, examples):
        for batch in encoded_batches(adapter, examples, batch_size):
            out = target_logits(adapter, batch)
            results += pair_scores(out)
            bar.update(out.n_examples)
    bar.close()
    return results


def pair_scores(out) -> list[PairScore]:
    """One ``PairScore`` per example of a ``TargetLogits``."""
    nll = out.token_nll()
    predicted = out.logits.argmax(-1)
    results = []
    for i in range(out.n_examples):
        sel = out.example == i
        results.append(PairScore(predicted[sel].tolist(), out.targets[sel].tolist(),
                                 float(nll[sel].mean()) if sel.any() else float("nan")))
    return results


def mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def per_request_means(values: list[tuple[int, float]], n: int) -> list[float | None]:
    """Average the values that belong to the same request (index ``i`` of ``(i, value)``), so each of
    the ``n`` requests weighs the same; None for a request without values."""
    buckets: list[list[float]] = [[] for _ in range(n)]
    for i, v in values:
        buckets[i].append(v)
    return [mean(b) for b in buckets]


def agreement(reference: list[int], predicted: list[int]) -> float:
    """Fraction of positions where two argmax sequences agree (locality against the unedited model)."""
    return sum(a == b for a, b in zip(reference, predicted)) / max(1, len(reference))


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """Weighted n-gram entropy (bits) of a text's whitespace tokens; low values mean repetition."""
    tokens = text.split()
    entropies = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        if total == 0:
            entropies.append(0.0)
            continue
        entropies.append(w * -sum(c / total * math.log2(c / total) for c in grams.values()))
    return sum(entropies) / len(entropies)


@torch.no_grad()
def generate(adapter: ModelAdapter, prompts: list[str], max_new_tokens: int = 30, batch_size: int = 16) -> list[str]:
    """Greedy continuations (text after the prompt), never running past the model's context."""
    model, tok = adapter.model, adapter.tokenizer
    device = next(model.parameters()).device
    limit = context_limit(adapter)
    texts = []
    for chunk in progress(list(iter_chunks(prompts, batch_size)), desc="generating", unit="batch"):
        batch = adapter.encode_prompts(chunk, device=device)
        room = max_new_tokens if limit is None or adapter.is_seq2seq else limit - batch["input_ids"].shape[1]
        if min(room, max_new_tokens) < 1:
            texts.extend([""] * len(chunk))
            continue
        out = model.generate(**batch, max_new_tokens=min(room, max_new_tokens), do_sample=False,
                             pad_token_id=tok.pad_token_id)
        new = out if adapter.is_seq2seq else out[:, batch["input_ids"].shape[1]:]
        texts.extend(tok.batch_decode(new, skip_special_tokens=True))
    return texts
