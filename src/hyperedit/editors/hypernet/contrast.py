"""Contrast rows (our extension): subject-swapped prompts whose outputs an edit must keep.

At the answer site of late layers a prompt's key says mostly which relation is asked, not about
whom (docs/malmen.md, "Where the keys are read"): a shift written for "X's mother tongue is" also
reaches "Y's mother tongue is", CounterFact's neighbourhood prompts. Contrast rows are the keys of
each edit prompt with its subject replaced by the subject of another request of the same edit,
read at the editor's site; the least-squares solve adds them with target 0,
``min_S ||K S - D||^2 + w ||K_c S||^2 + e^lambda ||S||^2``, so a shift must write what differs
between the edited subject and others asked the same question. Partners are the edit's own requests
(and, in a stream with ``contrast_memory``, earlier ones), then a fixed list of generic subjects
(``contrast_subjects``) for an edit too small to have enough of its own: no data beyond what the
user asked to edit and that list. In a data-parallel edit each rank swaps within its own share.
"""
from __future__ import annotations

from typing import Sequence

from ...requests import EditRequest

Swap = tuple[str, str, str]  # (prompt with another subject, the edit's target, that subject)
Asked = tuple[str, str]  # (prompt template with the subject cut out, subject) of an earlier edit


def _template(request: EditRequest) -> str | None:
    if not request.subject:
        return None
    return request.prompt.replace(request.subject, "\0", 1)


def asked(requests: Sequence[EditRequest]) -> list[Asked]:
    """(template, subject) of the requests that have a subject, in order: what ``subject_swaps``
    may draw on in later edits of a stream."""
    return [(t, r.subject) for r in requests if (t := _template(r)) is not None]


def subject_swaps(requests: Sequence[EditRequest], per_request: int, earlier: Sequence[Asked] = (),
                  pool: Sequence[str] = ()) -> list[Swap]:
    """Up to ``per_request`` swaps per request with a subject, deterministic. Partners are the next
    requests of the edit in order (cyclically), then ``earlier`` edits' subjects, most recent first,
    then the generic subjects of ``pool`` in order; a partner's subject must differ, not occur in
    the prompt, and come with another template (a swap equal to another request's prompt would
    fight that edit)."""
    if per_request < 1:
        return []
    mine = [r for r in requests if r.subject]
    pairs = asked(mine)
    n, swaps = len(mine), []
    for i, (request, (template, subject)) in enumerate(zip(mine, pairs)):
        partners = [pairs[(i + step) % n] for step in range(1, n)] + list(reversed(earlier))
        partners += [(None, other) for other in pool]  # generic: template None, never a duplicate
        found, used = 0, set()
        for other_template, other in partners:
            if other_template == template or other == subject or other in request.prompt:
                continue
            if other_template is None and other in used:
                continue
            used.add(other)
            swaps.append((template.replace("\0", other, 1), request.target, other))
            found += 1
            if found == per_request:
                break
    return swaps
