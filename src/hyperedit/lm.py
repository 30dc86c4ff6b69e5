"""Cheap language-model passes: logits only where a target token is predicted.

Causal LMs whose logits are ``lm_head(last hidden state)`` skip the vocabulary projection on
every prompt token; only the positions that predict a target token go through the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .models.adapters import ModelAdapter


@dataclass
class TargetLogits:
    """Logits at the positions predicting target tokens, flattened over the batch."""

    logits: torch.Tensor  # (n_tokens, vocab)
    targets: torch.Tensor  # (n_tokens,) target token ids
    example: torch.Tensor  # (n_tokens,) index of the example each token belongs to
    n_examples: int

    def token_nll(self) -> torch.Tensor:
        return F.cross_entropy(self.logits.float(), self.targets, reduction="none")

    def per_example_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a per-token quantity within each example."""
        total = torch.zeros(self.n_examples, dtype=values.dtype, device=values.device)
        count = torch.zeros(self.n_examples, dtype=values.dtype, device=values.device)
        total.index_add_(0, self.example, values)
        count.index_add_(0, self.example, torch.ones_like(values))
        return total / count.clamp_min(1)

    def loss(self) -> torch.Tensor:
        """Mean over examples of the mean target-token cross-entropy."""
        return self.per_example_mean(self.token_nll()).mean()


def prediction_mask(labels: torch.Tensor, seq2seq: bool) -> torch.Tensor:
    """(batch, seq) bool: positions whose output predicts a target token.

    For causal LMs position t predicts token t+1; for seq2seq the decoder position predicts its label.
    """
    if seq2seq:
        return labels != -100
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def target_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool: positions holding a target token (where editors read keys, ``token="ans"``)."""
    return labels != -100


def target_logits(adapter: ModelAdapter, batch: dict[str, torch.Tensor]) -> TargetLogits:
    """Run the model on an encoded batch and return logits at target-predicting positions."""
    model = adapter.model
    labels = batch["labels"]
    mask = prediction_mask(labels, adapter.is_seq2seq)
    if adapter.is_seq2seq:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=labels.clamp_min(0), use_cache=False)
        logits = out.logits[mask]
        targets = labels[mask]
    elif adapter.spec.fast_logits:
        hidden = model.base_model(**_inputs(batch), attention_mask=batch["attention_mask"],
                                  use_cache=False).last_hidden_state
        logits = adapter.head_logits(hidden[mask])
        targets = labels[:, 1:][mask[:, :-1]]
    else:
        out = model(**_inputs(batch), attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits[mask]
        targets = labels[:, 1:][mask[:, :-1]]
    example = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(mask)[mask]
    return TargetLogits(logits, targets, example, labels.shape[0])


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Token ids, or hidden states entering the first non-skipped layer (``hyperedit.prefix``)."""
    if "inputs_embeds" in batch:
        return {"inputs_embeds": batch["inputs_embeds"]}
    return {"input_ids": batch["input_ids"]}


class trainable_weights:
    """Context manager: only the weights of the named modules require grad inside the block.

    Backward then stops at the lowest of these modules, since nothing below needs a gradient.
    Gradients accumulated in ``.grad`` are left for the caller and cleared on exit.
    """

    def __init__(self, adapter: ModelAdapter, module_names: list[str]):
        self.weights = [adapter.weight(n) for n in module_names]

    def __enter__(self):
        self._before = [w.requires_grad for w in self.weights]
        for w in self.weights:
            w.requires_grad_(True)
        return self.weights

    def __exit__(self, *exc):
        for w, flag in zip(self.weights, self._before):
            w.grad = None
            w.requires_grad_(flag)
        return False


def iter_chunks(items: list, size: int):
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start:start + size]


TOKEN_SITES = ("ans", "all", "subject")


def subject_token_index(adapter: ModelAdapter, text: str, subject: str | None, start: int = 0) -> int:
    """Index of the last token of ``subject`` (first occurrence at or after char ``start``) in the
    tokenised (formatted) ``text``; the last token when ``subject`` is None. ValueError when the
    subject does not occur."""
    tok = adapter.tokenizer
    formatted = adapter.format_prompt(text)
    ids = tok(formatted, add_special_tokens=True)["input_ids"]
    if subject is None:
        return len(ids) - 1
    where = text.find(subject, start)
    if where < 0:
        raise ValueError(f"subject {subject!r} not found in prompt {text!r}")
    end = formatted.find(text) + where + len(subject)
    if getattr(tok, "is_fast", False):
        offsets = tok(formatted, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
        hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end]
        if hits:
            return hits[-1]
    return max(len(tok(formatted[:end], add_special_tokens=True)["input_ids"]) - 1, 0)


