"""Key statistics: the second moment ``C = E[k k^T]`` of an edited module's input over text.

MEMIT regularises its update with ``C`` and AlphaEdit projects onto its null space. ``C`` is
computed in a streaming pass over a generic corpus (default: FEVER's Wikipedia evidence sentences
plus the general-task sentences, see ``hyperedit.data.load_text_corpus``), stopping each forward
pass after the highest module needed, and cached as safetensors under the user cache directory
(``$HYPEREDIT_STATS_CACHE``, else ``<hyperedit cache>/stats``). The file name carries everything
the statistics depend on: model, module, corpus fingerprint, number of texts, truncation length
and dtype. The model fingerprint covers the model's name, sizes and input embeddings, which MLP
edits do not touch, so an edited model reuses the statistics of the model it was edited from.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_file
from .hooks import capture, stop_after
from .models import LoadedModel, cache_dir
from .progress import progress as progress_bar

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def stats_cache_dir() -> Path:
    """Where statistics are cached: ``$HYPEREDIT_STATS_CACHE`` or ``<cache_dir()>/stats``."""
    env = os.environ.get("HYPEREDIT_STATS_CACHE")
    return Path(env) if env else cache_dir() / "stats"


def corpus_texts(corpus=None, n_samples: int | None = None) -> list[str]:
    """Texts for the statistics: a list of strings, a ``.txt``/``.jsonl`` path, or None (default corpus).

    With ``n_samples`` smaller than the corpus, texts are taken evenly spaced over the whole corpus
    (deterministic), so every source of the default corpus is represented."""
    if isinstance(corpus, (list, tuple)):
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
    else:
        from .data import load_text_corpus

        texts = load_text_corpus(corpus)
    if n_samples is None or n_samples >= len(texts):
        return texts
    step = len(texts) / n_samples
    return [texts[int(i * step)] for i in range(n_samples)]


def corpus_fingerprint(texts: list[str]) -> str:
    """Short content hash of a list of texts (order matters)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def model_fingerprint(lm: LoadedModel) -> str:
    """Name plus a short hash of the model's sizes and input embeddings (unchanged by MLP edits)."""
    digest = hashlib.sha256(repr(sorted(lm.adapter.identity().items())).encode())
    emb = lm.model.get_input_embeddings().weight.detach().double()
    digest.update(f"{float(emb.sum()):.10e} {float((emb * emb).sum()):.10e}".encode())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(lm.name))[:60] or "model"
    return f"{name}-{digest.hexdigest()[:12]}"


def _cache_file(model_fp: str, module: str, corpus_fp: str, n_texts: int, max_length: int, dtype: str) -> Path:
    return stats_cache_dir() / model_fp / f"{module}-{corpus_fp}-n{n_texts}-len{max_length}-{dtype}.safetensors"


def _read(path: Path) -> torch.Tensor | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("mom2")
    except (OSError, RuntimeError, KeyError, SafetensorError) as exc:  # an unreadable cache entry is recomputed
        log.warning("ignoring unreadable statistics cache %s (%s)", path, exc)
        return None


def _write(path: Path, tensor: torch.Tensor, meta: dict) -> None:
    with atomic_file(path) as tmp:
        save_file({"mom2": tensor.contiguous()}, str(tmp), metadata={k: str(v) for k, v in meta.items()})


@torch.no_grad()
def _accumulate(lm: LoadedModel, modules: list[str], texts: list[str], max_length: int,
                batch_size: int, progress: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Sums of ``k k^T`` (float64) over every non-padding, non-special token, and the token count."""
    model, tok, adapter = lm
    if adapter.is_seq2seq:
        raise ValueError("key statistics are implemented for decoder-only models")
    device = lm.device
    top = max(modules, key=adapter.layer_of)
    sums = {m: torch.zeros(adapter.in_out_shape(m)[0], adapter.in_out_shape(m)[0], dtype=torch.float64,
                           device=device) for m in modules}
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
    count = 0
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with capture(model, modules, grads=False) as cap:
        for idx in progress_bar(batches, desc="key statistics", enabled=progress):
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length)
            mask = enc["attention_mask"].bool() & ~torch.isin(enc["input_ids"], special)
            cap.mask = mask.to(device)
            with stop_after(model, top):
                model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                      use_cache=False)
            for m in modules:
                k = cap.key(m).double()
                sums[m].addmm_(k.t(), k)
            count += int(mask.sum())
            cap.clear()
    return sums, count


def key_second_moments(lm: LoadedModel, module_names: list[str], corpus=None, n_samples: int = 2000,
                       max_length: int = 128, batch_size: int = 16, dtype: str = "float32",
                       use_cache: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
    """``{module: C}`` with ``C = E[k k^T]`` (d_in, d_in) over the tokens of ``n_samples`` corpus texts.

    ``corpus``: None (default corpus), a ``.txt``/``.jsonl`` path, or a list of texts. Cached
    entries are reused; missing modules are computed together in one streaming pass.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    texts = corpus_texts(corpus, n_samples)
    if not texts:
        raise ValueError("the statistics corpus is empty")
    model_fp, corpus_fp = model_fingerprint(lm), corpus_fingerprint(texts)
    result: dict[str, torch.Tensor] = {}
    missing = []
    for m in module_names:
        path = _cache_file(model_fp, m, corpus_fp, len(texts), max_length, dtype)
        cached = _read(path) if use_cache and path.is_file() else None
        if cached is not None:
            log.debug("statistics cache hit: %s", path)
            result[m] = cached.to(lm.device)
        else:
            missing.append(m)
    if missing:
        log.info("computing key statistics for %d module(s) over %d texts", len(missing), len(texts))
        sums, count = _accumulate(lm, missing, texts, max_length, batch_size, progress)
        for m in missing:
            mom2 = (sums[m] / max(count, 1)).to(_DTYPES[dtype])
            result[m] = mom2
            if use_cache:
                meta = {"model": model_fp, "module": m, "corpus": corpus_fp, "n_texts": len(texts),
                        "n_tokens": count, "max_length": max_length, "dtype": dtype}
                _write(_cache_file(model_fp, m, corpus_fp, len(texts), max_length, dtype), mom2.cpu(), meta)
    return {m: result[m] for m in module_names}
