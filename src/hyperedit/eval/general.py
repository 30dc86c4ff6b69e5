"""Zero-shot general ability: multiple-choice tasks scored by the log-probability of each choice.

Rows come from ``hyperedit.data.load_general_tasks`` (``{prompt, choices, label}``). Each choice
is scored as a continuation of the prompt by the sum of its tokens' log-probabilities (one
teacher-forced pass per (prompt, choice) pair, or a single pass per prompt when every choice is
one token after the same prompt tokens); the prediction is the best-scoring choice.
Reported per task: accuracy and macro-F1 over the task's classes.
"""
from __future__ import annotations

import logging

import torch

from ..lm import iter_chunks, target_logits
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


def _single_token_choices(adapter, row: dict) -> list[int] | None:
    """Target token id of each choice when all are one token after identical prompt tokens."""
    ids, prefix = [], None
    for choice in row["choices"]:
        batch = adapter.encode([row["prompt"]], [choice])
        labels = batch["labels"][0]
        target = labels[labels != -100]
        if adapter.is_seq2seq or target.numel() != 1:
            return None
        start = int((labels != -100).nonzero()[0])
        head = batch["input_ids"][0, :start].tolist()
        if prefix is not None and head != prefix:
            return None
        prefix = head
        ids.append(int(target[0]))
    return ids


@torch.no_grad()
def predict_choices(adapter, rows: list[dict], batch_size: int = 16) -> list[int]:
    """Index of the highest log-probability choice of every row."""
    predictions: dict[int, int] = {}
    fast = [(i, ids) for i, ids in ((i, _single_token_choices(adapter, r)) for i, r in enumerate(rows)) if ids]
    device = next(adapter.model.parameters()).device
    for chunk in iter_chunks(fast, batch_size):  # one pass per prompt: next-token log-probs
        batch = adapter.encode([rows[i]["prompt"] for i, _ in chunk], [rows[i]["choices"][0] for i, _ in chunk],
                               device=device)
        logprobs = target_logits(adapter, batch).logits.float().log_softmax(-1)  # one position per row
        for (i, ids), row_lp in zip(chunk, logprobs):
            predictions[i] = int(row_lp[torch.tensor(ids, device=row_lp.device)].argmax())
    slow = [i for i in range(len(rows)) if i not in predictions]
    prompts, targets, owner = [], [], []
    for i in slow:
        for choice in rows[i]["choices"]:
            prompts.append(rows[i]["prompt"]), targets.append(choice), owner.append(i)
    best: dict[int, tuple[float, int]] = {}
    counters = {i: 0 for i in slow}
    for i, s in zip(owner, score_pairs(adapter, prompts, targets, batch_size)):
        logprob = -s.mean_nll * max(1, len(s.target))
        if i not in best or logprob > best[i][0]:
            best[i] = (logprob, counters[i])
        counters[i] += 1
    predictions.update({i: index for i, (_, index) in best.items()})
    return [predictions[i] for i in range(len(rows))]


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
