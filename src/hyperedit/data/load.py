"""``load_requests``: a benchmark split (``NAME:SPLIT``) or a file, as a list of EditRequests."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from hyperedit.data._common import Records, read_records
from hyperedit.data.counterfact import map_counterfact, map_rome
from hyperedit.data.fever import map_fever
from hyperedit.data.knowedit import map_wikibio
from hyperedit.data.mquake import MQuAKECase, map_mquake, map_mquake_cases
from hyperedit.data.registry import require_file
from hyperedit.data.user_jsonl import map_user
from hyperedit.data.zsre import map_knowedit, map_mend_zsre
from hyperedit.errors import HyperEditError, InputError
from hyperedit.requests import EditRequest

# NAME:SPLIT -> file under the data directory.
DATASETS: dict[str, str] = {
    "zsre:train": "zsre/train.json",
    "zsre:train-10k": "zsre/train-10k.json",
    "zsre:knowedit-test": "zsre/knowedit-test.json",
    "counterfact:train": "counterfact/train.json",
    "counterfact:val": "counterfact/val.json",
    "fever:v0.1-full": "fever/fever_symmetric_v0.1_full.jsonl",
    "fever:v0.2-dev": "fever/fever_symmetric_v0.2_dev.jsonl",
    "fever:v0.2-test": "fever/fever_symmetric_v0.2_test.jsonl",
    "wiki_counterfact:train": "knowedit/wiki_counterfact_train.json",
    "wiki_counterfact:test": "knowedit/wiki_counterfact_test.jsonl",
    "wiki_recent:train": "knowedit/wiki_recent_train.json",
    "wikibio:train": "knowedit/wikibio_train.json",
    "wikibio:test": "knowedit/wikibio_test.json",
    "mquake:hard": "mquake/MQuAKE-hard.json",
}

# NAME:sample -> a file of at most 200 records packaged with hyperedit (samples/README.md): these
# work offline, with no data directory.
SAMPLES_DIR = Path(__file__).with_name("samples")
SAMPLES: dict[str, str] = {
    "counterfact:sample": "counterfact_val_200.jsonl",
    "zsre:sample": "zsre_knowedit_test_200.jsonl",
    "fever:sample": "fever_v0.1_full_200.jsonl",
}

MAPPERS: dict[str, Callable[[Records, str], list[EditRequest]]] = {
    "zsre-mend": map_mend_zsre,
    "zsre-knowedit": map_knowedit,
    "counterfact-easyedit": map_counterfact,
    "counterfact-rome": map_rome,
    "fever": map_fever,
    "wikibio": map_wikibio,
    "mquake": map_mquake,
    "user": map_user,
}

_SPEC = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):([^/\\]+)$")


# Fields only the EasyEdit layouts have: a record with them but without target_new is a broken
# EasyEdit record (reported as "target_new missing"), not a user record with unknown fields.
_COUNTERFACT_ONLY = {"locality_prompt", "locality_ground_truth", "case_id"}
_EASYEDIT_ONLY = _COUNTERFACT_ONLY | {"rephrase_prompt", "ground_truth", "portability"}


def detect_format(record: dict) -> str | None:
    """The layout of a file, judged from its first record's fields (None if unknown)."""
    keys = set(record)
    if "requested_rewrite" in keys:
        return "mquake" if isinstance(record["requested_rewrite"], list) else "counterfact-rome"
    if {"text", "labels", "concept"} <= keys:
        return "wikibio"
    if "src" in keys and ("answers" in keys or "alt" in keys):
        return "zsre-mend"  # full MEND layout, or the reduced one where alt is the target
    if "claim" in keys and "label" in keys:
        return "fever"
    if "target_new" in keys or (keys & _EASYEDIT_ONLY and "target" not in keys):
        if isinstance(record.get("locality"), dict):
            return "zsre-knowedit"
        if keys & _COUNTERFACT_ONLY or isinstance(record.get("ground_truth"), str):
            return "counterfact-easyedit"
        return "zsre-knowedit"
    if "prompt" in keys or "target" in keys:
        return "user"
    return None


def load_file(path: str | os.PathLike, source: str | None = None) -> list[EditRequest]:
    """Read one file in any supported layout."""
    records, source = _records(path, source)
    first_number, first = records[0]
    fmt = detect_format(first)
    if fmt is None:
        fields = ", ".join(sorted(map(str, first))) or "none"
        raise InputError(
            source, first_number, None,
            f"unrecognised record layout (fields: {fields}); expected MEND/KnowEdit zsRE, CounterFact,"
            " WikiBio, MQuAKE, FEVER or the user format (prompt, target, ...)",
        )
    return MAPPERS[fmt](records, source)


def _records(path: str | os.PathLike, source: str | None) -> tuple[Records, str]:
    path = Path(path)
    source = source or str(path)
    if path.is_dir():
        raise HyperEditError(f"{source} is a directory; give a requests file (JSON or JSONL) or NAME:SPLIT")
    if not path.is_file():
        raise HyperEditError(f"input file not found: {source}")
    return read_records(path, source), source


def _check_window(limit, offset) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise HyperEditError(f"offset must be a non-negative integer, got {offset!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise HyperEditError(f"limit must be a non-negative integer or None, got {limit!r}")


def load_requests(
    spec: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[EditRequest]:
    """Load edit requests from ``NAME:SPLIT`` (see ``DATASETS``, ``SAMPLES``) or from a file path.

    The whole file is read and checked, then ``[offset : offset + limit]`` is returned.
    """
    _check_window(limit, offset)
    path, source = resolve_spec(spec, data_dir)
    end = None if limit is None else offset + limit
    return load_file(path, source)[offset:end]


def load_mquake_cases(spec: str | os.PathLike = "mquake:hard", data_dir: str | os.PathLike | None = None,
                      limit: int | None = None, offset: int = 0) -> list[MQuAKECase]:
    """MQuAKE cases (each a chain of rewrites and its multi-hop questions) from ``mquake:hard`` or a file."""
    _check_window(limit, offset)
    path, source = resolve_spec(spec, data_dir)
    records, source = _records(path, source)
    if detect_format(records[0][1]) != "mquake":
        raise InputError(source, records[0][0], "requested_rewrite", "not an MQuAKE record (a list of rewrites)")
    end = None if limit is None else offset + limit
    return map_mquake_cases(records, source)[offset:end]


def resolve_spec(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The file of ``NAME:SPLIT`` (under the data directory) or of a path, and how errors name it."""
    text = os.fspath(spec)
    if text in SAMPLES:
        path = SAMPLES_DIR / SAMPLES[text]
        return path, text
    if text in DATASETS:
        path = require_file(DATASETS[text], data_dir, what=text)
        return path, str(path)
    if Path(text).is_file() or Path(text).is_dir():
        return Path(text), text
    if _SPEC.match(text) and Path(text).suffix.lower() not in (".json", ".jsonl"):
        raise HyperEditError(f"unknown dataset {text!r}; known: {', '.join([*DATASETS, *SAMPLES])}"
                             " (or give a file path)")
    raise HyperEditError(f"input file not found: {text}")
