"""The one rule for everything hyperedit writes: never delete or replace what it did not create.

Every command checks all of its output paths up front, before any model work (``check_paths``),
and every directory it writes goes through ``write_directory``:

- a path that does not exist, or an empty directory, may be written;
- an existing output is replaced only if hyperedit made it, it is of the same kind (a delta is
  never replaced by a model), and the user asked (``--overwrite``; ``--resume`` for runs);
  anything else is refused with one line, even with ``--overwrite``;
- an output may not be, or contain, one of the command's inputs, the current directory or one
  above it, and two outputs of one command may not overlap.

Directories hyperedit creates carry a small marker file (``MARKER``) naming their kind and the
files hyperedit wrote there; replacing one removes only those: a file the user added inside (notes,
a copy of something) makes the replacement refuse (``foreign_entries``). Run directories, written
over time, are checked against their known layout instead. Result files (``NAME.json``,
``NAME.md``, ``NAME.png``) are recognised by their content.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import (OLD_PREFIX, TEMP_PREFIX, atomic_directory, atomic_write_text, check_writable,
                     sweep_stale_temporaries)
from .errors import HyperEditError

MARKER = ".hyperedit-output"

DIRECTORY_KINDS = ("delta", "model", "training-run", "lifelong-run", "model-cache", "editor-state")
FILE_KINDS = ("result", "target-cache")
RUN_KINDS = ("training-run", "lifelong-run")


class OutputError(HyperEditError):
    """An output path that may not be written (it would lose or mix up someone's files)."""


@dataclass(frozen=True)
class Output:
    """One path a command will write: the option that named it, the path, and its kind."""

    option: str
    path: str | os.PathLike
    kind: str


def _resolved(path, option: str | None = None) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        where = f"{option} {path}" if option else str(path)
        raise OutputError(f"{where}: cannot be resolved ({exc})") from None


def mark(folder: str | os.PathLike, kind: str, files: list[str] | None = None) -> None:
    """Record in ``folder`` that hyperedit made it, as an output of ``kind`` holding ``files``
    (paths relative to ``folder``; None for run directories, which are checked by their layout)."""
    record = {"kind": kind} if files is None else {"kind": kind, "files": sorted(files)}
    atomic_write_text(Path(folder) / MARKER, json.dumps(record) + "\n")


def _files_under(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*"))
            if p.name != MARKER and (p.is_file() or p.is_symlink())]


# Outputs written before markers listed their files: the files each kind is made of.
_LEGACY_FILES = {"delta": {"delta.json", "shifts.safetensors"}, "editor-state": {"editor.json", "editor.safetensors"}}
_MODEL_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "spiece.model", "merges.txt", "vocab.txt")
_RUN_NAMES = {"LATEST", "metrics.jsonl", "result.json"}


def _is_ours_in_run(entry: Path) -> bool:
    """A top-level entry of a run directory that hyperedit writes there."""
    if entry.name in _RUN_NAMES or entry.name.startswith((TEMP_PREFIX, OLD_PREFIX)):
        return True
    if entry.name == "checkpoints" and entry.is_dir():
        return all(p.is_dir() and p.name.startswith(("step-", ".step-")) for p in entry.iterdir())
    if entry.suffix == ".safetensors":  # a fact cache kept in the run directory
        return _safetensors_metadata_has(entry, "key")
    return kind_of(entry) is not None


def foreign_entries(folder: str | os.PathLike, kind: str) -> list[str]:
    """What inside hyperedit's output ``folder`` hyperedit did not write there (empty: safe to replace)."""
    folder = Path(folder)
    if kind in RUN_KINDS:
        return sorted(p.name for p in folder.iterdir() if p.name != MARKER and not _is_ours_in_run(p))
    listed = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        listed = json.loads((folder / MARKER).read_text()).get("files")
    present = [f for f in _files_under(folder) if not Path(f).name.startswith((TEMP_PREFIX, OLD_PREFIX))]
    if isinstance(listed, list):
        owned = set(listed)
        owned_dirs = {parent.as_posix() for f in owned for parent in Path(f).parents}
        foreign = [f for f in present if f not in owned]
        foreign += [d.relative_to(folder).as_posix() + "/" for d in folder.rglob("*")
                    if d.is_dir() and not d.is_symlink() and not d.name.startswith((TEMP_PREFIX, OLD_PREFIX))
                    and d.relative_to(folder).as_posix() not in owned_dirs]
        return sorted(foreign)
    if kind in _LEGACY_FILES:
        return sorted(f for f in present if f not in _LEGACY_FILES[kind])
    if kind == "model":
        return sorted(f for f in present if "/" in f or not any(Path(f).match(p) for p in _MODEL_PATTERNS))
    return []  # the model cache lives in hyperedit's own cache directory


def _legacy_kind(folder: Path) -> str | None:
    """Outputs written before markers existed, recognised by their files."""
    names = {p.name for p in folder.iterdir()}
    if {"delta.json", "shifts.safetensors"} <= names:
        return "delta"
    if {"editor.json", "editor.safetensors"} <= names:
        return "editor-state"
    if "LATEST" in names and "checkpoints" in names:
        with contextlib.suppress(OSError):
            latest = folder / "checkpoints" / (folder / "LATEST").read_text().strip()
            if (latest / "stream.json").is_file():
                return "lifelong-run"
            if (latest / "trainer.json").is_file():
                return "training-run"
    return None


