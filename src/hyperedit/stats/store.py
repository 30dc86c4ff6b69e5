"""Where key statistics live: the user cache, the statistics shipped in the package, exports.

Every file is a safetensors file whose metadata names what it was computed from (model
fingerprint, module, corpus fingerprint, number of texts and tokens, truncation length); its
name carries the same key. A file is used only when its metadata matches the key asked for; a
file whose metadata disagrees, or a shipped file for the same model and module but other
settings (a corpus or model that changed since it was made), is reported in the log and the
statistics are computed instead, never used silently.

Shipped files (``stats/shipped/<model fingerprint>/``) hold the upper triangle of ``C``
(``layout=triu-float16`` or ``triu-float32``: half the bytes of the symmetric matrix). float16 is
used only where edits measured equal to float32 ones and the matrix fits float16's range; a
second moment above 65504 (SmolLM2's layer 28 has such a channel) is stored in float32, never as
inf (docs/statistics.md, "Where it stands").
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_file
from ..models import cache_dir

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
KEY_FIELDS = ("model", "module", "corpus", "n_texts", "max_length")


@dataclass(frozen=True)
class StatsKey:
    """Everything a key second moment depends on."""

    model: str  # model fingerprint
    module: str
    corpus: str  # corpus fingerprint
    n_texts: int
    max_length: int

    def stem(self) -> str:
        return f"{self.module}-{self.corpus}-n{self.n_texts}-len{self.max_length}"

    def meta(self) -> dict[str, str]:
        return {f: str(getattr(self, f)) for f in KEY_FIELDS}


def stats_cache_dir() -> Path:
    """Where statistics are cached: ``$HYPEREDIT_STATS_CACHE`` or ``<cache_dir()>/stats``."""
    env = os.environ.get("HYPEREDIT_STATS_CACHE")
    return Path(env) if env else cache_dir() / "stats"


def cache_file(key: StatsKey, dtype: str) -> Path:
    return stats_cache_dir() / key.model / f"{key.stem()}-{dtype}.safetensors"


def shipped_file(key: StatsKey) -> Path:
    return SHIPPED_DIR / key.model / f"{key.stem()}.safetensors"


PACKED_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def pack_triu(C: torch.Tensor, dtype: str = "float16") -> torch.Tensor:
    """The upper triangle (diagonal included) of a symmetric matrix, row by row, in ``dtype``."""
    rows, cols = torch.triu_indices(C.shape[0], C.shape[0])
    return C[rows, cols].to(PACKED_DTYPES[dtype]).contiguous()


def packed_dtype_for(C: torch.Tensor, wanted: str) -> str:
    """``wanted``, unless float16 would overflow (an entry beyond its range): then float32."""
    if wanted == "float16" and float(C.abs().max()) > torch.finfo(torch.float16).max:
        return "float32"
    return wanted


def unpack_triu(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """The symmetric (dim, dim) float32 matrix whose upper triangle ``pack_triu`` stored."""
    rows, cols = torch.triu_indices(dim, dim)
    C = torch.zeros(dim, dim, dtype=torch.float32)
    C[rows, cols] = packed.float()
    C[cols, rows] = packed.float()
    return C


def read_meta(path: Path) -> dict[str, str] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, RuntimeError, SafetensorError) as exc:
        log.warning("ignoring unreadable statistics file %s (%s)", path, exc)
        return None


def read_stats(path: Path, key: StatsKey) -> torch.Tensor | None:
    """``C`` from a cached, shipped or exported file, or None (with a warning) when the file is
    unreadable or its metadata is not ``key``'s."""
    meta = read_meta(path)
    if meta is None:
        return None
    wrong = [f for f in KEY_FIELDS if meta.get(f) != str(getattr(key, f))]
    if wrong:
        log.warning("ignoring statistics file %s: its %s do not match this model and settings", path, ", ".join(wrong))
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if meta.get("layout") in ("triu-float16", "triu-float32"):
                return unpack_triu(f.get_tensor("mom2_triu"), int(meta["dim"]))
            return f.get_tensor("mom2")
    except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as exc:
        log.warning("ignoring unreadable statistics file %s (%s)", path, exc)
        return None


def write_stats(path: Path, C: torch.Tensor, key: StatsKey, n_tokens: int | str, dtype: str,
                packed: str | None = None) -> None:
    """Write ``C`` atomically: the full matrix in ``dtype``, or (``packed``: "float16" or "float32")
    its upper triangle in that precision (float32 where float16 would overflow, with a warning)."""
    meta = {**key.meta(), "n_tokens": str(n_tokens), "dim": str(C.shape[0])}
    if packed:
        precision = packed_dtype_for(C, packed)
        if precision != packed:
            log.warning("%s: second moments up to %.4g exceed float16's range: stored in float32", key.module,
                        float(C.abs().max()))
        tensors, meta["layout"] = {"mom2_triu": pack_triu(C.cpu(), precision)}, f"triu-{precision}"
    else:
        tensors, meta["dtype"] = {"mom2": C.cpu().contiguous()}, dtype
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def find_stats(key: StatsKey, dtype: str) -> tuple[torch.Tensor, Path] | None:
    """``(C, file)`` from the user cache, else from the shipped statistics, else None.

    Shipped files of the same model and module made with other settings are named in a warning."""
    cached = cache_file(key, dtype)
    if cached.is_file():
        C = read_stats(cached, key)
        if C is not None:
            return C, cached
    shipped = shipped_file(key)
    if shipped.is_file():
        C = read_stats(shipped, key)
        if C is not None:
            return C, shipped
    others = sorted((SHIPPED_DIR / key.model).glob(f"{key.module}-*.safetensors"))
    if others:
        log.warning("the shipped statistics for %s were made with other settings (%s), not %s: computing them",
                    key.module, ", ".join(p.stem for p in others), key.stem())
    return None


def list_stats(roots: list[Path] | None = None) -> list[dict]:
    """One row per statistics file under ``roots`` (default: the cache and the shipped folder)."""
    rows = []
    for root in roots or [stats_cache_dir(), SHIPPED_DIR]:
        for path in sorted(root.rglob("*.safetensors")) if root.is_dir() else []:
            meta = read_meta(path)
            if meta is not None:
                rows.append({"file": str(path), "bytes": path.stat().st_size,
                             "shipped": root == SHIPPED_DIR, **meta})
    return rows
