"""Protocol files: what an experiment measures, kept as data in the repository.

A protocol file is a JSON object (one protocol) or a list of them::

    {"name": "counterfact-val-100", "title": "CounterFact val, 100 facts in one edit",
     "data": "counterfact:val", "n": 100, "mode": "batch", "seed": 0,
     "metrics": ["teacher_forced", "generated"],
     "editors": ["ft", {"editor": "malmen", "label": "malmen-joint", "options": {"joint": true}}],
     "models": ["smollm2-135m"]}

``mode``: ``batch`` (all ``n`` facts in one edit), ``single`` (each fact alone on the unedited
model, EasyEdit's protocol), ``sequential`` (a stream: ``n / batch`` edits of ``batch`` facts on
top of each other, scored at the end) or ``mquake`` (``n`` MQuAKE cases, ``batch`` cases' chains
per edit). Nothing in a protocol is executed: every field is checked against this schema, and a
bad one is a one-line error naming the file, the protocol and the field.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HyperEditError, InputError

MODES = ("batch", "single", "sequential", "mquake")
METRICS = ("teacher_forced", "generated")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FIELDS = {"name", "title", "data", "n", "offset", "mode", "batch", "seed", "metrics", "editors", "models",
           "eval_batch_size"}


@dataclass(frozen=True)
class EditorSpec:
    editor: str
    label: str
    options: dict = field(default_factory=dict, hash=False)
    checkpoint: str | None = None


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    data: str
    n: int
    mode: str
    batch: int
    seed: int
    metrics: tuple[str, ...]
    editors: tuple[EditorSpec, ...]
    models: tuple[str, ...]
    offset: int = 0
    eval_batch_size: int = 32
    source: str = ""

    @property
    def generated(self) -> bool:
        return "generated" in self.metrics


def _int(error, data: dict, key: str, default: int | None, low: int) -> int:
    value = data.get(key, default)
    if value is None:
        raise error(key, "missing required field")
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise error(key, f"expected an integer >= {low}, got {value!r}")
    return value


def _editor(error, index: int, item) -> EditorSpec:
    name = f"editors[{index}]"
    if isinstance(item, str) and item.strip():
        return EditorSpec(item, item)
    if not isinstance(item, dict) or not isinstance(item.get("editor"), str):
        raise error(name, "expected an editor name or {\"editor\", \"label\", \"options\", \"checkpoint\"}")
    unknown = set(item) - {"editor", "label", "options", "checkpoint"}
    if unknown:
        raise error(f"{name}.{sorted(unknown)[0]}", "unknown field")
    label = item.get("label", item["editor"])
    if not isinstance(label, str) or not _NAME.match(label):
        raise error(f"{name}.label", "expected a name of letters, digits, '.', '_' or '-'")
    options = item.get("options", {})
    if not isinstance(options, dict):
        raise error(f"{name}.options", "expected an object of editor options")
    checkpoint = item.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise error(f"{name}.checkpoint", "expected a path")
    return EditorSpec(item["editor"], label, dict(options), checkpoint)


def _protocol(source: str, number: int, data) -> Protocol:
    def error(key, problem):
        return InputError(source, number, key, problem)

    if not isinstance(data, dict):
        raise error(None, "expected a protocol object")
    unknown = set(data) - _FIELDS
    if unknown:
        raise error(sorted(unknown)[0], f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise error("name", "expected a name of letters, digits, '.', '_' or '-'")
    for key in ("data", "mode"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise error(key, "missing required field" if key not in data else "expected a non-empty string")
    if data["mode"] not in MODES:
        raise error("mode", f"expected one of {', '.join(MODES)}, got {data['mode']!r}")
    n = _int(error, data, "n", None, 1)
    batch = _int(error, data, "batch", n if data["mode"] == "batch" else 1, 1)
    if data["mode"] == "batch" and batch != n:
        raise error("batch", "mode batch edits all n facts at once: leave batch out or set it to n")
    if data["mode"] == "sequential" and n % batch:
        raise error("batch", f"n ({n}) is not a whole number of edits of {batch} facts")
    metrics = data.get("metrics", list(METRICS))
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise error("metrics", f"expected a list of {', '.join(METRICS)}")
    editors = data.get("editors")
    if not isinstance(editors, list) or not editors:
        raise error("editors", "expected a non-empty list of editors")
    models = data.get("models", ["smollm2-135m"])
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m.strip() for m in models):
        raise error("models", "expected a non-empty list of model names or directories")
    specs = tuple(_editor(error, i, e) for i, e in enumerate(editors))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise error("editors", "two editors share a label (give each a distinct \"label\")")
    title = data.get("title", name)
    if not isinstance(title, str):
        raise error("title", "expected a string")
    return Protocol(name=name, title=title, data=data["data"], n=n, mode=data["mode"], batch=batch,
                    seed=_int(error, data, "seed", 0, 0), metrics=tuple(metrics), editors=specs,
                    models=tuple(models), offset=_int(error, data, "offset", 0, 0),
                    eval_batch_size=_int(error, data, "eval_batch_size", 32, 1), source=source)


def load_protocols(path: str | Path) -> list[Protocol]:
    """The protocols of one file (a JSON object or a list of them)."""
    path = Path(path)
    if not path.is_file():
        raise HyperEditError(f"protocol file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(path), None, None, f"invalid JSON ({exc})") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise InputError(str(path), None, None, "no protocols in the file")
    protocols = [_protocol(str(path), i, item) for i, item in enumerate(items, start=1)]
    names = [p.name for p in protocols]
    if len(set(names)) != len(names):
        raise InputError(str(path), None, "name", "two protocols share a name")
    return protocols
