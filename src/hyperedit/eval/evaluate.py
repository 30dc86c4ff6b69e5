"""Edit-quality metrics over a list of requests: ES, GS, LS and CounterFact probability scores.

``LocalityReference`` is taken from the unedited model before editing; ``evaluate`` then reads
the edited model. LS compares the edited model's argmax with the unedited model's own argmax;
LS_data compares with the dataset's answer where one exists.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.adapters import ModelAdapter
from ..models.limits import LOCALITY_CONTINUATION_TOKENS
from ..requests import EditRequest
from .continuation import (evaluation_wants, probe_generations, reference_with_generations, score_and_continue,
                           supports_continuation)
from .generation import generate_for, generated_metrics, generation_probes, locality_probes, portability_probes
from .metrics import (PairScore, agreement, generate, mean, ngram_entropy, per_request_means, score_examples,
                      score_pairs)


@dataclass
class LocalityReference:
    """Pre-edit state of the locality prompts: the pairs to score and the unedited predictions."""

    pairs: list[tuple[int, str, str, bool]]  # (request index, prompt, target text, target from dataset)
    predicted: list[list[int]]
    generated: list[list[int]] | None = None  # greedy tokens per pair (eval.generation), when asked for


def locality_reference(adapter: ModelAdapter, requests: list[EditRequest], batch_size: int = 32,
                       generated: bool = False) -> LocalityReference:
    """Record the unedited model's predictions on every locality prompt (and, with ``generated``,
    its greedy generations, for ``LS_gen``).

    Prompts without a dataset answer are continued greedily for a few tokens, and that
    continuation is what locality is measured on.
    """
    pairs = []
    missing = [(i, loc.prompt) for i, r in enumerate(requests) for loc in r.locality if loc.answer is None]
    continuations = dict(zip(missing, generate(adapter, [p for _, p in missing], LOCALITY_CONTINUATION_TOKENS)))
    for i, request in enumerate(requests):
        for loc in request.locality:
            if loc.answer is not None:
                pairs.append((i, loc.prompt, loc.answer, True))
            else:
                text = continuations[(i, loc.prompt)].strip() or "the"
                pairs.append((i, loc.prompt, text, False))
    if generated and supports_continuation(adapter):  # the generations from the scoring pass's cache
        scores, tokens = reference_with_generations(adapter, pairs, batch_size)
        return LocalityReference(pairs, [s.predicted for s in scores], tokens)
    scores = score_pairs(adapter, [p for _, p, _, _ in pairs], [t for _, _, t, _ in pairs], batch_size)
    tokens = generate_for(adapter, locality_probes(pairs), batch_size) if generated else None
    return LocalityReference(pairs, [s.predicted for s in scores], tokens)


def evaluate(adapter: ModelAdapter, requests: list[EditRequest], reference: LocalityReference | None,
             batch_size: int = 32, fluency_prompts: int = 0, generated: bool = False) -> tuple[dict, list[dict]]:
    """Metrics over all requests, and one row of per-request values for each request.

    ``PS`` is teacher-forced accuracy on portability prompts (their first answer); ``generated``
    adds the generated-answer metrics of ``eval.generation`` (``ES_gen``, ``GS_gen``, ``PS_gen``,
    ``LS_gen``)."""
    n = len(requests)
    prompts, targets, owner, kind = [], [], [], []

    def add(i, prompt, target, what):
        prompts.append(prompt), targets.append(target), owner.append(i), kind.append(what)

    for i, r in enumerate(requests):
        add(i, r.prompt, r.target, "es")
        for text in r.rephrasings:
            add(i, text, r.target, "gs")
        for probe_kind, probe in portability_probes(r):
            add(i, probe.prompt, probe.answers[0], "ps")
            add(i, probe.prompt, probe.answers[0], f"ps_{probe_kind}")
        if r.old_target is not None:
            add(i, r.prompt, r.old_target, "es_old")
            for text in r.rephrasings:
                add(i, text, r.old_target, "gs_old")
            for loc in r.locality:
                if loc.answer is not None and loc.answer.strip() == r.old_target.strip():
                    add(i, loc.prompt, r.target, "nb_new")
                    add(i, loc.prompt, r.old_target, "nb_old")
    loc_pairs = [(p, t) for _, p, t, _ in reference.pairs] if reference is not None else []
    continued = generated and supports_continuation(adapter)
    probes = generation_probes(requests)[0] if continued else []
    wants = evaluation_wants(adapter, probes, reference) if continued else {}
    scores, loc_scores, greedy, kept = _score_unique(adapter, list(zip(prompts, targets)), loc_pairs, batch_size,
                                                     wants)
    by_kind: dict[str, list[tuple[int, PairScore]]] = {}
    for i, what, s in zip(owner, kind, scores):
        by_kind.setdefault(what, []).append((i, s))

    es = per_request_means([(i, s.accuracy) for i, s in by_kind.get("es", [])], n)
    gs = per_request_means([(i, s.accuracy) for i, s in by_kind.get("gs", [])], n)
    rows = [{"id": r.id, "ES": es[i], "GS": gs[i]} for i, r in enumerate(requests)]
    metrics = {"ES": mean(es), "GS": mean(gs)}

    if reference is not None and reference.pairs:
        ls = per_request_means([(i, agreement(ref, s.predicted)) for (i, _, _, _), ref, s
                           in zip(reference.pairs, reference.predicted, loc_scores)], n)
        ls_data = per_request_means([(i, s.accuracy) for (i, _, _, from_data), s in zip(reference.pairs, loc_scores) if from_data], n)
        metrics["LS"] = mean(ls)
        metrics["LS_data"] = mean(ls_data)
        for row, a, b in zip(rows, ls, ls_data):
            row["LS"], row["LS_data"] = a, b
    else:
        metrics["LS"] = None

    for what in by_kind:
        if what == "ps" or what.startswith("ps_"):
            ps = per_request_means([(i, s.accuracy) for i, s in by_kind[what]], n)
            metrics[what.upper() if what == "ps" else "PS_" + what[3:]] = mean(ps)
            if what == "ps":
                for row, value in zip(rows, ps):
                    row["PS"] = value
    metrics.update(_probability_scores(by_kind, n))
    if generated:
        first_tokens = {pair: s.predicted[0] for pair, s in zip(zip(prompts, targets), scores) if s.predicted}
        extra = {}
        if continued:
            extra["generations"] = probe_generations(adapter, probes, greedy)
            if reference is not None and reference.generated is not None:
                extra["kept"] = [kept[(p, t)] for _, p, t, _ in reference.pairs]
        gen_metrics, gen_rows = generated_metrics(adapter, requests, reference, batch_size, first_tokens, **extra)
        metrics.update(gen_metrics)
        for row, extra in zip(rows, gen_rows):
            row.update(extra)
    if fluency_prompts:
        texts = generate(adapter, [r.prompt for r in requests[:fluency_prompts]], max_new_tokens=30)
        metrics["fluency"] = mean(ngram_entropy(t) for t in texts)
    return metrics, rows


def _score_unique(adapter: ModelAdapter, pairs: list, loc_pairs: list, batch_size: int, wants: dict):
    """Scores of ``pairs`` and ``loc_pairs``, each distinct (prompt, target) pair scored once:
    CounterFact's neighbourhood prompts are scored with the old object both as locality pairs
    and for the neighbourhood score, and paraphrases may repeat. ``wants`` (see
    ``continuation.evaluation_wants``): the greedy tokens and reference checks, per pair, from
    the same pass."""
    everything = pairs + loc_pairs
    # distinct pairs, similar lengths batched together (less padding; each pair's score does not
    # depend on its batch: right padding, causal attention)
    unique = sorted(dict.fromkeys(everything), key=lambda pair: (len(pair[0]) + len(pair[1]), pair))
    greedy, kept = {}, {}
    if wants:
        found, tokens, same = score_and_continue(adapter, unique, {i: wants[p] for i, p in enumerate(unique)
                                                                    if p in wants}, batch_size)
        greedy = {unique[i]: t for i, t in tokens.items()}
        kept = {unique[i]: k for i, k in same.items()}
    else:
        found = score_examples(adapter, unique, batch_size)
    scored = dict(zip(unique, found))
    return [scored[p] for p in pairs], [scored[p] for p in loc_pairs], greedy, kept


def _probability_scores(by_kind: dict, n: int) -> dict:
    """CounterFact scores: fraction with P(new) > P(old) (efficacy, paraphrase), P(old) > P(new)
    on neighbourhood prompts, and the mean probability differences (magnitudes)."""
    out = {}
    for name, new_kind, old_kind, sign in (("efficacy", "es", "es_old", 1), ("paraphrase", "gs", "gs_old", 1),
                                           ("neighborhood", "nb_new", "nb_old", -1)):
        old = by_kind.get(old_kind, [])
        if not old:
            continue
        new_by_owner: dict[int, list[PairScore]] = {}
        for i, s in by_kind[new_kind]:
            new_by_owner.setdefault(i, []).append(s)
        old_by_owner: dict[int, list[PairScore]] = {}
        for i, s in old:
            old_by_owner.setdefault(i, []).append(s)
        wins, gaps = [], []
        for i, olds in old_by_owner.items():
            for s_new, s_old in zip(new_by_owner.get(i, []), olds):
                diff = s_new.prob - s_old.prob
                wins.append((i, float(sign * diff > 0)))
                gaps.append((i, sign * diff))
        out[f"{name}_score"] = mean(per_request_means(wins, n))
        out[f"{name}_magnitude"] = mean(per_request_means(gaps, n))
    return out