def site_mask(adapter: ModelAdapter, batch: dict, token: str, prompts: list[str],
              subjects: list[str | None] | None) -> torch.Tensor:
    """(batch, seq) bool: where an editor reads keys and value gradients. ``"ans"``: the positions
    that predict a target token (where the loss is); ``"all"``: every non-padding token;
    ``"subject"``: the last subject token of each prompt (MEMIT's key site; the last prompt token
    when a request has no subject), one position per example."""
    if token == "ans":
        return prediction_mask(batch["labels"], adapter.is_seq2seq)
    if token == "all":
        return batch["attention_mask"].bool() if not adapter.is_seq2seq else batch["labels"] != -100
    if adapter.is_seq2seq:
        raise ValueError("token='subject' supports decoder-only models")
    subjects = subjects if subjects is not None else [None] * len(prompts)
    mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for i, (prompt, subject) in enumerate(zip(prompts, subjects)):
        mask[i, subject_token_index(adapter, prompt, subject if subject and subject in prompt else None)] = True
    return mask


def _site_batches(adapter: ModelAdapter, prompts: list[str], targets: list[str], chunk_size: int, token: str,
                  device, subjects: list[str | None] | None, captured):
    """Encoded batches of (prompt, target) in chunks, with ``captured.mask`` set to each batch's
    ``site_mask`` before it is yielded (the rows the hooks of ``hyperedit.hooks.capture`` keep)."""
    if token not in TOKEN_SITES:
        raise ValueError(f"token must be one of {', '.join(TOKEN_SITES)}")
    device = device or next(adapter.model.parameters()).device
    subjects = list(subjects) if subjects is not None else [None] * len(prompts)
    for chunk in iter_chunks(list(zip(prompts, targets, subjects)), chunk_size):
        batch = adapter.encode([p for p, _, _ in chunk], [t for _, t, _ in chunk], device=device)
        captured.mask = site_mask(adapter, batch, token, [p for p, _, _ in chunk], [s for _, _, s in chunk]).to(
            batch["input_ids"].device)
        yield batch


def cache_keys_and_value_grads(adapter: ModelAdapter, prompts: list[str], targets: list[str],
                               module_names: list[str], chunk_size: int = 16, token: str = "ans",
                               device=None, subjects: list[str | None] | None = None,
                               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Keys (module inputs) and value gradients (dLoss/d module output) of the edit loss.

    ``token`` picks the positions (``site_mask``; ``"subject"`` reads ``subjects``). Returns
    ``{module: (K (n_rows, d_in), G (n_rows, d_out))}``; the loss is the per-example mean target
    cross-entropy summed over examples, so each example's gradient does not depend on how examples
    are chunked.
    """
    from .hooks import capture

    with trainable_weights(adapter, module_names), capture(adapter.model, module_names) as cap:
        for batch in _site_batches(adapter, prompts, targets, chunk_size, token, device, subjects, cap):
            out = target_logits(adapter, batch)
            loss = out.per_example_mean(out.token_nll()).sum()
            loss.backward()
    # Tensor hooks fire in reverse layer order but once per chunk per module, in chunk order.
    return {name: (cap.key(name), cap.grad(name)) for name in module_names}


def cache_keys(adapter: ModelAdapter, prompts: list[str], targets: list[str], module_names: list[str],
               chunk_size: int = 16, token: str = "ans", device=None,
               subjects: list[str | None] | None = None) -> dict[str, torch.Tensor]:
    """Keys only (forward passes, no gradients) at the rows ``cache_keys_and_value_grads`` reads:
    ``{module: K (n_rows, d_in)}`` in the same order."""
    from .hooks import capture

    with torch.no_grad(), capture(adapter.model, module_names, grads=False) as cap:
        for batch in _site_batches(adapter, prompts, targets, chunk_size, token, device, subjects, cap):
            target_logits(adapter, batch)
    return {name: cap.key(name) for name in module_names}


def key_gram(adapter: ModelAdapter, prompts: list[str], targets: list[str], module_names: list[str],
             chunk_size: int = 16, token: str = "ans", subjects: list[str | None] | None = None,
             desc: str | None = None) -> dict[str, torch.Tensor]:
    """``K^T K`` (float64) of the keys ``cache_keys`` reads, per module, summed chunk by chunk so the
    keys of many prompts are never held at once: the rows with target 0 that a least-squares edit
    must keep (contrast rows). ``desc``: label of a progress bar over the chunks."""
    from .progress import progress

    subjects = list(subjects) if subjects is not None else [None] * len(prompts)
    chunks = list(iter_chunks(list(zip(prompts, targets, subjects)), chunk_size))
    grams: dict[str, torch.Tensor] = {}
    for chunk in progress(chunks, desc=desc, unit="chunk", enabled=desc is not None):
        keys = cache_keys(adapter, [p for p, _, _ in chunk], [t for _, t, _ in chunk], module_names,
                          chunk_size=len(chunk), token=token, subjects=[s for _, _, s in chunk])
        for name in module_names:
            k = keys[name].double()
            grams[name] = grams[name].addmm_(k.t(), k) if name in grams else k.t() @ k
    return grams
