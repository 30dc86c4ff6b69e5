"""Generated-answer metrics: what the model says, not what teacher forcing credits it with.

Teacher-forced accuracy feeds the target's own tokens back to the model and counts per-token
argmax hits, so a model that would never say the target still earns partial credit (and a full
point when each next token is right given the earlier *correct* ones). Here each prompt is
continued greedily (no sampling; the chat template is whatever the adapter was loaded with, off
by default) for the answer's token length plus ``GENERATION_MARGIN`` tokens, and the text is
scored against the answer after ``normalise``:

- exact match (``*_gen_em``): the first answer-length tokens, decoded, equal the answer;
- prefix match (``*_gen``): the continuation starts with the answer at a word boundary (the margin
  lets a different tokenisation of the same words count).

Several acceptable answers (aliases) count when any of them matches. Locality (``LS_gen``) is the
generation unchanged, token for token, from the unedited model's on the same prompt.

Prompts are grouped by generation length and prompt length so batches carry little padding and
the same prompt list is always cut into the same batches (edited and unedited generations are
then computed under identical padding).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import torch

from ..lm import iter_chunks
from ..models.adapters import ModelAdapter
from ..models.limits import context_limit
from .metrics import mean, per_request_means

GENERATION_MARGIN = 2  # tokens generated beyond the answer's own length

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, punctuation removed (Unicode category P), whitespace collapsed."""
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text.lower())
    return _SPACES.sub(" ", kept).strip()


@dataclass(frozen=True)
class Probe:
    """One prompt to continue and the answers that count (empty: compared with a reference only)."""

    prompt: str
    answers: tuple[str, ...] = ()


def answer_tokens(adapter: ModelAdapter, prompt: str, answer: str) -> int:
    """Tokens the answer takes after the prompt (as teacher forcing encodes it)."""
    return len(adapter._prompt_target_ids(prompt, answer)[1])


def generation_lengths(adapter: ModelAdapter, probes: list[Probe], default: int) -> list[int]:
    """Tokens to generate per probe: its longest answer plus the margin (``default`` when none)."""
    return [max(answer_tokens(adapter, p.prompt, a) for a in p.answers) + GENERATION_MARGIN if p.answers
            else default for p in probes]


