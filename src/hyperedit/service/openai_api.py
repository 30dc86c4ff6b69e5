"""OpenAI-compatible endpoints: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Every parameter is either honoured or refused with a 400 that names it; types are strict (no
``"8"`` or ``true`` for a number). Completions continue the raw prompt text (or token ids); chat
goes through the model's chat template. ``temperature`` defaults to 1 as in OpenAI's API (0 is
greedy); ``seed`` makes sampling reproducible; ``logprobs``/``echo`` report the model's
log-probabilities of generated and prompt tokens (what lm-evaluation-harness's
``local-completions`` reads for loglikelihood tasks); ``stream`` sends server-sent events.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from typing import Annotated, Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..errors import HyperEditError
from .decode import Sampling


def valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode (a lone surrogate at character {exc.start})") from None
    return text


Text = Annotated[str, AfterValidator(valid_unicode)]
STRICT = ConfigDict(extra="forbid", strict=True)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class _Common(BaseModel):
    model_config = STRICT
    model: Text | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None
    user: Text | None = None  # an end-user id for the operator's logs; recorded nowhere


class CompletionBody(_Common):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int = 16
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = None


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant"]
    content: Text
    name: Text | None = None


class ChatBody(_Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)


class _StopText:
    """One sequence's text, cut before the first stop string; and how much of it may be streamed."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops, self.text = tokenizer, [s for s in stops if s], ""
        self.sent = 0

    def update(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hits = [text.find(s) for s in self.stops if s in text]
        self.text = text[:min(hits)] if hits else text
        return bool(hits)

    def new_text(self, final: bool) -> str:
        """Text not streamed yet; held back while it could still be the start of a stop string
        or of an unfinished character."""
        end = len(self.text)
        if not final:
            end -= max((len(s) for s in self.stops), default=1) - 1
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
        out = self.text[self.sent:max(end, self.sent)]
        self.sent += len(out)
        return out


def _refuse_unsupported(body: _Common, max_choices: int) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise HyperEditError(f"{name} is not supported by this service (only 0)")
    if body.logit_bias:
        raise HyperEditError("logit_bias is not supported by this service")
    if body.n > max_choices:
        raise HyperEditError(f"n must be between 1 and {max_choices} on this service, got {body.n}")
    if body.stream_options is not None and not body.stream:
        raise HyperEditError("stream_options is only allowed with stream=true")
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > 4:
        raise HyperEditError(f"stop holds {len(stops)} sequences; the limit is 4")


def add_openai_routes(app: FastAPI, engine) -> None:
    tok = engine.serving.tokenizer

    def check_model(name: str | None) -> None:
        if name is not None and name != engine.serving.name:
            raise ModelNotFound(f"model {name!r} is not served here; GET /v1/models lists {engine.serving.name!r}")

    def check_ids(ids: list[int], max_tokens: int, allow_zero: bool) -> None:
        limit = engine.config.max_new_tokens
        if not (0 if allow_zero else 1) <= max_tokens <= limit:
            raise HyperEditError(f"max_tokens must be between {0 if allow_zero else 1} and {limit}, got {max_tokens}"
                                 + (" (0 only with echo)" if not allow_zero and max_tokens == 0 else ""))
        if not ids:
            raise HyperEditError("prompt must not be empty")
        if len(ids) > engine.config.max_prompt_tokens:
            raise HyperEditError(f"prompt has {len(ids)} tokens; this service accepts at most "
                                 f"{engine.config.max_prompt_tokens}")
        if not all(0 <= i < len(tok) for i in ids):
            raise HyperEditError(f"prompt token ids must be between 0 and {len(tok) - 1}")

    def sampling(body: _Common, top: int | None) -> Sampling:
        return Sampling(temperature=body.temperature, top_p=body.top_p, seed=body.seed, n=body.n, top_logprobs=top)

    def run(ids, max_tokens, sampler, stops, want_prompt, emit=None, reservation=None):
        texts = [_StopText(tok, stops) for _ in range(sampler.n)]

        def should_stop(i, seq_ids):
            hit = texts[i].update(seq_ids)
            if emit is not None:
                emit(i, texts[i].new_text(final=False), None)
            return hit

        decoded, active = engine.decode(ids, max_tokens, sampler, should_stop, want_prompt, reservation)
        if emit is not None:
            for i, (t, seq) in enumerate(zip(texts, decoded.sequences)):
                emit(i, t.new_text(final=True), seq.finish_reason)
        return decoded, [t.text for t in texts], active

    def envelope(kind: str) -> dict:
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": engine.serving.name}

    def usage(n_prompt: int, n_completion: int) -> dict:
        return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}

    def stream(work, include_usage: bool) -> StreamingResponse:
        """Run ``work(put)`` in a thread (a slow reader never holds the model) and send what it puts."""
        items: queue.Queue = queue.Queue()

        def target():
            try:
                work(items.put)
            except Exception as exc:  # the status line is sent already; report in the stream
                items.put({"error": {"message": str(exc), "type": "server_error"}})
            finally:
                items.put(None)

        threading.Thread(target=target, name="hyperedit-stream", daemon=True).start()

        def events():
            while (item := items.get()) is not None:
                if "usage" in item and not include_usage:
                    continue
                yield f"data: {json.dumps(item)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": engine.serving.name, "object": "model", "created": 0,
                                            "owned_by": "hyperedit"}]}

    @app.post("/v1/completions")
    def completions(body: CompletionBody):
        check_model(body.model)
        _refuse_unsupported(body, engine.config.max_choices)
        if body.suffix:
            raise HyperEditError("suffix is not supported by this service")
        if body.best_of not in (None, 1):
            raise HyperEditError("best_of is not supported by this service (only 1)")
        if body.stream and (body.logprobs is not None or body.echo):
            raise HyperEditError("logprobs and echo are not supported with stream=true")
        raw = [body.prompt] if isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], int)) \
            else body.prompt
        if not raw:
            raise HyperEditError("prompt must not be empty")
        prompts = [(p, tok(p, add_special_tokens=True)["input_ids"]) if isinstance(p, str)
                   else (tok.decode(p, skip_special_tokens=True), list(p)) for p in raw]
        for _, ids in prompts:  # every prompt checked before any is run
            check_ids(ids, body.max_tokens, allow_zero=body.echo)
        stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
        sampler = sampling(body, body.logprobs)
        want_prompt = body.echo and body.logprobs is not None
        if body.stream:
            head = envelope("text_completion")
            reservation = engine.gate.reserve()

            def work(put):
                n_prompt = n_completion = 0
                for a, (_, ids) in enumerate(prompts):
                    def emit(i, text, finish, a=a):
                        if text or finish:
                            put({**head, "choices": [{"text": text, "index": a * body.n + i, "logprobs": None,
                                                      "finish_reason": finish}]})
                    decoded, _, _ = run(ids, body.max_tokens, sampler, stops, False, emit,
                                        reservation if a == 0 else None)
                    n_prompt += len(ids)
                    n_completion += sum(len(s.ids) for s in decoded.sequences)
                put({**head, "choices": [], "usage": usage(n_prompt, n_completion)})

            return stream(work, bool(body.stream_options and body.stream_options.include_usage))
        choices, n_prompt, n_completion, active = [], 0, 0, ()
        for a, (text, ids) in enumerate(prompts):
            decoded, texts, active = run(ids, body.max_tokens, sampler, stops, want_prompt)
            n_prompt += len(ids)
            for i, (seq, out) in enumerate(zip(decoded.sequences, texts)):
                n_completion += len(seq.ids)
                logprobs = None
                if body.logprobs is not None:
                    logprobs = _completion_logprobs(tok, ids, decoded, seq, body.echo)
                choices.append({"text": (text + out) if body.echo else out, "index": a * body.n + i,
                                "logprobs": logprobs, "finish_reason": seq.finish_reason})
        return {**envelope("text_completion"), "choices": choices, "usage": usage(n_prompt, n_completion),
                "system_fingerprint": "entries-" + "-".join(map(str, active))}

    @app.post("/v1/chat/completions")
    def chat(body: ChatBody):
        check_model(body.model)
        _refuse_unsupported(body, engine.config.max_choices)
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise HyperEditError("send max_tokens or max_completion_tokens, not both")
        if body.top_logprobs is not None and not body.logprobs:
            raise HyperEditError("top_logprobs needs logprobs=true")
        if body.stream and body.logprobs:
            raise HyperEditError("logprobs is not supported with stream=true")
        if not getattr(tok, "chat_template", None):
            raise HyperEditError("this model has no chat template; use /v1/completions")
        max_tokens = body.max_completion_tokens or body.max_tokens or engine.config.max_new_tokens
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        check_ids(ids, max_tokens, allow_zero=False)
        stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
        sampler = sampling(body, (body.top_logprobs or 0) if body.logprobs else None)
        if body.stream:
            head = envelope("chat.completion.chunk")
            reservation = engine.gate.reserve()

            def work(put):
                for i in range(body.n):
                    put({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})

                def emit(i, piece, finish):
                    if piece or finish:
                        put({**head, "choices": [{"index": i, "delta": {"content": piece} if piece else {},
                                                  "finish_reason": finish}]})
                decoded, _, _ = run(ids, max_tokens, sampler, stops, False, emit, reservation)
                put({**head, "choices": [], "usage": usage(len(ids), sum(len(s.ids) for s in decoded.sequences))})

            return stream(work, bool(body.stream_options and body.stream_options.include_usage))
        decoded, texts, active = run(ids, max_tokens, sampler, stops, False)
        choices = [{"index": i, "message": {"role": "assistant", "content": out},
                    "logprobs": _chat_logprobs(tok, seq) if body.logprobs else None,
                    "finish_reason": seq.finish_reason}
                   for i, (seq, out) in enumerate(zip(decoded.sequences, texts))]
        return {**envelope("chat.completion"), "choices": choices,
                "usage": usage(len(ids), sum(len(s.ids) for s in decoded.sequences)),
                "system_fingerprint": "entries-" + "-".join(map(str, active))}


class ModelNotFound(HyperEditError):
    status_code = 404


def model_not_found_response(exc: ModelNotFound) -> JSONResponse:
    return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error", "param": "model",
                                   "code": "model_not_found"}}, status_code=404)


def _completion_logprobs(tok, prompt_ids, decoded, seq, echo: bool) -> dict:
    ids = (prompt_ids if echo else []) + seq.ids
    values = (decoded.prompt_logprobs if echo else []) + seq.logprobs
    tops = (decoded.prompt_top if echo else []) + seq.top
    tokens = [tok.decode([i]) for i in ids]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": values, "text_offset": offsets,
            "top_logprobs": [None if top is None else {tok.decode([i]): lp for i, lp in top} for top in tops]}


def _chat_logprobs(tok, seq) -> dict:
    def item(i, lp):
        text = tok.decode([i])
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8", "replace"))}

    return {"content": [{**item(i, lp), "top_logprobs": [item(j, v) for j, v in top]}
                        for i, lp, top in zip(seq.ids, seq.logprobs, seq.top)], "refusal": None}
