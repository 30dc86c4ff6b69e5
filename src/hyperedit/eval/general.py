"""Zero-shot general ability: multiple-choice tasks scored by the log-probability of each choice.

Rows come from ``hyperedit.data.load_general_tasks`` (``{prompt, choices, label}``). Each choice
is scored as a continuation of the prompt by the sum of its tokens' log-probabilities (one
teacher-forced pass per (prompt, choice) pair); the prediction is the best-scoring choice.
Reported per task: accuracy and macro-F1 over the task's classes.
"""
from __future__ import annotations

import logging

from .metrics import score_pairs

log = logging.getLogger(__name__)


def macro_f1(labels: list[int], predictions: list[int], n_classes: int) -> float:
    """Unweighted mean over classes of F1 (a class never predicted nor present counts 0)."""
    scores = []
    for c in range(n_classes):
        tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions) if y == c and p != c)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(1, n_classes)


def predict_choices(adapter, rows: list[dict], batch_size: int = 16) -> list[int]:
    """Index of the highest log-probability choice of every row."""
    prompts, targets, owner = [], [], []
    for i, row in enumerate(rows):
        for choice in row["choices"]:
            prompts.append(row["prompt"]), targets.append(choice), owner.append(i)
    scores = score_pairs(adapter, prompts, targets, batch_size)
    best: list[tuple[float, int]] = [(-float("inf"), 0) for _ in rows]
    counters = [0] * len(rows)
    for i, s in zip(owner, scores):
        logprob = -s.mean_nll * max(1, len(s.target))
        if logprob > best[i][0]:
            best[i] = (logprob, counters[i])
        counters[i] += 1
    return [index for _, index in best]


def evaluate_general(adapter, tasks: dict[str, list[dict]], batch_size: int = 16) -> dict[str, dict]:
    """``{task: {"acc", "f1", "n"}}`` plus ``"mean": {"acc", "f1"}`` over the tasks."""
    out: dict[str, dict] = {}
    for task, rows in tasks.items():
        if not rows:
            continue
        predictions = predict_choices(adapter, rows, batch_size)
        labels = [int(r["label"]) for r in rows]
        n_classes = max(len(r["choices"]) for r in rows)
        acc = sum(int(y == p) for y, p in zip(labels, predictions)) / len(rows)
        out[task] = {"acc": acc, "f1": macro_f1(labels, predictions, n_classes), "n": len(rows)}
    if out:
        out["mean"] = {"acc": sum(v["acc"] for v in out.values()) / len(out),
                       "f1": sum(v["f1"] for v in out.values()) / len(out)}
    return out


def retention(before: dict[str, dict], now: dict[str, dict]) -> dict[str, float | None]:
    """Per task and mean, ``now / before`` of accuracy (None where the baseline is 0)."""
    return {task: (now[task]["acc"] / before[task]["acc"] if before[task]["acc"] else None)
            for task in before if task in now}
