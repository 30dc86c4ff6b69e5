"""Shared helpers of the data loaders: locating the data, reading JSON/JSONL, checking fields.

Every problem in an input file is reported as an ``InputError`` (file, record, field, problem);
record numbers are 1-based: the line number in a JSONL file, the position in a JSON array.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from hyperedit.errors import HyperEditError, InputError
from hyperedit.requests import EditRequest, check_text

logger = logging.getLogger(__name__)

ENV_VAR = "HYPEREDIT_DATA_DIR"
# Set to 1 to skip the ../shared/data lookups (tests of a machine without the benchmark data).
NO_SEARCH_ENV = "HYPEREDIT_NO_DATA_SEARCH"
_RELATIVE_DEFAULT = Path("..") / "shared" / "data"

# (record number, parsed JSON value) pairs as read from a file.
Records = list[tuple[int, Any]]


def _repo_data_dir() -> Path | None:
    """``../shared/data`` next to the repository holding this package (editable installs)."""
    here = Path(__file__).resolve()
    root = None
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() or (parent / ".git").exists():
            root = parent
            break
    if root is None and len(here.parents) > 3:
        root = here.parents[3]  # src/hyperedit/data/_common.py -> repository root
    if root is None:
        return None
    candidate = root / _RELATIVE_DEFAULT
    return candidate.resolve() if candidate.is_dir() else None


class DataDirNotFound(HyperEditError):
    """No benchmark data directory was named and none of the default places holds one."""


def user_data_dir() -> Path:
    """The per-user data directory, where ``hyperedit data fetch`` puts benchmark data by default:
    ``$XDG_DATA_HOME/hyperedit/data`` (``~/.local/share/hyperedit/data``; on Windows under
    ``%LOCALAPPDATA%``). Written out here rather than taken from platformdirs: one path."""
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "hyperedit" / "data"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "hyperedit" / "data"


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Find the benchmark data directory.

    Order: ``explicit``, the ``HYPEREDIT_DATA_DIR`` environment variable, ``../shared/data``
    relative to the current directory, ``../shared/data`` relative to the repository root (these
    two are skipped when ``HYPEREDIT_NO_DATA_SEARCH=1``), the per-user directory ``user_data_dir()``
    (where ``hyperedit data fetch`` writes).
    """
    for value, origin in ((explicit, "data_dir argument"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if value is not None and str(value) != "":
            path = Path(value).expanduser()
            if not path.is_dir():
                raise HyperEditError(f"data directory {str(path)!r} (from {origin}) does not exist")
            return path
    searching = os.environ.get(NO_SEARCH_ENV, "") in ("", "0")
    cwd_candidate = Path.cwd() / _RELATIVE_DEFAULT
    if searching and cwd_candidate.is_dir():
        return cwd_candidate.resolve()
    repo_candidate = _repo_data_dir() if searching else None
    if repo_candidate is not None:
        return repo_candidate
    if user_data_dir().is_dir():
        return user_data_dir()
    raise DataDirNotFound(
        f"benchmark data directory not found: get the data with `hyperedit data fetch NAME` (`hyperedit data list`),"
        f" or set {ENV_VAR}, or pass data_dir=..."
    )


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _decode(path: Path, source: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HyperEditError(f"{source}: cannot read file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(source, None, None, f"not UTF-8 text (byte {exc.start})") from None


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def read_records(path: Path, source: str | None = None, objects: bool = True) -> Records:
    """Read a JSON array or a JSONL file into (record number, value) pairs.

    The layout is chosen by content: a file starting with ``[`` is one JSON array, anything
    else is JSON Lines (blank lines skipped). With ``objects`` every record must be an object.
    """
    source = source or str(path)
    text = _decode(path, source)
    if not text.strip():
        raise InputError(source, None, None, "file is empty")
    records: Records = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                source, None, None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        records = list(enumerate(data, start=1))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                if not records and _is_json_object(text):
                    raise InputError(
                        source, None, None,
                        "the file is a single JSON object; expected a JSON array of records or one object per line",
                    ) from None
                raise InputError(source, lineno, None, f"invalid JSON (column {exc.colno}): {exc.msg}") from None
    if not records:
        raise InputError(source, None, None, "file is empty (no records)")
    if objects:
        for number, value in records:
            if not isinstance(value, dict):
                raise InputError(source, number, None, f"expected a JSON object, got {json_type(value)}")
    return records


class Record:
    """One input record with typed accessors that raise ``InputError`` naming the field."""

    def __init__(self, source: str, number: int, data: dict):
        self.source, self.number, self.data = source, number, data

    def error(self, field: str | None, problem: str) -> InputError:
        return InputError(self.source, self.number, field, problem)

    def has(self, field: str) -> bool:
        return self.data.get(field) is not None

    def string(self, field: str, required: bool = True, value: Any = ..., name: str | None = None) -> str | None:
        """A non-empty string field; ``value``/``name`` check a nested value under a display name."""
        name = name or field
        if value is ...:
            if field not in self.data:
                if required:
                    raise self.error(name, "missing required field")
                return None
            value = self.data[field]
        elif value is None and required:
            raise self.error(name, "missing required field")
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {json_type(value)}")
        if not value.strip():
            raise self.error(name, "empty string")
        try:
            check_text(name, value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None
        return value

    def strings(self, field: str, required: bool = True, allow_single: bool = False) -> list[str]:
        """A list of non-empty strings (``allow_single``: a lone string counts as a 1-list)."""
        if field not in self.data or self.data[field] is None:
            if required:
                raise self.error(field, "missing required field")
            return []
        value = self.data[field]
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of strings, got {json_type(value)}")
        return [self.string(field, value=item, name=f"{field}[{i}]") for i, item in enumerate(value)]

    def ident(self, field: str, fallback: str | None) -> str | None:
        """An id field (string or integer) as a string, else ``fallback``."""
        value = self.data.get(field)
        if value is None:
            return fallback
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(field, f"expected a string or integer id, got {json_type(value)}")
        if isinstance(value, str) and not value.strip():
            raise self.error(field, "empty string")
        return str(value)


def _field_of(message: str) -> str | None:
    """Which EditRequest field a ValueError from ``EditRequest.__post_init__`` is about."""
    if message.startswith("target equals old_target"):
        return "old_target"
    for name in ("old_target", "prompt", "target", "subject", "rephrasings", "locality"):
        if message.startswith(name):
            return name
    return None


def build_request(rec: Record, fields: dict[str, str] | None = None, **kwargs: Any) -> EditRequest:
    """Construct an ``EditRequest``, turning its ValueError into an ``InputError``.

    ``fields`` maps EditRequest field names to the names used by the input format. The request's
    ``meta`` gets ``source`` and ``record``, so later checks (e.g. context length) can name them.
    """
    kwargs["meta"] = {**kwargs.get("meta", {}), "source": rec.source, "record": rec.number}
    try:
        return EditRequest(**kwargs)
    except ValueError as exc:
        field = _field_of(str(exc))
        if field is not None and fields:
            field = fields.get(field, field)
        raise rec.error(field, str(exc)) from None


class SubjectDrops:
    """Counts records whose subject does not occur in the prompt (the subject is dropped)."""

    def __init__(self, source: str):
        self.source, self.count, self.total = source, 0, 0

    def check(self, subject: str | None, prompt: str) -> str | None:
        self.total += 1
        if subject is None or subject in prompt:
            return subject
        self.count += 1
        return None

    def report(self) -> None:
        if self.count:
            logger.warning(
                "%s: subject does not occur in the prompt in %d of %d records; subject dropped there",
                self.source, self.count, self.total,
            )


def map_each(records: Records, source: str,
             build: Callable[[Record, int, SubjectDrops], EditRequest]) -> list[EditRequest]:
    """``build(record, index, drops)`` for every record of a file, in order; the records whose
    subject is not in their prompt are counted over the whole file and reported in one warning."""
    drops = SubjectDrops(source)
    out = [build(Record(source, number, data), index, drops) for index, (number, data) in enumerate(records)]
    drops.report()
    return out


def easyedit_core(rec: Record, drops: SubjectDrops, prompt_field: str = "prompt") -> tuple[str, str, str | None]:
    """The fields every EasyEdit-style record shares: ``(prompt, target_new, subject)``; the subject
    is dropped (and counted) when it does not occur in the prompt."""
    prompt = rec.string(prompt_field)
    target = rec.string("target_new")
    subject = drops.check(rec.string("subject", required=False), prompt)
    return prompt, target, subject