@torch.no_grad()
def greedy_tokens(adapter: ModelAdapter, prompts: list[str], lengths: list[int], batch_size: int = 32) -> list[list[int]]:
    """Greedy continuation token ids of each prompt, ``lengths[i]`` tokens at most (fewer when EOS,
    kept as the last token, comes first, or at the context limit)."""
    model, tok = adapter.model, adapter.tokenizer
    device = next(model.parameters()).device
    limit = context_limit(adapter)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    eos = tok.eos_token_id
    prompt_lengths = [adapter.token_count(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], prompt_lengths[i], prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for chunk in iter_chunks(order, batch_size):
        batch = adapter.encode_prompts([prompts[i] for i in chunk], device=device)
        wanted = max(lengths[i] for i in chunk)
        room = wanted if limit is None or adapter.is_seq2seq else min(wanted, limit - batch["input_ids"].shape[1])
        if room < 1:
            continue
        generated = model.generate(**batch, max_new_tokens=room, do_sample=False, num_beams=1,
                                   pad_token_id=pad, top_p=None, top_k=None, temperature=None)
        new = generated[:, 1:] if adapter.is_seq2seq else generated[:, batch["input_ids"].shape[1]:]
        for row, i in zip(new.tolist(), chunk):
            row = row[:lengths[i]]
            if eos is not None and eos in row:
                row = row[:row.index(eos) + 1]  # the stop is part of what was generated
            out[i] = row
    return out


def match_scores(adapter: ModelAdapter, probe: Probe, tokens: list[int] | None) -> tuple[float, float]:
    """(exact match, prefix match) of a generation against the probe's answers, best over answers
    (None: a generation ``generate_for`` ruled out from its first token)."""
    if tokens is None:
        return 0.0, 0.0
    tok = adapter.tokenizer
    whole = normalise(tok.decode(tokens, skip_special_tokens=True))
    exact = prefix = 0.0
    for answer in probe.answers:
        target = normalise(answer)
        if not target:
            continue
        head = normalise(tok.decode(tokens[:answer_tokens(adapter, probe.prompt, answer)], skip_special_tokens=True))
        exact = max(exact, float(head == target))
        prefix = max(prefix, float(whole == target or whole.startswith(target + " ")))
    return exact, prefix


def generate_for(adapter: ModelAdapter, probes: list[Probe], batch_size: int = 32,
                 default_length: int = 3, first_tokens: dict | None = None) -> list[list[int] | None]:
    """Greedy tokens for every probe, each distinct (prompt, length) generated once.

    ``first_tokens``: ``{(prompt, first answer): greedy first token}`` from a teacher-forced pass
    (its argmax at the prompt's last position is greedy decoding's first token); a probe whose
    first token already rules every answer out is not generated (None)."""
    lengths = generation_lengths(adapter, probes, default_length)
    needed = [not ruled_out(adapter, p, _listed(first_tokens.get((p.prompt, p.answers[0]))))
              if first_tokens and p.answers else True for p in probes]
    keys = list(dict.fromkeys(k for k, need in zip(zip((p.prompt for p in probes), lengths), needed) if need))
    tokens = greedy_tokens(adapter, [k[0] for k in keys], [k[1] for k in keys], batch_size)
    found = dict(zip(keys, tokens))
    return [found[(p.prompt, n)] if need else None for p, n, need in zip(probes, lengths, needed)]


def _listed(token: int | None) -> list[int]:
    return [] if token is None else [token]


def ruled_out(adapter: ModelAdapter, probe: Probe, tokens: list[int]) -> bool:
    """Whether a continuation starting with ``tokens`` scores 0 (exact and prefix match) against every
    answer of ``probe`` whatever follows. Decided only when the tokens' text ends in a letter or
    digit (then the normalised continuation starts with their normalised text) and decodes cleanly;
    else False (generate on)."""
    if not tokens:
        return False
    text = adapter.tokenizer.decode(tokens, skip_special_tokens=True)
    head = normalise(text)
    if not head or "\ufffd" in text or not text[-1].isalnum() or normalise(text[-1]) != text[-1].lower():
        return False
    for answer in probe.answers:
        target = normalise(answer)
        if not target:
            continue
        if target.startswith(head) or head.startswith(target + " "):
            return False
        n = answer_tokens(adapter, probe.prompt, answer)
        if len(tokens) >= n and normalise(adapter.tokenizer.decode(tokens[:n], skip_special_tokens=True)) == target:
            return False  # the exact match is already decided, and it holds
    return True


@torch.no_grad()
def follows(adapter: ModelAdapter, prompts: list[str], continuations: list[list[int]], batch_size: int = 32) -> list[bool]:
    """Whether greedy decoding from each prompt would produce exactly these tokens: a teacher-forced
    pass whose argmax equals the next token at every position (what ``LS_gen`` asks, at the cost of
    one forward instead of a generation)."""
    from ..lm import target_logits

    device = next(adapter.model.parameters()).device
    tok = adapter.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out = [True] * len(prompts)  # nothing generated: nothing that could change
    todo = sorted((i for i, c in enumerate(continuations) if c), key=lambda i: (len(prompts[i]), i))
    for chunk in iter_chunks(todo, batch_size):
        ids = [tok(adapter.format_prompt(prompts[i]), add_special_tokens=True)["input_ids"] for i in chunk]
        conts = [continuations[i] for i in chunk]
        if adapter.is_seq2seq:
            batch = {**_right_pad(ids, pad, "input_ids"), "labels": _right_pad(conts, -100, "labels")["labels"]}
        else:
            batch = _right_pad([p + c for p, c in zip(ids, conts)], pad, "input_ids")
            batch["labels"] = _right_pad([[-100] * len(p) + c for p, c in zip(ids, conts)], -100, "labels")["labels"]
        result = target_logits(adapter, {k: v.to(device) for k, v in batch.items()})
        hits = result.logits.argmax(-1) == result.targets
        for n, i in enumerate(chunk):
            out[i] = bool(hits[result.example == n].all())
    return out


def _right_pad(seqs: list[list[int]], value: int, key: str) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    tensor = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        tensor[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return {key: tensor, "attention_mask": mask} if key == "input_ids" else {key: tensor}


def portability_probes(request) -> list[tuple[str, Probe]]:
    """(kind, probe) of each portability prompt a loader put in ``request.meta["portability"]``
    (a list of ``{"kind", "prompt", "answers"}``; see ``hyperedit.data.knowedit``)."""
    return [(p["kind"], Probe(p["prompt"], tuple(p["answers"]))) for p in request.meta.get("portability", ())]


def locality_probes(pairs) -> list[Probe]:
    """The probes of a locality reference's pairs: each continued for its answer's (or the unedited
    continuation's) length plus the margin."""
    return [Probe(prompt, (text,)) for _, prompt, text, _ in pairs]


def generation_probes(requests) -> tuple[list[Probe], list[int], list[tuple[str, ...]]]:
    """The probes of the generated metrics: per request its edit prompt, rephrasings and portability
    prompts; with each probe's request index and the metric names it counts for."""
    probes, owner, names = [], [], []
    for i, r in enumerate(requests):
        probes.append(Probe(r.prompt, (r.target,)))
        owner.append(i), names.append(("ES",))
        for text in r.rephrasings:
            probes.append(Probe(text, (r.target,)))
            owner.append(i), names.append(("GS",))
        for kind, probe in portability_probes(r):
            probes.append(probe)
            owner.append(i), names.append(("PS", f"PS_{kind}"))
    return probes, owner, names


def generated_metrics(adapter: ModelAdapter, requests, reference, batch_size: int = 32,
                      first_tokens: dict | None = None, generations: list | None = None,
                      kept: list[bool] | None = None) -> tuple[dict, list[dict]]:
    """``ES_gen``/``GS_gen``/``PS_gen`` (prefix match) with their ``_em`` (exact match) twins, ``PS_gen``
    per portability kind, and ``LS_gen`` when ``reference`` holds the unedited generations; metrics
    are means over requests of each request's mean, and one row of them per request.
    ``first_tokens``: see ``generate_for``. ``generations`` (per probe of ``generation_probes``) and
    ``kept`` (per reference pair: its generation unchanged), when the caller has them already
    (``eval.continuation``), replace the passes here."""
    n = len(requests)
    probes, owner, names = generation_probes(requests)
    values: dict[str, list[tuple[int, float]]] = {}
    if generations is None:
        generations = generate_for(adapter, probes, batch_size, first_tokens=first_tokens)
    for i, probe, tokens, keys in zip(owner, probes, generations, names):
        exact, prefix = match_scores(adapter, probe, tokens)
        for key in keys:
            values.setdefault(f"{key}_gen", []).append((i, prefix))
            values.setdefault(f"{key}_gen_em", []).append((i, exact))
    if reference is not None and getattr(reference, "generated", None) is not None:
        if kept is None:
            kept = follows(adapter, [p for _, p, _, _ in reference.pairs], reference.generated, batch_size)
        values["LS_gen"] = [(i, float(same)) for (i, *_), same in zip(reference.pairs, kept)]
    rows: list[dict] = [{} for _ in range(n)]
    metrics = {}
    for key, found in values.items():
        per_request = per_request_means(found, n)
        metrics[key] = mean(per_request)
        for row, value in zip(rows, per_request):
            row[key] = value
    return metrics, rows
