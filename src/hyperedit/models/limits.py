"""The model's context length, and the up-front check that every request fits in it.

A prompt longer than the context would make a model with learned positions fail deep inside a
forward pass, and a rotary-position model crawl through minutes of quadratic attention on text it
was never trained to read. ``check_request_lengths`` refuses such requests before any model work,
naming the record, the field and its length; every editor's ``edit`` and every evaluation and
training entry point calls it.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import InputError
from ..requests import EditRequest

# transformers sets model_max_length to int(1e30) when a tokenizer declares no limit.
_SANE_TOKENIZER_LIMIT = 1_000_000
# Tokens a text can have beyond its UTF-8 byte count: special tokens, SentencePiece's dummy prefix.
_SPECIAL_TOKENS_MARGIN = 8
_CONFIG_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# Locality prompts without a dataset answer are continued greedily by this many tokens (eval.evaluate).
LOCALITY_CONTINUATION_TOKENS = 3


def context_limit(adapter) -> int | None:
    """Longest token sequence the model takes: the config's position limit, else the tokenizer's
    ``model_max_length`` when it is a real number; None when neither says."""
    config = adapter.model.config
    for attr in _CONFIG_LIMITS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    value = getattr(adapter.tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _SANE_TOKENIZER_LIMIT:
        return value
    return None


def _texts(request: EditRequest):
    """(field, prompt, continuation) for every sequence the editors and the metrics feed the model:
    each prompt with the new and the old target, locality prompts with their answer (or, without
    one, with room for the continuation generated in its place)."""
    targets = [(name, t) for name, t in (("target", request.target), ("old_target", request.old_target))
               if t is not None]
    for target_field, target in targets:
        yield "prompt", request.prompt, target, target_field
        for i, text in enumerate(request.rephrasings):
            yield f"rephrasings[{i}]", text, target, target_field
    for i, loc in enumerate(request.locality):
        answers = [(f"locality[{i}].answer", loc.answer), *targets] if loc.answer is not None else [(None, None)]
        for continuation_field, continuation in answers:
            yield f"locality[{i}].prompt", loc.prompt, continuation, continuation_field


def _could_exceed(adapter, prompt: str, continuation: str | None, limit: int) -> bool:
    """Cheap pre-test: byte-level and SentencePiece tokenisers never make more tokens than UTF-8
    bytes (plus a few special tokens); the factor 2 covers Unicode normalisation that expands
    characters. Only texts that fail it are tokenised."""
    size = len(adapter.format_prompt(prompt).encode()) + len((continuation or "").encode()) + 1 + \
        LOCALITY_CONTINUATION_TOKENS
    return 2 * size + _SPECIAL_TOKENS_MARGIN > limit


def _token_length(adapter, prompt: str, continuation: str | None) -> int:
    if continuation is None:  # room for the generated continuation the locality metric reads
        return adapter.token_count(prompt) + LOCALITY_CONTINUATION_TOKENS
    return adapter.token_count(prompt, continuation)


def check_request_lengths(adapter, requests: Sequence[EditRequest]) -> None:
    """Raise ``InputError`` for the first request with a text longer than the model's context.

    The error names the request's source file and record (kept in ``meta`` by the data loaders;
    for requests built in code, the position in ``requests``), the field and the token count.
    """
    limit = context_limit(adapter)
    if limit is None:
        return
    for index, request in enumerate(requests):
        for field, prompt, continuation, continuation_field in _texts(request):
            if not _could_exceed(adapter, prompt, continuation, limit):
                continue
            length = _token_length(adapter, prompt, continuation)
            if length > limit:
                if continuation is not None and adapter.token_count(prompt) < limit:
                    field = continuation_field  # the prompt fits: its continuation is what is too long
                raise InputError(
                    request.meta.get("source", "requests"), request.meta.get("record", index + 1), field,
                    f"{length} tokens, longer than the model's context of {limit} tokens",
                )
