"""zsRE in its two common layouts: MEND (``src``/``answers``) and KnowEdit (``target_new``)."""
from __future__ import annotations

from hyperedit.data._common import Record, Records, SubjectDrops, build_request, easyedit_core, map_each
from hyperedit.data.knowedit import flat_answers, locality, portability
from hyperedit.requests import EditRequest, LocalityPrompt


def map_mend_zsre(records: Records, source: str) -> list[EditRequest]:
    """MEND zsRE: prompt=src, target=answers[0], one rephrasing, one NQ locality pair.

    ``pred`` is a model's prediction, not the old fact: it goes to ``meta`` and
    ``old_target`` stays None. ``alt``, all ``answers`` and ``cond`` are kept in ``meta`` too.
    A file whose first record has no ``answers`` is the reduced layout (EasyEdit's
    zsre_mend_train_10000): there ``alt`` is the edit target (it equals MEND's ``answers[0]``
    on the records both layouts share), so every record of it needs ``alt``.
    """
    drops = SubjectDrops(source)
    reduced = bool(records) and "answers" not in records[0][1]
    out = []
    for index, (number, data) in enumerate(records):
        rec = Record(source, number, data)
        prompt = rec.string("src")
        answers = [rec.string("alt")] if reduced else rec.strings("answers")
        if not answers:
            raise rec.error("answers", "empty list")
        subject = drops.check(rec.string("subject", required=False), prompt)
        rephrase = rec.string("rephrase", required=False)
        locality = ()
        if rec.has("loc"):
            locality = (LocalityPrompt(rec.string("loc"), rec.string("loc_ans", required=False)),)
        meta = {"format": "zsre-mend-reduced" if reduced else "zsre-mend", "answers": answers}
        for key in ("pred", "alt", "cond"):
            if isinstance(data.get(key), str):
                meta[key] = data[key]
        out.append(build_request(
            rec, {"prompt": "src", "target": "alt" if reduced else "answers[0]", "rephrasings": "rephrase"},
            prompt=prompt, target=answers[0], subject=subject,
            rephrasings=(rephrase,) if rephrase else (), locality=locality,
            old_target=None, id=str(index), meta=meta,
        ))
    drops.report()
    return out


def map_knowedit(records: Records, source: str) -> list[EditRequest]:
    """KnowEdit zsRE: target=target_new, old_target=ground_truth[0] when it differs.

    Locality prompts come from every list under ``locality`` (``Relation_Specificity`` in
    zsRE), answered by their first ground truth; ``portability`` goes to ``meta["portability"]``
    as ``[{"kind", "prompt", "answers"}]`` (``knowedit.portability``). KnowEdit's WikiData
    files share this layout.
    """
    return map_each(records, source, _knowedit_request)


def _knowedit_request(rec: Record, index: int, drops: SubjectDrops) -> EditRequest:
    prompt, target, subject = easyedit_core(rec, drops)
    old_target = None
    ground_truth = rec.data.get("ground_truth")
    if ground_truth is not None:
        old = flat_answers(rec, "ground_truth", ground_truth)
        if old and old[0].strip() != target.strip():
            old_target = old[0]
    rephrase = rec.string("rephrase_prompt", required=False)
    meta = {"format": "zsre-knowedit"}
    if ground_truth is not None:
        meta["ground_truth"] = ground_truth
    probes = portability(rec)
    if probes:
        meta["portability"] = probes
    if rec.data.get("cond") is not None:
        meta["cond"] = rec.data["cond"]
    return build_request(
        rec, {"target": "target_new", "old_target": "ground_truth", "rephrasings": "rephrase_prompt"},
        prompt=prompt, target=target, subject=subject,
        rephrasings=(rephrase,) if rephrase else (), locality=tuple(locality(rec)),
        old_target=old_target, id=str(index), meta=meta,
    )
