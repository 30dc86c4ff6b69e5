"""Content-addressed tensor files: ``blobs/<sha256>.safetensors``.

A blob is written to a temporary file, flushed to disk and renamed to the hash of its bytes, so a
name in ``blobs/`` always holds complete content. Equal tensors give equal bytes (keys sorted, no
metadata), so a delta saved twice is stored once. A process killed between writing a blob and
recording its entry leaves an unreferenced blob, never a referenced one that is missing.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..atomic import TEMP_PREFIX, publish_modes, sweep_stale_temporaries
from ..errors import HyperEditError

BLOB_DIR = "blobs"
SUFFIX = ".safetensors"
META_KEY = "hyperedit_meta"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path):
        self.root = root / BLOB_DIR
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / f"{digest}{SUFFIX}"

    def put(self, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> str:
        """Store tensors (and ``meta``, JSON in the file's header) and return the sha256 of the file's bytes."""
        header = {META_KEY: json.dumps(meta, sort_keys=True)} if meta else None
        data = save({k: tensors[k].detach().contiguous().cpu() for k in sorted(tensors)}, metadata=header)
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.is_file():
            return digest
        sweep_stale_temporaries(self.root)  # blobs of killed writes (``stale_temporaries``)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-blob-", suffix=SUFFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            publish_modes(tmp)
            os.replace(tmp, target)
            _fsync_dir(self.root)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return digest

    def get(self, digest: str) -> dict[str, torch.Tensor]:
        """The tensors of a blob (cached: blobs never change once written)."""
        return _load(str(self.path(digest)))

    def get_meta(self, digest: str) -> dict | None:
        """The ``meta`` a blob was stored with (None: none, as in blobs written before it existed)."""
        path = str(self.path(digest))
        try:
            with safe_open(path, framework="pt") as fh:
                text = (fh.metadata() or {}).get(META_KEY)
        except (SafetensorError, FileNotFoundError, OSError) as exc:
            raise HyperEditError(f"{path}: cannot read ledger blob ({exc})") from exc
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise HyperEditError(f"{path}: ledger blob metadata is not JSON") from None

    def check(self, digest: str) -> str | None:
        """None if the blob exists and its bytes hash to its name, else what is wrong."""
        path = self.path(digest)
        if not path.is_file():
            return "missing"
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            return "content does not match its hash"
        bad = [name for name, t in self.get(digest).items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        return f"non-finite values in {', '.join(bad)}" if bad else None

    def stale_temporaries(self) -> list[str]:
        """Temporaries of blob writes that were killed (``.tmp-*`` from older versions included); the
        next blob write removes those whose process is gone."""
        return sorted(p.name for p in self.root.iterdir() if p.name.startswith((TEMP_PREFIX, ".tmp-")))

    def digests(self) -> set[str]:
        return {p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}") if not p.name.startswith(".")}


@functools.lru_cache(maxsize=64)
def _load(path: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise HyperEditError(f"{path}: cannot read ledger blob ({exc})") from exc
