"""zsRE in its two common layouts: MEND (``src``/``answers``) and KnowEdit (``target_new``)."""
from __future__ import annotations

from hyperedit.data._common import Record, Records, SubjectDrops, build_request, easyedit_core
from hyperedit.requests import EditRequest, LocalityPrompt


def _first_answer(rec: Record, field: str, value) -> str:
    """KnowEdit ground truths are a string, a list of strings, or a list of lists of strings."""
    while isinstance(value, list):
        if not value:
            raise rec.error(field, "empty list")
        value, field = value[0], f"{field}[0]"
    return rec.string(field, value=value, name=field)


def map_mend_zsre(records: Records, source: str) -> list[EditRequest]:
    """MEND zsRE: prompt=src, target=answers[0], one rephrasing, one NQ locality pair.

    ``pred`` is a model's prediction, not the old fact: it goes to ``meta`` and
    ``old_target`` stays None. ``alt``, all ``answers`` and ``cond`` are kept in ``meta`` too.
    """
    drops = SubjectDrops(source)
    out = []
    for index, (number, data) in enumerate(records):
        rec = Record(source, number, data)
        prompt = rec.string("src")
        answers = rec.strings("answers")
        if not answers:
            raise rec.error("answers", "empty list")
        subject = drops.check(rec.string("subject", required=False), prompt)
        rephrase = rec.string("rephrase", required=False)
        locality = ()
        if rec.has("loc"):
            locality = (LocalityPrompt(rec.string("loc"), rec.string("loc_ans", required=False)),)
        meta = {"format": "zsre-mend", "answers": answers}
        for key in ("pred", "alt", "cond"):
            if isinstance(data.get(key), str):
                meta[key] = data[key]
        out.append(build_request(
            rec, {"prompt": "src", "target": "answers[0]", "rephrasings": "rephrase"},
            prompt=prompt, target=answers[0], subject=subject,
            rephrasings=(rephrase,) if rephrase else (), locality=locality,
            old_target=None, id=str(index), meta=meta,
        ))
    drops.report()
    return out


def map_knowedit(records: Records, source: str) -> list[EditRequest]:
    """KnowEdit zsRE: target=target_new, old_target=ground_truth[0] when it differs.

    Locality prompts come from every list under ``locality`` (``Relation_Specificity`` in
    zsRE), answered by their first ground truth; ``portability`` is kept in ``meta``.
    """
    drops = SubjectDrops(source)
    out = []
    for index, (number, data) in enumerate(records):
        rec = Record(source, number, data)
        prompt, target, subject = easyedit_core(rec, drops)
        old_target = None
        ground_truth = data.get("ground_truth")
        if ground_truth is not None:
            old = _first_answer(rec, "ground_truth", ground_truth)
            if old.strip() != target.strip():
                old_target = old
        rephrase = rec.string("rephrase_prompt", required=False)
        locality = []
        loc = data.get("locality")
        if loc is not None:
            if not isinstance(loc, dict):
                raise rec.error("locality", "expected an object of lists")
            for kind, entries in loc.items():
                name = f"locality.{kind}"
                if not isinstance(entries, list):
                    raise rec.error(name, "expected a list")
                for i, entry in enumerate(entries):
                    if not isinstance(entry, dict):
                        raise rec.error(f"{name}[{i}]", "expected an object with prompt and ground_truth")
                    loc_prompt = rec.string("", value=entry.get("prompt"), name=f"{name}[{i}].prompt")
                    answer = None
                    if entry.get("ground_truth") is not None:
                        answer = _first_answer(rec, f"{name}[{i}].ground_truth", entry["ground_truth"])
                    locality.append(LocalityPrompt(loc_prompt, answer))
        meta = {"format": "zsre-knowedit"}
        if ground_truth is not None:
            meta["ground_truth"] = ground_truth
        for key in ("portability", "cond"):
            if data.get(key) is not None:
                meta[key] = data[key]
        out.append(build_request(
            rec, {"target": "target_new", "old_target": "ground_truth", "rephrasings": "rephrase_prompt"},
            prompt=prompt, target=target, subject=subject,
            rephrasings=(rephrase,) if rephrase else (), locality=tuple(locality),
            old_target=old_target, id=str(index), meta=meta,
        ))
    drops.report()
    return out
