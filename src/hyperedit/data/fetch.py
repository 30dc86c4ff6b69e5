"""Download registry files into a data directory and check what is there.

A download goes to a temporary sibling of its target (``hyperedit.atomic``) and is renamed into
place only after its size and sha256 match the registry, so a reader never sees a half-written
or wrong file: an interrupted or bad download leaves the target as it was and removes the
temporary (one left by a killed process is swept by the next write into that folder). A file
already present is never replaced: a good one is kept, a differing one is reported.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from hyperedit.atomic import atomic_file
from hyperedit.data._common import ENV_VAR, user_data_dir
from hyperedit.data.registry import GITHUB_RAW, Dataset, RegistryFile
from hyperedit.errors import HyperEditError
from hyperedit.progress import progress

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
TIMEOUT_S = 60


def fetch_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where ``fetch`` writes: ``explicit``, else ``$HYPEREDIT_DATA_DIR``, else ``user_data_dir()``.

    Unlike ``resolve_data_dir`` this never falls back to a ``shared/data`` folder found nearby:
    that one is someone else's read-only copy.
    """
    for value in (explicit, os.environ.get(ENV_VAR)):
        if value:
            return Path(value).expanduser()
    return user_data_dir()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(entry: RegistryFile, data_dir: Path) -> str:
    """``ok``, ``missing``, or what is wrong with the copy of ``entry`` in ``data_dir``."""
    path = data_dir / entry.path
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry.size:
        return f"wrong size ({size} bytes, expected {entry.size})"
    if file_sha256(path) != entry.sha256:
        return "wrong sha256 (same size: changed content)"
    return "ok"


def _source_url(url: str, mirror: str | None) -> str:
    """``url`` with its GitHub prefix replaced by ``mirror`` (a server holding the same paths)."""
    if mirror and url.startswith(GITHUB_RAW):
        return mirror.rstrip("/") + "/" + url[len(GITHUB_RAW):]
    return url


def _download(url: str, dest: Path, expected_size: int, label: str) -> str:
    """Stream ``url`` into ``dest``; returns its sha256. Raises one-line errors."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or expected_size)
            with progress(total=total, desc=label, unit="B") as bar:
                while block := response.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        raise HyperEditError(f"{label}: HTTP {exc.code} from {url}") from None
    except urllib.error.URLError as exc:
        raise HyperEditError(f"{label}: cannot reach {url} ({exc.reason})") from None
    except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise HyperEditError(f"{label}: download from {url} interrupted after {received} bytes ({reason});"
                             " nothing was kept, run the command again") from None
    if received != expected_size:
        raise HyperEditError(f"{label}: {url} gave {received} bytes, the registry expects {expected_size};"
                             " nothing was kept")
    return digest.hexdigest()


def _derive(entry: RegistryFile, tmp: Path) -> None:
    """Turn the verified upstream file in ``tmp`` into the registry's file (``DropRecords``)."""
    rule = entry.derive
    records = json.loads(tmp.read_text(encoding="utf-8"))
    kept = [r for r in records if not (isinstance(r, dict) and r.get(rule.key) in rule.values)]
    tmp.write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")


def fetch_file(entry: RegistryFile, data_dir: Path, mirror: str | None = None) -> str:
    """Put ``entry`` into ``data_dir``; returns ``present`` or ``fetched``."""
    target = data_dir / entry.path
    if target.exists():
        state = check_file(entry, data_dir)
        if state == "ok":
            return "present"
        raise HyperEditError(f"{target}: already there and differs from the registry ({state});"
                             " it was not replaced: move it away and fetch again")
    if entry.url is None:
        raise HyperEditError(f"{entry.path}: no confirmed public download; place it by hand in {data_dir}")
    url = _source_url(entry.url, mirror)
    upstream_sha, upstream_size = ((entry.derive.upstream_sha256, entry.derive.upstream_size)
                                   if entry.derive else (entry.sha256, entry.size))
    with atomic_file(target) as tmp:
        got = _download(url, tmp, upstream_size, entry.path)
        if got != upstream_sha:
            raise HyperEditError(f"{entry.path}: sha256 mismatch for {url} (got {got[:12]}…, expected"
                                 f" {upstream_sha[:12]}…); nothing was kept")
        if entry.derive:
            _derive(entry, tmp)
            if file_sha256(tmp) != entry.sha256:
                raise HyperEditError(f"{entry.path}: the file derived from {url} does not match the registry;"
                                     " nothing was kept")
    logger.info("%s: fetched into %s", entry.path, data_dir)
    return "fetched"


def fetch_dataset(dataset: Dataset, data_dir: Path, mirror: str | None = None) -> list[tuple[str, str]]:
    """Fetch every file of ``dataset``; (path, present | fetched) pairs. Stops at the first error
    (the files fetched before it stay: each is complete and checked)."""
    return [(entry.path, fetch_file(entry, data_dir, mirror)) for entry in dataset.files]
