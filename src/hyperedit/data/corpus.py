"""Generic text for statistics over a model's activations (e.g. key covariances).

Sources: the packaged corpus (default; ``stats_corpus.txt.gz`` beside this file, text sampled
from the embedded SmolLM2-135M by ``scripts/make_stats_corpus.py``, docs/statistics.md), the
benchmark corpus (``"benchmark"``: FEVER evidence and general-task sentences from the benchmark
data, the default before the packaged one), or the user's own text: a ``.txt`` file (one text per
line), a ``.jsonl`` file (field ``text``) or a folder of them.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

from hyperedit.data._common import Record, read_records, resolve_data_dir
from hyperedit.data.general import GENERAL_TASKS
from hyperedit.data.load import DATASETS
from hyperedit.errors import HyperEditError, InputError

FEVER_SPLITS = ("fever:v0.1-full", "fever:v0.2-dev", "fever:v0.2-test")
FEVER_TEXT_FIELDS = ("evidence_sentence", "evidence", "sentence1")
GENERAL_TEXT_FIELDS = ("sentence", "sentence1", "sentence2")
# FEVER keeps Penn Treebank escapes of brackets; put the brackets back.
_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}


def _unescape(text: str) -> str:
    for escaped, bracket in _PTB.items():
        text = text.replace(escaped, bracket)
    return text


PACKAGED_CORPUS = Path(__file__).resolve().parent / "stats_corpus.txt.gz"
CORPUS_SUFFIXES = (".txt", ".jsonl")


def packaged_corpus() -> list[str]:
    """The corpus shipped in the package, one text per line, in file order."""
    with gzip.open(PACKAGED_CORPUS, "rt", encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def benchmark_corpus(data_dir: str | os.PathLike | None = None) -> list[str]:
    """FEVER evidence sentences, then the sentences of the general tasks, de-duplicated,
    in a fixed order (file order, FEVER v0.1, v0.2 dev, v0.2 test, then ``GENERAL_TASKS``)."""
    base = resolve_data_dir(data_dir)
    sources = [(base / DATASETS[s], FEVER_TEXT_FIELDS, True) for s in FEVER_SPLITS]
    sources += [(base / "general" / f"{t}.jsonl", GENERAL_TEXT_FIELDS, False) for t in GENERAL_TASKS]
    seen: dict[str, None] = {}
    for path, fields, unescape in sources:
        if not path.is_file():
            raise HyperEditError(f"corpus file missing: {path}")
        for _, data in read_records(path):
            for field in fields:
                value = data.get(field)
                if isinstance(value, str) and value.strip():
                    text = " ".join((_unescape(value) if unescape else value).split())
                    seen.setdefault(text, None)
    return list(seen)


def read_corpus_file(path: str | os.PathLike) -> list[str]:
    """A user corpus: ``.txt`` (one text per non-empty line) or ``.jsonl`` (field ``text``)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise HyperEditError(f"corpus file not found: {source}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(source, None, None, f"not UTF-8 text (byte {exc.start})") from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise InputError(source, None, None, "file is empty")
        return texts
    if suffix == ".jsonl":
        texts = []
        for number, data in read_records(path):
            texts.append(Record(source, number, data).string("text"))  # other fields are ignored
        return texts
    raise HyperEditError(f"corpus file must be .txt or .jsonl, got {source}")


def read_corpus_path(path: str | os.PathLike) -> list[str]:
    """A user corpus file (``read_corpus_file``) or a folder: its ``.txt``/``.jsonl`` files, in
    sorted path order (sub-folders included), concatenated."""
    path = Path(path)
    if not path.is_dir():
        return read_corpus_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
    if not files:
        raise HyperEditError(f"corpus folder {str(path)!r} has no .txt or .jsonl file")
    return [text for f in files for text in read_corpus_file(f)]


def load_text_corpus(
    path_or_default: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> list[str]:
    """Texts for activation statistics: the packaged corpus (None, ``"default"`` or
    ``"packaged"``), the benchmark corpus (``"benchmark"``, from ``data_dir``) or a file or folder.

    ``limit`` keeps the first ``limit`` texts of the fixed order.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise HyperEditError(f"limit must be a non-negative integer or None, got {limit!r}")
    name = None if path_or_default is None else os.fspath(path_or_default)
    if name in (None, "default", "packaged"):
        texts = packaged_corpus()
    elif name == "benchmark":
        texts = benchmark_corpus(data_dir)
    else:
        texts = read_corpus_path(name)
    return texts if limit is None else texts[:limit]
