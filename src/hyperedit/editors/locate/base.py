"""What the locate-then-edit editors (MEMIT, AlphaEdit, MetaKE) share: options, the edited
layers, and the keys and residual stream they read at the last subject token.

Shapes: n requests, keys ``K`` (n, d_in), residuals ``R`` (n, d_out), shifts ``S`` (d_in, d_out)
(the ``nn.Linear`` update is ``S.T``; ALGORITHMS.md writes MEMIT's Delta = S.T, R.T, K.T). The
closed-form solvers are in ``solve``, the target vectors in ``targets``, the shared editing flow
in ``editor``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import HyperEditError
from ...hooks import capture, edit_output, stop_after
from ...lm import subject_token_index
from ...models import LoadedModel
from ...requests import EditRequest

log = logging.getLogger(__name__)

_PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You", "It")


@dataclass
class LocateConfig:
    """Options shared by MEMIT, AlphaEdit and MetaKE (targets, keys, statistics)."""

    layers: tuple[int, ...] | None = None  # edited MLP layers (None: ``default_layers``); targets at the last
    module: str = "down"  # which MLP linear map of each layer (adapter semantic name)
    # target vectors (residual-stream delta at the last edited layer, last subject token)
    n_prefixes: int = 1  # random generated prefixes besides the bare prompt
    prefix_tokens: int = 5
    v_steps: int = 15
    v_lr: float = 1.0  # Adam, per request
    v_stop_nll: float = 0.1  # a request stops optimising once its mean target NLL is below this
    kl_factor: float = 0.0625  # KL on the subject's "essence" prompt "{subject} is a"
    v_weight_decay: float = 0.001  # times (||delta|| / ||h||)^2
    clamp_norm_factor: float = 4.0  # ||delta|| <= factor * ||h||
    batch_size: int = 64  # sequences per forward pass
    # key statistics
    stats_corpus: str | None = None  # None: default corpus (FEVER evidence + general sentences)
    stats_samples: int = 2000  # number of corpus texts
    stats_max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = tuple(int(x) for x in (self.layers if not isinstance(self.layers, int) else [self.layers]))
            if not self.layers:
                raise ValueError("layers must name at least one layer")
            if list(self.layers) != sorted(set(self.layers)):
                raise ValueError("layers must be increasing and distinct")
        for name in ("v_steps", "batch_size", "stats_samples", "prefix_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.n_prefixes < 0:
            raise ValueError("n_prefixes must be non-negative")


def default_layers(num_layers: int) -> tuple[int, ...]:
    """Early-middle MLP layers, about 13%-27% of the depth: 4-8 of SmolLM2's 30 (where our causal
    trace peaks), 4-8 of Llama-3-8B's 32 and 4-8 of GPT-J's 28 (the MEMIT/AlphaEdit choices are 3-8
    and 4-8), 2-3 of GPT-2's 12."""
    lo = round(0.13 * num_layers)
    hi = max(lo, round(0.27 * num_layers))
    return tuple(range(lo, min(hi, num_layers - 1) + 1))


def check_model(lm: LoadedModel) -> None:
    if lm.adapter.is_seq2seq:
        raise HyperEditError("locate-then-edit editors (MEMIT, AlphaEdit, MetaKE) support decoder-only models")


def layer_module(lm: LoadedModel, layer: int) -> str:
    """Name of the transformer block ``layer`` (its output is the residual stream)."""
    return f"{lm.adapter.spec.layers}.{layer}"


# ----- tokens ---------------------------------------------------------------------------------
def subject_position(lm: LoadedModel, text: str, subject: str | None, start: int = 0) -> int:
    """Index of the last token of ``subject`` in the tokenised (formatted) ``text``
    (``hyperedit.lm.subject_token_index``)."""
    try:
        return subject_token_index(lm.adapter, text, subject, start)
    except ValueError as err:
        raise HyperEditError(str(err)) from None


def encode_prompts_right(lm: LoadedModel, texts: Sequence[str], device=None) -> dict[str, torch.Tensor]:
    """Prompts alone, right-padded (positions counted from the left stay valid)."""
    tok = lm.tokenizer
    ids = [tok(lm.adapter.format_prompt(t), add_special_tokens=True)["input_ids"] for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    device = device or lm.device
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def generate_prefixes(lm: LoadedModel, count: int, length: int, seed: int) -> list[str]:
    """``[""]`` plus ``count`` short texts sampled from the model, each ending in ". "."""
    prefixes = [""]
    if count == 0:
        return prefixes
    tok = lm.tokenizer
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i in range(count):
            start = _PREFIX_STARTS[i % len(_PREFIX_STARTS)]
            enc = tok(start, return_tensors="pt").to(lm.device)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            out = lm.model.generate(**enc, do_sample=True, top_k=5, max_new_tokens=length, pad_token_id=pad)
            text = tok.decode(out[0], skip_special_tokens=True)
            text = " ".join(text.replace("{", " ").replace("}", " ").split()) or start
            prefixes.append(text.rstrip(".") + ". ")
    return prefixes


def subjects_or_last(requests: Sequence[EditRequest]) -> list[str | None]:
    missing = sum(r.subject is None for r in requests)
    if missing:
        log.info("%d request(s) have no subject: using their last prompt token", missing)
    return [r.subject for r in requests]


# ----- keys and the current residual stream ----------------------------------------------------
@torch.no_grad()
def keys_and_hidden(lm: LoadedModel, requests: Sequence[EditRequest], module: str, prefixes: Sequence[str],
                    z_layer: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of ``module`` at the last subject token, averaged over ``prefixes`` (n, d_in), and the
    output of block ``z_layer`` at that token for the bare prompt (``prefixes[0]`` must be "")."""
    subjects = [r.subject for r in requests]
    rows = [(i, p) for i in range(len(requests)) for p in prefixes]  # request-major
    block = layer_module(lm, z_layer)
    lm_layer = lm.adapter.layer_of(module)
    top = module if lm_layer > z_layer else block
    keys, hidden = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        texts = [p + requests[i].prompt for i, p in chunk]
        pos = torch.tensor([subject_position(lm, t, subjects[i], len(p)) for t, (i, p) in zip(texts, chunk)])
        batch = encode_prompts_right(lm, texts)
        mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        mask[torch.arange(len(chunk)), pos] = True
        got = {}

        def read(inputs, out, mask=mask):
            got["h"] = out[mask]
            return out

        with capture(lm.model, [module], grads=False) as cap, edit_output(lm.model, block, read), \
                stop_after(lm.model, top):
            cap.mask = mask.to(lm.device)
            lm.model(**batch, use_cache=False)
        keys.append(cap.key(module))
        hidden.append(got["h"])
    c = len(prefixes)
    k = torch.cat(keys).view(len(requests), c, -1).mean(1)
    h = torch.cat(hidden).view(len(requests), c, -1)[:, 0]
    return k, h
