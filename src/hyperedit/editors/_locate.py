"""Shared maths of the locate-then-edit editors (MEMIT, AlphaEdit, MetaKE).

Shapes: n requests, keys ``K`` (n, d_in), residuals ``R`` (n, d_out), shifts ``S`` (d_in, d_out)
(the ``nn.Linear`` update is ``S.T``; ALGORITHMS.md writes MEMIT's Delta = S.T, R.T, K.T).
Every closed-form solver here is a linear map of the residuals, ``S = Q R`` with ``Q`` (d_in, n)
depending only on the keys, which is what MetaKE differentiates through.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..delta import EditDelta
from ..errors import HyperEditError
from ..hooks import capture, edit_output, stop_after
from ..lm import subject_token_index
from ..models import LoadedModel
from ..requests import EditRequest

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


# ----- closed-form solvers: S = Q R ---------------------------------------------------------
def memit_map(K: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """Q (d_in, n) with S = Q R solving min ||K S - R||^2 + lam tr(S^T C S):
    (lam C + K^T K) S = K^T R (MEMIT's normal equations)."""
    K, C = K.double(), C.double()
    return torch.linalg.solve(lam * C + K.T @ K, K.T)


def alphaedit_map(K: torch.Tensor, P: torch.Tensor, Kp_cov: torch.Tensor | None, l2: float) -> torch.Tensor:
    """Q (d_in, n) with S = Q R solving (P (K^T K + K_p^T K_p) + l2 I) S = P K^T R (AlphaEdit).

    S lies in the range of P, so keys in P's null space (preserved knowledge) keep their outputs."""
    K, P = K.double(), P.double()
    A = K.T @ K + (Kp_cov.double() if Kp_cov is not None else 0.0)
    eye = torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    return torch.linalg.solve(P @ A + l2 * eye, P @ K.T)


def proxy_grad(Q: torch.Tensor, grad_S: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """dL/dR (n, d_out) from dL/dS (d_in, d_out) through the linear solver map S = Q (scale * R)
    (``scale``: the adapter's ``output_scale``, None for 1)."""
    grad_R = Q.T @ grad_S.to(Q.dtype)
    return grad_R if scale is None else grad_R * scale.to(grad_R)


# ----- spreading the residual over the edited layers -------------------------------------------
@dataclass
class SolveRecord:
    """What the multi-layer solve used at each layer (for diagnostics and MetaKE's proxy)."""

    keys: dict[str, torch.Tensor] = field(default_factory=dict)  # (n, d_in)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # Q (d_in, n), float64
    residuals: dict[str, torch.Tensor] = field(default_factory=dict)  # R_l (n, d_out)
    scales: dict[str, torch.Tensor | None] = field(default_factory=dict)  # output_scale of R_l, None for 1


def spread_and_solve(lm: LoadedModel, requests: Sequence[EditRequest], z: torch.Tensor, modules: Sequence[str],
                     z_layer: int, prefixes: Sequence[str], make_map: Callable[[str, torch.Tensor], torch.Tensor],
                     batch_size: int = 64) -> tuple[dict[str, torch.Tensor], SolveRecord]:
    """MEMIT's layer loop: at layer i, R_i = (z - h_now) / (layers left), S_i = Q_i R_i, applied
    before the next layer's keys are read. The model is restored exactly before returning.

    Where the module's output is normalised before it joins the residual stream (Gemma), R_i is
    first mapped to the module-output change that makes it (``ModelAdapter.output_scale``)."""
    shifts, record, applied = {}, SolveRecord(), []
    try:
        for i, name in enumerate(modules):
            K, h = keys_and_hidden(lm, requests, name, prefixes, z_layer, batch_size)
            R = (z.to(h) - h) / (len(modules) - i)
            Q = make_map(name, K)
            scale = lm.adapter.output_scale(name, K)
            S = (Q @ (R if scale is None else R * scale).double()).to(torch.float32)
            shifts[name] = S
            record.keys[name], record.maps[name], record.residuals[name] = K, Q, R
            record.scales[name] = scale
            if i + 1 < len(modules):
                applied.append(EditDelta.from_in_out(lm.adapter, {name: S}, editor="partial").apply(lm.model))
    finally:
        for delta in reversed(applied):
            delta.revert(lm.model)
    return shifts, record


@torch.no_grad()
def realised_residual(lm: LoadedModel, requests: Sequence[EditRequest], shifts: dict[str, torch.Tensor],
                      z_layer: int, batch_size: int = 64) -> torch.Tensor:
    """Change (n, d) of block ``z_layer``'s output at the last subject token (bare prompt) that the
    shifts actually produce."""
    any_module = next(iter(shifts))
    _, before = keys_and_hidden(lm, requests, any_module, [""], z_layer, batch_size)
    with EditDelta.from_in_out(lm.adapter, shifts, editor="diagnostic").applied(lm.model):
        _, after = keys_and_hidden(lm, requests, any_module, [""], z_layer, batch_size)
    return after - before


def truncation_summary(planned: torch.Tensor, realised: torch.Tensor) -> dict:
    """Per request: realised fraction <dh, R>/||R||^2 and relative miss ||dh - R|| / ||R||."""
    norm2 = (planned * planned).sum(-1).clamp_min(1e-12)
    frac = (realised * planned).sum(-1) / norm2
    miss = (realised - planned).norm(dim=-1) / norm2.sqrt()
    active = planned.norm(dim=-1) > 0
    f, m = frac[active], miss[active]
    return {
        "realised_fraction": [round(float(x), 4) for x in frac],
        "relative_miss": [round(float(x), 4) for x in miss],
        "planned_norm": [round(float(x), 3) for x in planned.norm(dim=-1)],
        "mean_realised_fraction": float(f.mean()) if len(f) else None,
        "median_realised_fraction": float(f.median()) if len(f) else None,
        "mean_relative_miss": float(m.mean()) if len(m) else None,
        "n_planned": int(active.sum()),
    }
