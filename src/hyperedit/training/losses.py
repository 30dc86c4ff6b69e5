"""LM-side losses of meta-training, backpropagated into the edited weights' ``.grad``.

Both functions run with a delta applied to weights that require grad (see
``hyperedit.lm.trainable_weights``), so after them each edited weight's ``.grad`` holds dL/dS.
Each example weighs the same, however the examples are chunked: chunk losses are sums of
per-example means divided by the total number of examples. Examples are (prompt, target) pairs or
``hyperedit.prefix.PrefixExamples`` (cached hidden states: only the layers above them run).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..delta import EditDelta
from ..lm import target_logits
from ..prefix import encoded_batches, passes_for
from ..requests import EditRequest


def rephrase_examples(requests: list[EditRequest]) -> list[tuple[str, str]]:
    """(prompt, target) pairs of the generalisation loss: every rephrasing, else the prompt itself."""
    pairs = []
    for r in requests:
        texts = r.rephrasings or (r.prompt,)
        pairs.extend((text, r.target) for text in texts)
    return pairs


def locality_examples(requests: list[EditRequest]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of the locality loss: the unrelated prompts that have an answer."""
    return [(loc.prompt, loc.answer) for r in requests for loc in r.locality if loc.answer]


def generalization_loss(adapter, pairs, delta: EditDelta, batch_size: int, backward: bool = True,
                        coef: float = 1.0, total_examples: int | None = None) -> float:
    """Cross-entropy of the targets on the edited model; ``coef`` times it backward (unless not
    asked); returns the mean loss (without ``coef``).

    ``total_examples``: the divisor of the mean when ``pairs`` are one rank's share of a
    data-parallel batch (the batch's number of examples; the ranks' losses then add up)."""
    if not len(pairs):
        return 0.0
    count = total_examples or len(pairs)
    total = 0.0
    with delta.applied(adapter.model), passes_for(adapter, pairs), torch.set_grad_enabled(backward):
        for batch in encoded_batches(adapter, pairs, batch_size):
            out = target_logits(adapter, batch)
            loss = out.per_example_mean(out.token_nll()).sum() / count
            if backward:
                (coef * loss).backward()
            total += float(loss.detach())
    return total


def reference_log_probs(adapter, pairs, batch_size: int) -> list[torch.Tensor]:
    """Unedited log-probabilities at the answer positions of ``pairs``, one tensor per chunk."""
    if getattr(pairs, "final", None) is not None:
        return pairs.reference_log_probs(adapter, batch_size)
    out = []
    with torch.no_grad(), passes_for(adapter, pairs):
        for batch in encoded_batches(adapter, pairs, batch_size):
            out.append(target_logits(adapter, batch).logits.float().log_softmax(-1))
    return out


def locality_loss(adapter, pairs, delta: EditDelta, batch_size: int, coef: float = 1.0,
                  backward: bool = True, references: list[torch.Tensor] | None = None,
                  total_examples: int | None = None) -> float:
    """``coef * KL(unedited || edited)`` over the answer positions of unrelated prompts; backward
    (unless not asked); returns the mean KL (without ``coef``). ``references``: precomputed
    ``reference_log_probs`` (else computed here); ``total_examples`` as in ``generalization_loss``."""
    if not len(pairs) or (coef == 0 and backward):
        return 0.0
    count = total_examples or len(pairs)
    if references is None:
        references = reference_log_probs(adapter, pairs, batch_size)
    total = 0.0
    with delta.applied(adapter.model), passes_for(adapter, pairs), torch.set_grad_enabled(backward):
        for reference, batch in zip(references, encoded_batches(adapter, pairs, batch_size)):
            out = target_logits(adapter, batch)
            log_probs = out.logits.float().log_softmax(-1)
            kl = F.kl_div(log_probs, reference, log_target=True, reduction="none").sum(-1)
            loss = out.per_example_mean(kl).sum() / count
            if backward:
                (coef * loss).backward()
            total += float(loss.detach())
    return total
