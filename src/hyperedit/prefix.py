"""Frozen prefix: hidden states entering one layer, computed once, and passes that start there.

When only layers ``>= layer`` change (meta-training edits the upper MLPs), the hidden state
entering ``layer`` of a fixed text never changes. ``compute_prefix`` runs the model once over
(prompt, target) pairs (chunks sorted by length, so little padding) and keeps, per example, that
hidden state (and optionally the final hidden state at the target-predicting positions, from
which the unedited logits follow with one head multiplication). ``PrefixExamples.batches`` then
yields batches that ``hyperedit.lm.target_logits`` runs from ``layer`` up, inside
``frozen_prefix``: the layers below return their input unchanged.

Only decoder-only families whose base model takes ``inputs_embeds`` as the hidden state itself
(no added position embedding or scaling) are supported; ``supports_prefix`` says which. Gemma 3
qualifies: its embedding scale lives in the embedding module, and rotary positions and the
sliding-window masks are rebuilt from the attention mask in every pass.
Padding is on the right and attention causal, so an example's hidden states do not depend on the
batch it was computed in (to float rounding).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .hooks import read_input
from .lm import iter_chunks, prediction_mask
from .progress import progress

# Families whose base model uses inputs_embeds unchanged as the first hidden state.
PREFIX_FAMILIES = ("llama", "qwen2", "mistral", "gemma3_text")


def supports_prefix(adapter) -> bool:
    return adapter.model_type in PREFIX_FAMILIES and adapter.spec.fast_logits


@contextlib.contextmanager
def frozen_prefix(adapter, layer: int):
    """Inside the block the layers below ``layer`` are the identity (pass hidden states at ``layer``
    as ``inputs_embeds``); restored on exit, also on errors."""
    if not supports_prefix(adapter):
        raise ValueError(f"frozen-prefix passes are not supported for model_type {adapter.model_type!r}")
    layers = adapter.get_module(adapter.spec.layers)
    skipped = list(layers)[:layer]

    def identity(hidden_states, *args, **kwargs):
        return hidden_states

    for module in skipped:
        module.forward = identity
    try:
        yield
    finally:
        for module in skipped:
            del module.forward


@dataclass
class PrefixExamples:
    """Hidden states entering ``layer`` for a list of (prompt, target) examples, stored flat.

    ``hidden`` (total tokens, d) with ``offsets`` (n + 1) delimiting each example; ``labels``
    likewise (-100 except on target tokens); ``final`` (target-predicting tokens, d), delimited by
    ``final_offsets``: the unedited model's last hidden state there (None when not computed).
    """

    layer: int
    hidden: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor
    final: torch.Tensor | None = None
    final_offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    def _rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def subset(self, indices: list[int]) -> "PrefixExamples":
        """The examples ``indices``, in that order (copies)."""
        rows = [self._rows(i) for i in indices]
        lengths = torch.tensor([0] + [r.stop - r.start for r in rows])
        out = PrefixExamples(self.layer, _gather(self.hidden, rows), lengths.cumsum(0), _gather(self.labels, rows))
        if self.final is not None:
            frows = [slice(int(self.final_offsets[i]), int(self.final_offsets[i + 1])) for i in indices]
            out.final = _gather(self.final, frows)
            out.final_offsets = torch.tensor([0] + [r.stop - r.start for r in frows]).cumsum(0)
        return out

    def by_length(self) -> "PrefixExamples":
        """The same examples ordered by length (less padding; for sums over examples only)."""
        lengths = (self.offsets[1:] - self.offsets[:-1]).tolist()
        return self.subset(sorted(range(len(self)), key=lambda i: (lengths[i], i)))

    def batches(self, batch_size: int, device=None):
        """Right-padded batches of consecutive examples: ``inputs_embeds``, ``attention_mask``, ``labels``."""
        for start in range(0, len(self), batch_size):
            rows = [self._rows(i) for i in range(start, min(len(self), start + batch_size))]
            width = max(r.stop - r.start for r in rows)
            embeds = self.hidden.new_zeros(len(rows), width, self.hidden.shape[1])
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for j, r in enumerate(rows):
                n = r.stop - r.start
                embeds[j, :n] = self.hidden[r]
                mask[j, :n] = 1
                labels[j, :n] = self.labels[r]
            batch = {"inputs_embeds": embeds, "attention_mask": mask, "labels": labels}
            yield {k: v.to(device) for k, v in batch.items()} if device is not None else batch

    def reference_log_probs(self, adapter, batch_size: int) -> list[torch.Tensor]:
        """Unedited log-probabilities at the target-predicting positions, one tensor per batch."""
        out = []
        with torch.no_grad():
            for start in range(0, len(self), batch_size):
                stop = min(len(self), start + batch_size)
                rows = slice(int(self.final_offsets[start]), int(self.final_offsets[stop]))
                out.append(adapter.head_logits(self.final[rows]).float().log_softmax(-1))
        return out

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.hidden": self.hidden, f"{prefix}.offsets": self.offsets, f"{prefix}.labels": self.labels}
        if self.final is not None:
            out.update({f"{prefix}.final": self.final, f"{prefix}.final_offsets": self.final_offsets})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, layer: int) -> "PrefixExamples":
        return cls(layer, tensors[f"{prefix}.hidden"], tensors[f"{prefix}.offsets"], tensors[f"{prefix}.labels"],
                   tensors.get(f"{prefix}.final"), tensors.get(f"{prefix}.final_offsets"))


def _gather(flat: torch.Tensor, rows: list[slice]) -> torch.Tensor:
    if not rows:
        return flat[:0].clone()
    return torch.cat([flat[r] for r in rows], dim=0)


def compute_prefix(adapter, pairs: list[tuple[str, str]], layer: int, batch_size: int = 32, final: bool = False,
                   desc: str = "prefix cache") -> PrefixExamples:
    """Hidden states entering ``layer`` (and with ``final`` the last hidden state at the
    target-predicting positions) of every pair; chunks sorted by length, results in input order."""
    model = adapter.model
    device = next(model.parameters()).device
    layer_name = f"{adapter.spec.layers}.{layer}"
    lengths = [len(adapter.encode([p], [t])["input_ids"][0]) for p, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: (lengths[i], i))
    hidden: list[torch.Tensor | None] = [None] * len(pairs)
    labels: list[torch.Tensor | None] = [None] * len(pairs)
    finals: list[torch.Tensor | None] = [None] * len(pairs)
    bar = progress(total=len(pairs), desc=desc, unit="example")
    with torch.no_grad():
        for chunk in iter_chunks(order, batch_size):
            batch = adapter.encode([pairs[i][0] for i in chunk], [pairs[i][1] for i in chunk], device=device)
            with read_input(model, layer_name, stop=not final) as seen:
                if final:
                    out = target_logits_hidden(adapter, batch)
                else:
                    model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False)
            h = seen[0]
            predicting = prediction_mask(batch["labels"], False)
            for j, i in enumerate(chunk):
                n = int(batch["attention_mask"][j].sum())
                hidden[i] = h[j, :n].float().cpu()
                labels[i] = batch["labels"][j, :n].cpu()
                if final:
                    finals[i] = out[j][predicting[j]].float().cpu()
            bar.update(len(chunk))
    bar.close()
    offsets = torch.tensor([0] + [len(x) for x in labels]).cumsum(0)
    examples = PrefixExamples(layer, torch.cat(hidden) if hidden else torch.zeros(0, 0), offsets,
                              torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))
    if final:
        examples.final = torch.cat(finals)
        examples.final_offsets = torch.tensor([0] + [len(x) for x in finals]).cumsum(0)
    return examples


def target_logits_hidden(adapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last hidden state (batch, seq, d) of the base model, whose head gives the logits."""
    return adapter.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    use_cache=False).last_hidden_state



Examples = "list[tuple[str, str]] | PrefixExamples"


def encoded_batches(adapter, examples, batch_size: int):
    """Batches of ``examples``: (prompt, target) pairs are tokenised, cached prefixes padded."""
    device = next(adapter.model.parameters()).device
    if isinstance(examples, PrefixExamples):
        return examples.batches(batch_size, device)
    return (adapter.encode([p for p, _ in chunk], [t for _, t in chunk], device=device)
            for chunk in iter_chunks(list(examples), batch_size))


def passes_for(adapter, examples):
    """The context in which ``encoded_batches(examples)`` run: ``frozen_prefix`` for cached prefixes."""
    if isinstance(examples, PrefixExamples):
        return frozen_prefix(adapter, examples.layer)
    return contextlib.nullcontext()
