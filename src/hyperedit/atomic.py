"""Atomic file and directory writes: a reader sees the old content or the new, never half of one.

Everything is written to a temporary sibling first and renamed into place (``os.replace``).
Temporaries are named ``.hyperedit-tmp-<pid>-<name>-<random>``, so a process killed mid-write
leaves something recognisable: the next write into the same folder removes the temporaries of
processes that no longer run (``sweep_stale_temporaries``). Files and directories end with the
permissions the user's umask gives, not the private ones ``tempfile`` starts with.

This module only knows how to write safely; *whether* a path may be written (never replacing
what hyperedit did not create) is decided in ``hyperedit.outputs``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import HyperEditError

class WriteError(HyperEditError):
    """Writing an output failed (a full disk, a file size limit, an I/O error); nothing was left."""


TEMP_PREFIX = ".hyperedit-tmp-"
OLD_PREFIX = ".hyperedit-old-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(path: Path) -> None:
    """Give a finished temporary, and everything inside it, the mode a plain ``open``/``mkdir``
    would have given it (``tempfile`` makes them private, and some writers, such as safetensors,
    write through private temporaries of their own)."""
    mask = _umask()
    for item in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def publish_modes(path: str | os.PathLike) -> None:
    """``_publish_mode`` for writers that manage their own temporaries (checkpoint folders)."""
    _publish_mode(Path(path))


def check_writable(folder: str | os.PathLike) -> str | None:
    """None if a file can be created in ``folder``, else why not (a read-only file system, no
    permission). Tried with a real temporary file: ``os.access`` does not see every reason."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OverflowError:
        return False
    return True


def sweep_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed hyperedit processes left in ``folder``; returns them.

    Only names made by this module are touched, and only when the process that made them is gone.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        for prefix in (TEMP_PREFIX, OLD_PREFIX):
            if not entry.name.startswith(prefix):
                continue
            pid_text = entry.name[len(prefix):].split("-", 1)[0]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def _write_failures_as_one_line(path: Path):
    """Turn an I/O failure while writing ``path`` (``OSError``; safetensors' own error wraps the
    same) into a ``WriteError`` line; the caller's cleanup has already removed the temporary."""
    try:
        yield
    except OSError as exc:
        raise WriteError(f"{path}: writing failed ({exc.strerror or exc}); nothing was written") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError" or "I/O error" not in str(exc):
            raise
        raise WriteError(f"{path}: writing failed ({str(exc).split('I/O error: ')[-1]}); nothing was written") from None


def _temp_prefix(path: Path) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{path.name}-"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, fsync: bool = False):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    For writers that take a file name (``safetensors.save_file``). On an exception the temporary
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with _write_failures_as_one_line(path):
            yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        _publish_mode(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory.

    ``fsync``: flush the data to disk before the rename (for pointers that must survive a crash).
    """
    with atomic_file(path, fsync=fsync) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary directory; on success it replaces ``path`` (an existing one is swapped out).

    On an exception the temporary directory is removed and ``path`` is left as it was. Callers
    decide first whether ``path`` may be replaced (``hyperedit.outputs.write_directory``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    try:
        with _write_failures_as_one_line(path):
            yield tmp
        _publish_mode(tmp)
        old = None
        if path.exists():
            old = path.with_name(f"{OLD_PREFIX}{os.getpid()}-{path.name}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
