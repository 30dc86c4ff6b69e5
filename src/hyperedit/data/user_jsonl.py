"""The user JSONL format: one edit per line, strictly checked (see docs/data.md).

    {"prompt": "The capital of France is", "target": "Lyon", "subject": "France",
     "rephrasings": ["France's capital city is"],
     "locality": [{"prompt": "The capital of Spain is", "answer": "Madrid"}],
     "old_target": "Paris", "id": "fr-capital"}

Unlike the benchmark layouts nothing is dropped or guessed here: an unknown field (usually a
typo), a wrong type, an empty string or a subject missing from the prompt is an error.
"""
from __future__ import annotations

import difflib

from hyperedit.data._common import Record, Records, build_request, json_type
from hyperedit.requests import EditRequest, LocalityPrompt

FIELDS = ("prompt", "target", "subject", "rephrasings", "locality", "old_target", "id")
LOCALITY_FIELDS = ("prompt", "answer")


def _unknown(rec: Record, keys, allowed: tuple[str, ...], prefix: str = "") -> None:
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(allowed)}"
            raise rec.error(f"{prefix}{key}", f"unknown field ({suggestion})")


def parse_user_record(rec: Record) -> EditRequest:
    """Check one user record and build its ``EditRequest``."""
    data = rec.data
    _unknown(rec, data, FIELDS)
    prompt = rec.string("prompt")
    target = rec.string("target")
    subject = rec.string("subject", required=False)
    if subject is not None and subject not in prompt:
        raise rec.error("subject", f"subject {subject!r} does not occur in the prompt")
    rephrasings = rec.strings("rephrasings", required=False)
    locality = []
    value = data.get("locality")
    if value is not None:
        if not isinstance(value, list):
            raise rec.error("locality", f"expected a list of objects, got {json_type(value)}")
        for i, entry in enumerate(value):
            name = f"locality[{i}]"
            if not isinstance(entry, dict):
                raise rec.error(name, f"expected an object with 'prompt' and optional 'answer', got {json_type(entry)}")
            _unknown(rec, entry, LOCALITY_FIELDS, prefix=f"{name}.")
            loc_prompt = rec.string("", value=entry.get("prompt"), name=f"{name}.prompt")
            answer = entry.get("answer")
            if answer is not None:
                answer = rec.string("", value=answer, name=f"{name}.answer")
            locality.append(LocalityPrompt(loc_prompt, answer))
    old_target = rec.string("old_target", required=False)
    return build_request(
        rec, None,
        prompt=prompt, target=target, subject=subject, rephrasings=tuple(rephrasings),
        locality=tuple(locality), old_target=old_target, id=rec.ident("id", None),
        meta={"format": "user"},
    )


def map_user(records: Records, source: str) -> list[EditRequest]:
    """Every record of a user file, or an ``InputError`` for the first bad one."""
    return [parse_user_record(Record(source, number, data)) for number, data in records]


def user_record(request: EditRequest) -> dict:
    """The user-format record of a request (the inverse of ``parse_user_record``); empty fields left out."""
    record = {"prompt": request.prompt, "target": request.target, "subject": request.subject,
              "rephrasings": list(request.rephrasings) or None,
              "locality": [{k: v for k, v in (("prompt", loc.prompt), ("answer", loc.answer)) if v is not None}
                           for loc in request.locality] or None,
              "old_target": request.old_target, "id": request.id}
    return {k: v for k, v in record.items() if v is not None}


def requests_from_records(records: list, source: str) -> list[EditRequest]:
    """Requests from user-format records already parsed from JSON (e.g. a ledger entry, an HTTP body)."""
    if not isinstance(records, list):
        raise Record(source, 0, {}).error(None, f"expected a list of edit objects, got {json_type(records)}")
    out = []
    for number, data in enumerate(records, 1):
        if not isinstance(data, dict):
            raise Record(source, number, {}).error(None, f"expected an object, got {json_type(data)}")
        out.append(parse_user_record(Record(source, number, data)))
    return out
