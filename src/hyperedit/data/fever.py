"""FEVER claims turned into edits by flipping their label (the MEND/MALMEN construction)."""
from __future__ import annotations

import logging

from hyperedit.data._common import Record, Records, build_request
from hyperedit.requests import EditRequest, LocalityPrompt

logger = logging.getLogger(__name__)

QUESTION = "Is this claim true or false? Answer:"
_FLIP = {"SUPPORTS": ("false", "true"), "REFUTES": ("true", "false")}  # label -> (target, old_target)
_UNFLIPPABLE = {"NOT ENOUGH INFO", "NOT_ENOUGH_INFO", "NEI"}


def claim_prompt(claim: str) -> str:
    """The question asked about a claim: ``"<claim> Is this claim true or false? Answer:"``."""
    return f"{claim} {QUESTION}"


def map_fever(records: Records, source: str) -> list[EditRequest]:
    """One edit per SUPPORTS/REFUTES claim: the target is the opposite of the label.

    A SUPPORTS claim gets target "false" (old_target "true"), a REFUTES claim target "true".
    The locality prompt of a claim is the next kept claim's prompt (cyclically) with no
    answer. NOT ENOUGH INFO claims cannot be flipped: they are left out and counted in one
    warning. Any other label is an error.
    """
    kept: list[tuple[Record, int, str, str, str | None]] = []
    skipped = 0
    for index, (number, data) in enumerate(records):
        rec = Record(source, number, data)
        claim = rec.string("claim")
        label = rec.string("label").strip().upper()
        if label in _UNFLIPPABLE:
            skipped += 1
            continue
        if label not in _FLIP:
            raise rec.error("label", f"expected SUPPORTS or REFUTES, got {data['label']!r}")
        evidence = data.get("evidence_sentence", data.get("evidence"))
        kept.append((rec, index, claim, label, evidence if isinstance(evidence, str) else None))
    if skipped:
        logger.warning("%s: %d NOT ENOUGH INFO claims left out (no label to flip)", source, skipped)
    out = []
    for i, (rec, index, claim, label, evidence) in enumerate(kept):
        target, old_target = _FLIP[label]
        locality = ()
        if len(kept) > 1:
            locality = (LocalityPrompt(claim_prompt(kept[(i + 1) % len(kept)][2])),)
        meta = {"format": "fever", "claim": claim, "label": label}
        if evidence:
            meta["evidence"] = evidence
        out.append(build_request(
            rec, {"prompt": "claim", "target": "label", "old_target": "label"},
            prompt=claim_prompt(claim), target=target, old_target=old_target,
            locality=locality, id=rec.ident("id", str(index)), meta=meta,
        ))
    return out
