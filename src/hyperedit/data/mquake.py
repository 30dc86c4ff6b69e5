"""MQuAKE: multi-hop questions over a chain of edited facts.

Each case asks for 2-4 rewrites (``requested_rewrite``) that form a chain (Hey Jude -> performer
-> manager -> citizenship -> official language); after all of them are written, the case's
multi-hop ``questions`` should be answered with ``new_answer`` (or one of ``new_answer_alias``).
A case maps to an ``MQuAKECase``: its chain as ``EditRequest``s in the file's order (prompt =
the rewrite's template with the subject in its ``{}``, target = ``target_new.str``, old target =
``target_true.str``, the rewrite's ``question`` as a rephrasing), the questions, and the answers.
"""
from __future__ import annotations

from dataclasses import dataclass

from hyperedit.data._common import Record, Records, build_request, json_type
from hyperedit.requests import EditRequest


@dataclass(frozen=True)
class MQuAKECase:
    id: str
    chain: tuple[EditRequest, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]  # new_answer first, then its aliases
    old_answers: tuple[str, ...]  # answer and its aliases (the unedited world's)


def _str_field(rec: Record, value, name: str) -> str:
    if isinstance(value, dict):
        return rec.string("", value=value.get("str"), name=f"{name}.str")
    return rec.string("", value=value, name=name)


def _rewrite(rec: Record, index: int, rewrite, case_id: str) -> EditRequest:
    name = f"requested_rewrite[{index}]"
    if not isinstance(rewrite, dict):
        raise rec.error(name, f"expected an object, got {json_type(rewrite)}")
    template = rec.string("", value=rewrite.get("prompt"), name=f"{name}.prompt")
    if "{}" not in template:
        raise rec.error(f"{name}.prompt", "has no '{}' placeholder for the subject")
    subject = rec.string("", value=rewrite.get("subject"), name=f"{name}.subject")
    target = _str_field(rec, rewrite.get("target_new"), f"{name}.target_new")
    old = _str_field(rec, rewrite.get("target_true"), f"{name}.target_true") if rewrite.get("target_true") else None
    question = rec.string("", value=rewrite.get("question"), name=f"{name}.question") if rewrite.get("question") else None
    return build_request(
        rec, {"prompt": f"{name}.prompt", "target": f"{name}.target_new", "old_target": f"{name}.target_true",
              "subject": f"{name}.subject", "rephrasings": f"{name}.question"},
        prompt=template.replace("{}", subject, 1), target=target, subject=subject,
        rephrasings=(question,) if question else (), old_target=None if old == target else old,
        id=f"{case_id}.{index}", meta={"format": "mquake", "case": case_id, "hop": index})


def _answers(rec: Record, main: str, alias: str) -> tuple[str, ...]:
    first = rec.string(main)
    return tuple(dict.fromkeys([first, *rec.strings(alias, required=False)]))


def map_mquake_cases(records: Records, source: str) -> list[MQuAKECase]:
    """Every record as an ``MQuAKECase`` (errors name file, record and field)."""
    cases = []
    for index, (number, data) in enumerate(records):
        rec = Record(source, number, data)
        case_id = rec.ident("case_id", str(index))
        rewrites = data.get("requested_rewrite")
        if not isinstance(rewrites, list) or not rewrites:
            raise rec.error("requested_rewrite", "expected a non-empty list of rewrites")
        chain = tuple(_rewrite(rec, i, r, case_id) for i, r in enumerate(rewrites))
        questions = tuple(rec.strings("questions"))
        if not questions:
            raise rec.error("questions", "empty list")
        cases.append(MQuAKECase(case_id, chain, questions, _answers(rec, "new_answer", "new_answer_alias"),
                                _answers(rec, "answer", "answer_alias") if rec.has("answer") else ()))
    return cases


def map_mquake(records: Records, source: str) -> list[EditRequest]:
    """The rewrites of every case, chain after chain (``hyperedit edit`` / ``eval`` on an MQuAKE file)."""
    return [r for case in map_mquake_cases(records, source) for r in case.chain]
