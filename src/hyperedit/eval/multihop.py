"""MQuAKE evaluation: write each case's chain of rewrites, then ask its multi-hop questions.

As MQuAKE defines multi-hop accuracy, a case counts as answered when the model answers *any* of
its (three) questions with the new answer or one of its aliases; answers are generated greedily
(``eval.generation``: prefix match after normalisation, ``MH``; exact match, ``MH_em``). The
questions are asked as ``QUESTION_TEMPLATE`` (the models here are base LMs, chat template off).
``MH_tf`` is the teacher-forced counterpart: the best over the case's questions of the token
accuracy of the new answer. ``MH_old``: generation still gives the unedited world's answer.

``k`` cases are edited at once (MQuAKE's "k edited instances"): one edit of all their rewrites,
chain by chain in the file's order; every case of the group is scored with that edit applied,
then it is reverted. ES/GS over the rewrites themselves are measured as elsewhere.
"""
from __future__ import annotations

import logging

from ..bench.records import make_record, peak_rss_during
from ..lm import iter_chunks
from ..models.limits import check_request_lengths
from ..progress import progress
from .evaluate import evaluate, locality_reference
from .generation import Probe, generate_for, match_scores
from .metrics import mean, score_pairs

log = logging.getLogger(__name__)

QUESTION_TEMPLATE = "Q: {question} A:"


def multihop_scores(adapter, cases, batch_size: int = 32) -> list[dict]:
    """Per case: ``MH``, ``MH_em``, ``MH_tf`` and ``MH_old`` (see the module docstring)."""
    prompts = [(c, QUESTION_TEMPLATE.format(question=q)) for c in cases for q in c.questions]
    new = [Probe(p, c.answers) for c, p in prompts]
    old = [Probe(p, c.old_answers) for c, p in prompts]
    teacher = score_pairs(adapter, [p for _, p in prompts], [c.answers[0] for c, _ in prompts], batch_size)
    first = {(p, c.answers[0]): s.predicted[0] for (c, p), s in zip(prompts, teacher) if s.predicted}
    new_tokens = generate_for(adapter, new, batch_size, first_tokens=first)
    old_tokens = iter(generate_for(adapter, [o for o in old if o.answers], batch_size))
    out, at = [], 0
    for case in cases:
        rows = range(at, at + len(case.questions))
        at += len(case.questions)
        matches = [match_scores(adapter, new[i], new_tokens[i]) for i in rows]
        olds = [match_scores(adapter, old[i], next(old_tokens))[1] for i in rows if old[i].answers]
        out.append({"id": case.id, "MH": max(m[1] for m in matches), "MH_em": max(m[0] for m in matches),
                    "MH_tf": max(teacher[i].accuracy for i in rows), "MH_old": max(olds) if olds else None})
    return out


def run_mquake(lm, editor, cases, *, cases_per_edit: int = 1, dataset: str = "mquake", split: str = "hard",
               command: str | None = None, seed: int = 0, eval_batch_size: int = 32, generated: bool = True) -> dict:
    """Edit ``cases_per_edit`` cases' chains at once, score their questions and rewrites, revert;
    one record over all cases (``MH`` ... means over cases, ``MH_pre`` on the unedited model)."""
    adapter = lm.adapter
    check_request_lengths(adapter, [r for c in cases for r in c.chain])
    before = multihop_scores(adapter, cases, eval_batch_size)
    scores, per_group, seconds, peak = [], [], 0.0, 0.0
    for group in progress(list(iter_chunks(cases, cases_per_edit)), desc=f"{editor.name} MQuAKE", unit="edit"):
        requests = [r for case in group for r in case.chain]
        reference = locality_reference(adapter, requests, eval_batch_size, generated=generated)
        delta, took, group_peak = peak_rss_during(editor.edit, lm, requests)
        seconds, peak = seconds + took, max(peak, group_peak)
        with delta.applied(lm.model):
            metrics, _ = evaluate(adapter, requests, reference, eval_batch_size, generated=generated)
            scores.extend(multihop_scores(adapter, group, eval_batch_size))
        per_group.append((len(requests), metrics))
    total = sum(n for n, _ in per_group)
    keys = list(dict.fromkeys(k for _, m in per_group for k in m))
    metrics = {k: _weighted([(n, m.get(k)) for n, m in per_group]) for k in keys}
    for key in ("MH", "MH_em", "MH_tf", "MH_old"):
        metrics[key] = mean(s[key] for s in scores)
    metrics["MH_pre"] = mean(s["MH"] for s in before)
    metrics["MH_old_pre"] = mean(s["MH_old"] for s in before)
    return make_record(editor=editor.name, model=lm.name, dataset=dataset, split=split, mode="batch",
                       n_edits=total, metrics=metrics, edit_time_s=seconds, peak_rss_mb=peak, command=command,
                       seed=seed, n_cases=len(cases), cases_per_edit=cases_per_edit,
                       question_template=QUESTION_TEMPLATE)


def _weighted(pairs) -> float | None:
    """Mean over groups weighted by their number of rewrites (None values left out)."""
    kept = [(n, v) for n, v in pairs if v is not None]
    return sum(n * v for n, v in kept) / sum(n for n, _ in kept) if kept else None
