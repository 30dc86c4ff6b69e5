"""CounterFact in its two layouts: EasyEdit (flat fields) and ROME (``requested_rewrite``)."""
from __future__ import annotations

from hyperedit.data._common import Record, Records, SubjectDrops, build_request, easyedit_core, json_type, map_each
from hyperedit.requests import EditRequest, LocalityPrompt


def map_counterfact(records: Records, source: str) -> list[EditRequest]:
    """EasyEdit CounterFact: prompt, target_new, subject, old_target=ground_truth, one
    rephrasing, one locality pair (locality_prompt, locality_ground_truth), id=str(case_id)."""
    return map_each(records, source, _easyedit_request)


def _easyedit_request(rec: Record, index: int, drops: SubjectDrops) -> EditRequest:
    prompt, target, subject = easyedit_core(rec, drops)
    old_target = rec.string("ground_truth", required=False)
    rephrase = rec.string("rephrase_prompt", required=False)
    locality = ()
    if rec.has("locality_prompt"):
        locality = (LocalityPrompt(
            rec.string("locality_prompt"), rec.string("locality_ground_truth", required=False)
        ),)
    return build_request(
        rec,
        {"target": "target_new", "old_target": "ground_truth", "rephrasings": "rephrase_prompt",
         "locality": "locality_prompt"},
        prompt=prompt, target=target, subject=subject,
        rephrasings=(rephrase,) if rephrase else (), locality=locality,
        old_target=old_target, id=rec.ident("case_id", str(index)),
        meta={"format": "counterfact-easyedit"},
    )


def _prompt_list(rec: Record, field: str) -> list[str]:
    """A list of prompts given as strings or as objects with a ``prompt`` field."""
    value = rec.data.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise rec.error(field, "expected a list of prompts")
    prompts = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            item = item.get("prompt")
        prompts.append(rec.string(field, value=item, name=f"{field}[{i}]"))
    return prompts


def _target_str(rec: Record, rewrite: dict, key: str, required: bool) -> str | None:
    name = f"requested_rewrite.{key}"
    value = rewrite.get(key)
    if value is None:
        if required:
            raise rec.error(name, "missing required field")
        return None
    if isinstance(value, dict):
        return rec.string("", value=value.get("str"), name=f"{name}.str")
    return rec.string("", value=value, name=name)


def map_rome(records: Records, source: str) -> list[EditRequest]:
    """ROME CounterFact: prompt = requested_rewrite.prompt with the subject in its ``{}``,
    targets from target_new.str / target_true.str, paraphrase prompts as rephrasings,
    neighborhood prompts as locality (their answer is the true target)."""
    return map_each(records, source, _rome_request)


def _rome_request(rec: Record, index: int, drops: SubjectDrops) -> EditRequest:
    rewrite = rec.data.get("requested_rewrite")
    if rewrite is None:
        raise rec.error("requested_rewrite", "missing required field")
    if not isinstance(rewrite, dict):
        raise rec.error("requested_rewrite", f"expected an object, got {json_type(rewrite)}")
    template = rec.string("", value=rewrite.get("prompt"), name="requested_rewrite.prompt")
    if "{}" not in template:
        raise rec.error("requested_rewrite.prompt", "has no '{}' placeholder for the subject")
    subject = rec.string("", value=rewrite.get("subject"), name="requested_rewrite.subject")
    # str.replace rather than str.format: prompts may contain other braces.
    prompt = template.replace("{}", subject, 1)
    subject = drops.check(subject, prompt)
    target = _target_str(rec, rewrite, "target_new", required=True)
    old_target = _target_str(rec, rewrite, "target_true", required=False)
    neighbours = tuple(LocalityPrompt(p, old_target) for p in _prompt_list(rec, "neighborhood_prompts"))
    meta = {"format": "counterfact-rome"}
    for key in ("relation_id",):
        if rewrite.get(key) is not None:
            meta[key] = rewrite[key]
    for key in ("attribute_prompts", "generation_prompts"):
        if rec.data.get(key) is not None:
            meta[key] = rec.data[key]
    return build_request(
        rec,
        {"prompt": "requested_rewrite.prompt", "target": "requested_rewrite.target_new",
         "old_target": "requested_rewrite.target_true", "subject": "requested_rewrite.subject",
         "rephrasings": "paraphrase_prompts", "locality": "neighborhood_prompts"},
        prompt=prompt, target=target, subject=subject,
        rephrasings=tuple(_prompt_list(rec, "paraphrase_prompts")), locality=neighbours,
        old_target=old_target, id=rec.ident("case_id", str(index)), meta=meta,
    )
