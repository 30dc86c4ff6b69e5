"""General-ability tasks as zero-shot multiple-choice rows for a causal LM.

Each row is ``{"prompt": str, "choices": [str, ...], "label": int}``: the model scores each
choice as a continuation of the prompt and the row counts as correct when the highest-scoring
choice is ``choices[label]``. Choices start with a space so that they tokenise as words.
"""
from __future__ import annotations

import os
import random
from typing import Callable, Iterable

from hyperedit.data._common import Record, read_records
from hyperedit.data.registry import require_file
from hyperedit.errors import HyperEditError

GENERAL_TASKS = ("sst2", "mrpc", "cola", "rte", "nli", "mmlu", "dialogue", "sentiment")
YES_NO = [" no", " yes"]
SENTIMENT = [" negative", " positive"]
LETTERS = "ABCDEFGHIJ"


def _label(rec: Record, field: str, mapping: dict) -> int:
    """Map a label (int, or its string form, or a name) to a choice index."""
    if field not in rec.data:
        raise rec.error(field, "missing required field")
    value = rec.data[field]
    key = value.strip() if isinstance(value, str) else value
    if isinstance(key, str) and key.lstrip("-").isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, (str, int)) or key not in mapping:
        allowed = ", ".join(repr(k) for k in mapping)
        raise rec.error(field, f"unexpected label {value!r} (expected one of {allowed})")
    return mapping[key]


def _text(rec: Record, field: str) -> str:
    return rec.string(field).strip()


def _lettered(rec: Record, field: str) -> tuple[list[str], list[str]]:
    options = rec.strings(field)
    if not 2 <= len(options) <= len(LETTERS):
        raise rec.error(field, f"expected 2 to {len(LETTERS)} options, got {len(options)}")
    lines = [f"{LETTERS[i]}. {text.strip()}" for i, text in enumerate(options)]
    return lines, [f" {LETTERS[i]}" for i in range(len(options))]


def _sentiment(rec: Record) -> dict:
    # 0 = negative, 1 = positive (GLUE SST-2).
    return {"prompt": f"Review: {_text(rec, 'sentence')}\nSentiment:", "choices": list(SENTIMENT),
            "label": _label(rec, "label", {0: 0, 1: 1})}


def _mrpc(rec: Record) -> dict:
    # GLUE MRPC: 1 = paraphrase (equivalent).
    prompt = (f"Sentence 1: {_text(rec, 'sentence1')}\nSentence 2: {_text(rec, 'sentence2')}\n"
              "Question: Do both sentences mean the same thing?\nAnswer:")
    return {"prompt": prompt, "choices": list(YES_NO), "label": _label(rec, "label", {0: 0, 1: 1})}


def _cola(rec: Record) -> dict:
    # GLUE CoLA: 1 = acceptable.
    prompt = f"Sentence: {_text(rec, 'sentence')}\nQuestion: Is this sentence grammatically acceptable?\nAnswer:"
    return {"prompt": prompt, "choices": list(YES_NO), "label": _label(rec, "label", {0: 0, 1: 1})}


def _entailment(rec: Record) -> dict:
    # GLUE RTE: 0 = entailment, 1 = not_entailment; the nli file spells the names out.
    prompt = (f"{_text(rec, 'sentence1')}\nQuestion: Does this imply that \"{_text(rec, 'sentence2')}\"?"
              " Yes or no?\nAnswer:")
    mapping = {0: 1, 1: 0, "entailment": 1, "not_entailment": 0}
    return {"prompt": prompt, "choices": list(YES_NO), "label": _label(rec, "label", mapping)}


def _mmlu(rec: Record) -> dict:
    lines, choices = _lettered(rec, "choices")
    subject = rec.string("subject", required=False)
    about = f" about {subject.replace('_', ' ')}" if subject else ""
    prompt = (f"The following is a multiple choice question{about}.\n\n{_text(rec, 'question')}\n"
              + "\n".join(lines) + "\nAnswer:")
    mapping = {i: i for i in range(len(choices))}
    mapping.update({LETTERS[i]: i for i in range(len(choices))})
    return {"prompt": prompt, "choices": choices, "label": _label(rec, "answer", mapping)}


def _dialogue(rec: Record) -> dict:
    lines, choices = _lettered(rec, "options")
    prompt = (f"Dialogue: {_text(rec, 'article')}\nWhich response continues the dialogue best?\n"
              + "\n".join(lines) + "\nAnswer:")
    mapping = {LETTERS[i]: i for i in range(len(choices))}
    return {"prompt": prompt, "choices": choices, "label": _label(rec, "answers", mapping)}


ROW_BUILDERS: dict[str, Callable[[Record], dict]] = {
    "sst2": _sentiment, "sentiment": _sentiment, "mrpc": _mrpc, "cola": _cola,
    "rte": _entailment, "nli": _entailment, "mmlu": _mmlu, "dialogue": _dialogue,
}


def read_general_task(task: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every row of ``general/<task>.jsonl``, normalised, in file order."""
    if task not in ROW_BUILDERS:
        raise HyperEditError(f"unknown general task {task!r}; known: {', '.join(GENERAL_TASKS)}")
    path = require_file(f"general/{task}.jsonl", data_dir, what=f"general task {task}")
    build = ROW_BUILDERS[task]
    return [build(Record(str(path), number, data)) for number, data in read_records(path)]


def load_general_tasks(
    data_dir: str | os.PathLike | None = None,
    tasks: Iterable[str] | str | None = None,
    per_task: int | None = 50,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """A fixed sample of ``per_task`` rows of each task (all rows when ``per_task`` is None
    or larger than the file), chosen with a generator seeded by ``seed`` and the task name
    and returned in file order, so the same arguments always give the same rows."""
    if isinstance(tasks, str):
        tasks = [tasks]
    names = list(GENERAL_TASKS if tasks is None else tasks)
    if per_task is not None and (isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 0):
        raise HyperEditError(f"per_task must be a non-negative integer or None, got {per_task!r}")
    out = {}
    for task in names:
        rows = read_general_task(task, data_dir)
        if per_task is not None and per_task < len(rows):
            rng = random.Random(f"{seed}:{task}")  # str seeds are hashed with SHA-512: stable
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), per_task))]
        out[task] = rows
    return out