def kind_of(path: str | os.PathLike) -> str | None:
    """The kind of hyperedit output at ``path``, or None when hyperedit did not make it."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        marker = path / MARKER
        if marker.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                return json.loads(marker.read_text()).get("kind")
            return None
        return _legacy_kind(path)
    if path.is_file():
        if _is_result_file(path):
            return "result"
        if _is_target_cache(path):
            return "target-cache"
    return None


def _is_target_cache(path: Path) -> bool:
    """A safetensors file of target vectors (``editors.locate.TargetCache.save``)."""
    return path.suffix == ".safetensors" and _safetensors_metadata_has(path, "entries")


def _safetensors_metadata_has(path: Path, key: str) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return key in (handle.metadata() or {})
    except (OSError, SafetensorError, ValueError):
        return False


def _is_result_file(path: Path) -> bool:
    """``NAME.json`` (a list of result records), ``NAME.md`` (our report) or a ``NAME.png`` beside either."""
    try:
        if path.suffix == ".json":
            records = json.loads(path.read_text())
            return isinstance(records, list) and all(isinstance(r, dict) and "command" in r and "editor" in r
                                                     for r in records)
        if path.suffix == ".md":
            return "Produced by:" in path.read_text()
        if path.suffix == ".png":
            return any(_is_result_file(path.with_suffix(suffix)) for suffix in (".json", ".md"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return False


def claim(path: str | os.PathLike, kind: str, *, option: str = "--out", overwrite: bool = False,
          resume: bool = False) -> Path:
    """Raise ``OutputError`` unless ``path`` may be written as an output of ``kind``; returns it resolved.

    ``overwrite`` allows replacing an earlier hyperedit output of the same kind; ``resume`` allows
    continuing an earlier run (run kinds only).
    """
    if kind not in DIRECTORY_KINDS + FILE_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    where = f"{option} {path}"
    resolved = _resolved(path, option)
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"{where}: is the current directory or one above it; name a new directory")
    if not os.path.lexists(resolved):
        for parent in resolved.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise OutputError(f"{where}: {parent} is a file, not a directory")
                _check_writable(where, parent)
                break
        return resolved
    _check_writable(where, resolved.parent)
    if kind in DIRECTORY_KINDS:
        if not resolved.is_dir() or resolved.is_symlink():
            raise OutputError(f"{where}: exists and is not a directory; a {kind} is written as a directory")
        if not [p for p in resolved.iterdir() if p.name != MARKER]:  # empty, or only our marker
            return resolved
    elif resolved.is_dir():
        raise OutputError(f"{where}: is a directory; a {kind} file goes there")
    found = kind_of(resolved)
    if found != kind:
        what = f"an earlier hyperedit {found}" if found else "files hyperedit did not write"
        raise OutputError(f"{where}: exists and holds {what}; choose a new path (it is never replaced)")
    if resume and kind in RUN_KINDS:
        return resolved
    foreign = foreign_entries(resolved, kind) if resolved.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"{where}: holds an earlier hyperedit {kind} and files hyperedit did not write there "
                          f"({shown}); it is never replaced: move them out or choose a new path")
    if not overwrite:
        hint = "--resume to continue it or --overwrite to start over" if kind in RUN_KINDS else "--overwrite to replace it"
        raise OutputError(f"{where}: holds an earlier hyperedit {kind}; pass {hint}")
    return resolved


def _check_writable(where: str, folder: Path) -> None:
    """Refuse up front, before any model work, a folder the output cannot be written into."""
    problem = check_writable(folder)
    if problem:
        raise OutputError(f"{where}: cannot write into {folder} ({problem})")


def check_paths(outputs: list[Output], inputs: list[tuple[str, str | os.PathLike | None]] = (), *,
                overwrite: bool = False, resume: bool = False) -> None:
    """Check every output of a command before it starts; one ``OutputError`` line for the first problem.

    ``inputs``: ``(option, path)`` of everything the command reads from the file system (None and
    names that are not paths, such as ``counterfact:val``, are skipped).
    """
    outputs = [o for o in outputs if o.path is not None]
    resolved = [_resolved(o.path, o.option) for o in outputs]
    for i, (a, pa) in enumerate(zip(outputs, resolved)):
        for b, pb in zip(outputs[i + 1:], resolved[i + 1:]):
            if pa == pb or pa in pb.parents or pb in pa.parents:
                raise OutputError(f"{a.option} {a.path} and {b.option} {b.path}: two outputs at one path")
    for out, po in zip(outputs, resolved):
        for option, given in inputs:
            if given is None or not os.path.lexists(Path(given).expanduser()):
                continue
            pi = _resolved(given, option)
            if pi == po or po in pi.parents:
                raise OutputError(f"{out.option} {out.path}: would replace the input given by {option} {given}")
    for out in outputs:  # resuming a run rewrites the result files it writes at the end
        claim(out.path, out.kind, option=out.option, resume=resume,
              overwrite=overwrite or (resume and out.kind not in RUN_KINDS))


@contextlib.contextmanager
def write_directory(path: str | os.PathLike, kind: str):
    """Write a directory output atomically: yields a temporary directory that replaces ``path``.

    The library-level floor of the rule: an earlier hyperedit output of the same kind is replaced,
    anything else is refused (the up-front ``--overwrite`` policy is ``check_paths``'s).
    """
    claim(path, kind, overwrite=True)
    with atomic_directory(path) as tmp:
        yield tmp
        mark(tmp, kind, files=_files_under(Path(tmp)))


def start_run_directory(path: str | os.PathLike, kind: str, *, resume: bool = False,
                        overwrite: bool = False, option: str = "--out") -> Path:
    """Create (or reuse, with ``resume``) a run directory of ``kind`` and mark it.

    With ``overwrite`` an earlier run of the same kind is removed first (it is hyperedit's own).
    """
    folder = claim(path, kind, option=option, overwrite=overwrite, resume=resume)
    if overwrite and not resume and folder.is_dir() and kind_of(folder) == kind:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(folder)
    if kind_of(folder) != kind or not (folder / MARKER).is_file():
        mark(folder, kind)
    return folder
