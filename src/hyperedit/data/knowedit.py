"""KnowEdit (EasyEdit's benchmark): portability prompts, and the WikiBio layout.

KnowEdit's WikiData_counterfact and WikiData_recent records share the zsRE KnowEdit layout
(``prompt``, ``target_new``, ``locality{kind: [...]}``, ``portability{kind: [...]}``) and are
mapped by ``zsre.map_knowedit``; this module parses their ``portability`` (Reasoning,
Subject_Aliasing, Logical_Generalization) into ``meta["portability"]``, a list of
``{"kind", "prompt", "answers"}`` that ``eval.generation`` and ``eval.evaluate`` score (``PS``).
A portability ground truth is a string, a list of strings, or a list of lists (several objects,
each with its aliases): every string counts as an answer, the first one is the canonical answer
teacher forcing scores.

WikiBio records (``text``, ``labels``, ``concept``) ask the model to continue a biography passage
with the next sentence: prompt = text, target = labels, subject = concept when the text contains it.
"""
from __future__ import annotations

from hyperedit.data._common import Record, Records, SubjectDrops, build_request, json_type, map_each
from hyperedit.requests import EditRequest, LocalityPrompt


def flat_answers(rec: Record, field: str, value) -> list[str]:
    """Every string of a ground truth (string, list, list of lists), in order, each checked; blank
    strings and empty lists (a few KnowEdit records have them) are no answer."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, list):
        raise rec.error(field, f"expected a string or a list of strings, got {json_type(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        out.extend(a for a in flat_answers(rec, f"{field}[{i}]", item) if a not in out)
    return out


def _entries(rec: Record, field: str, value) -> list[tuple[str, str, object, str]]:
    """(kind, prompt, ground truth, field name) of an object of lists of ``{prompt, ground_truth}``."""
    if not isinstance(value, dict):
        raise rec.error(field, f"expected an object of lists, got {json_type(value)}")
    out = []
    for kind, entries in value.items():
        name = f"{field}.{kind}"
        if not isinstance(entries, list):
            raise rec.error(name, f"expected a list, got {json_type(entries)}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise rec.error(f"{name}[{i}]", "expected an object with prompt and ground_truth")
            prompt = rec.string("", value=entry.get("prompt"), name=f"{name}[{i}].prompt")
            out.append((kind, prompt, entry.get("ground_truth"), f"{name}[{i}].ground_truth"))
    return out


def portability(rec: Record) -> list[dict]:
    """The record's ``portability`` as ``[{"kind", "prompt", "answers"}]`` (empty when absent)."""
    value = rec.data.get("portability")
    if value is None:
        return []
    probes = []
    for kind, prompt, truth, name in _entries(rec, "portability", value):
        if truth is None:
            raise rec.error(name, "missing required field")
        answers = flat_answers(rec, name, truth)
        if answers:  # a blank ground truth asks nothing that can be scored
            probes.append({"kind": kind, "prompt": prompt, "answers": answers})
    return probes


def locality(rec: Record) -> list[LocalityPrompt]:
    """Every ``locality`` prompt (Relation_Specificity, Forgetfulness, ...), answered by its first
    ground truth when it has one (WikiData_recent's have none: new facts)."""
    value = rec.data.get("locality")
    if value is None:
        return []
    out = []
    for _, prompt, truth, name in _entries(rec, "locality", value):
        answers = flat_answers(rec, name, truth) if truth is not None else []
        out.append(LocalityPrompt(prompt, answers[0] if answers else None))
    return out


def map_wikibio(records: Records, source: str) -> list[EditRequest]:
    """KnowEdit WikiBio: prompt=text, target=labels, subject=concept (if in the text), locality
    from ``locality``; id = the record's position."""
    return map_each(records, source, _wikibio_request)


def _wikibio_request(rec: Record, index: int, drops: SubjectDrops) -> EditRequest:
    prompt = rec.string("text")
    target = rec.string("labels")
    subject = drops.check(rec.string("concept", required=False), prompt)
    return build_request(rec, {"prompt": "text", "target": "labels", "subject": "concept"},
                         prompt=prompt, target=target, subject=subject, locality=tuple(locality(rec)),
                         id=str(index), meta={"format": "wikibio"})
