"""Key statistics: the second moment ``C = E[k k^T]`` of an edited module's input over text.

MEMIT regularises its update with ``C`` and AlphaEdit projects onto its null space. ``C`` is
computed in a streaming pass over a generic corpus (default: the corpus packaged with hyperedit,
``hyperedit.data.load_text_corpus``; ``$HYPEREDIT_STATS_CORPUS`` or ``--stats-corpus`` name
another), stopping each forward pass after the highest module needed. Results are looked up in
the user cache, then in the statistics shipped for the embedded model (``hyperedit.stats.store``),
and computed only when neither has them. A long computation saves its partial sums every
``CHECKPOINT_SECONDS`` and resumes from them when run again. The model fingerprint covers the
model's name, sizes and input embeddings, which MLP edits do not touch, so an edited model reuses
the statistics of the model it was edited from.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_file
from ..hooks import capture, stop_after
from ..models import LoadedModel
from ..progress import progress as progress_bar
from .store import StatsKey, cache_file, find_stats, stats_cache_dir, write_stats

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
CORPUS_ENV = "HYPEREDIT_STATS_CORPUS"
CHECKPOINT_SECONDS = 60.0


def corpus_texts(corpus=None, n_samples: int | None = None) -> list[str]:
    """Texts for the statistics: a list of strings, a ``.txt``/``.jsonl`` file or a folder of them,
    ``"packaged"``, ``"benchmark"``, or None (``$HYPEREDIT_STATS_CORPUS``, else the packaged corpus).

    With ``n_samples`` smaller than the corpus, texts are taken evenly spaced over the whole corpus
    (deterministic), so every part of the corpus is represented."""
    if isinstance(corpus, (list, tuple)):
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
    else:
        from ..data import load_text_corpus

        texts = load_text_corpus(corpus if corpus is not None else (os.environ.get(CORPUS_ENV) or None))
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


def _partial_file(keys: list[StatsKey], batch_size: int) -> Path:
    tag = hashlib.sha256(repr([k.stem() for k in keys] + [batch_size]).encode()).hexdigest()[:16]
    return stats_cache_dir() / keys[0].model / f"partial-{tag}.safetensors"


def _load_partial(path: Path, modules: list[str]) -> tuple[dict[str, torch.Tensor], int, int] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sums = {m: f.get_tensor(f"sum:{m}") for m in modules}
        return sums, int(meta["count"]), int(meta["batches_done"])
    except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as exc:
        log.warning("ignoring unreadable partial statistics %s (%s)", path, exc)
        return None


def _save_partial(path: Path, sums: dict[str, torch.Tensor], count: int, done: int) -> None:
    with atomic_file(path) as tmp:
        save_file({f"sum:{m}": s.cpu().contiguous() for m, s in sums.items()}, str(tmp),
                  metadata={"count": str(count), "batches_done": str(done)})


@torch.no_grad()
def _accumulate(lm: LoadedModel, modules: list[str], texts: list[str], max_length: int,
                batch_size: int, progress: bool, partial: Path | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Sums of ``k k^T`` (float64) over every non-padding, non-special token, and the token count.

    With ``partial``, the sums so far are saved there now and then and picked up again."""
    model, tok, adapter = lm
    if adapter.is_seq2seq:
        raise ValueError("key statistics are implemented for decoder-only models")
    device = lm.device
    top = max(modules, key=adapter.layer_of)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    resumed = _load_partial(partial, modules) if partial is not None else None
    if resumed is not None:
        sums, count, done = resumed
        sums = {m: s.to(device) for m, s in sums.items()}
        log.info("resuming key statistics after %d of %d batches", done, len(batches))
    else:
        dims = {m: adapter.in_out_shape(m)[0] for m in modules}
        sums = {m: torch.zeros(dims[m], dims[m], dtype=torch.float64, device=device) for m in modules}
        count, done = 0, 0
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
    last_save = time.monotonic()
    with capture(model, modules, grads=False) as cap:
        for b in progress_bar(range(done, len(batches)), total=len(batches), initial=done,
                              desc="key statistics", unit="batch", enabled=progress):
            enc = tok([texts[i] for i in batches[b]], return_tensors="pt", padding=True, truncation=True,
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
            if partial is not None and time.monotonic() - last_save > CHECKPOINT_SECONDS and b + 1 < len(batches):
                _save_partial(partial, sums, count, b + 1)
                last_save = time.monotonic()
    return sums, count


def stats_keys(lm: LoadedModel, module_names: list[str], texts: list[str], max_length: int) -> list[StatsKey]:
    model_fp, corpus_fp = model_fingerprint(lm), corpus_fingerprint(texts)
    return [StatsKey(model_fp, m, corpus_fp, len(texts), max_length) for m in module_names]


def key_second_moments(lm: LoadedModel, module_names: list[str], corpus=None, n_samples: int = 2000,
                       max_length: int = 128, batch_size: int = 16, dtype: str = "float32",
                       use_cache: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
    """``{module: C}`` with ``C = E[k k^T]`` (d_in, d_in) over the tokens of ``n_samples`` corpus texts.

    ``corpus``: see ``corpus_texts``. Cached and shipped entries are reused (``use_cache``);
    missing modules are computed together in one streaming pass, resumable, and cached.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    texts = corpus_texts(corpus, n_samples)
    if not texts:
        raise ValueError("the statistics corpus is empty")
    result: dict[str, torch.Tensor] = {}
    missing: list[StatsKey] = []
    for key in stats_keys(lm, module_names, texts, max_length):
        found = find_stats(key, dtype) if use_cache else None
        if found is not None:
            log.debug("statistics for %s from %s", key.module, found[1])
            result[key.module] = found[0].to(device=lm.device, dtype=_DTYPES[dtype])
        else:
            missing.append(key)
    if missing:
        names = [k.module for k in missing]
        log.info("computing key statistics for %d module(s) over %d texts", len(names), len(texts))
        partial = _partial_file(missing, batch_size) if use_cache else None
        sums, count = _accumulate(lm, names, texts, max_length, batch_size, progress, partial)
        for key in missing:
            mom2 = (sums[key.module] / max(count, 1)).to(_DTYPES[dtype])
            result[key.module] = mom2
            if use_cache:
                write_stats(cache_file(key, dtype), mom2, key, count, dtype)
        if partial is not None:
            partial.unlink(missing_ok=True)
    return {m: result[m] for m in module_names}
