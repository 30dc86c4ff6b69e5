"""The HTTP API (FastAPI; OpenAPI docs at ``/docs``) over an ``Engine``.

Every client mistake is a 4xx whose body is ``{"error": {"message": ..., "type": ...}}`` (the
shape OpenAI clients read), and the service keeps serving.
"""
from __future__ import annotations

import time
import uuid
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.user_jsonl import requests_from_records
from ..errors import HyperEditError
from .engine import Engine


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    max_tokens: int = 16


class EditBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[Any] = Field(description="edits in the user format of docs/data.md")
    editor: str | None = Field(None, description="editing method (default: the service's)")
    options: dict | None = Field(None, description="editor options (default: the service's for its editor)")
    wait: bool = Field(False, description="answer only once the edit is applied (or failed)")


class RevertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recompute: bool = False


class CompletionBody(BaseModel):
    """OpenAI ``/v1/completions`` request; decoding is greedy (sampling options are accepted and ignored)."""
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = 16
    stop: str | list[str] | None = None
    n: int = 1


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            return f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        if where == "body":
            return f"request body: {err.get('msg')} (send a JSON object with Content-Type: application/json)"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="hyperedit", version="1",
                  description="A language model whose facts can be edited, with a revertible ledger of edits.")
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        engine.stats.count("client_errors")
        return _error(422, _validation_message(exc))

    @app.exception_handler(HyperEditError)
    async def _user_error(request: Request, exc: HyperEditError):
        engine.stats.count("client_errors")
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        engine.stats.count("client_errors")
        return _error(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "invalid_request_error")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return resources.files(__package__).joinpath("static/index.html").read_text()

    @app.get("/health")
    def health():
        return {"status": "ok", "model": engine.serving.name, "active_entries": list(engine.active)}

    @app.post("/generate")
    def generate(body: GenerateBody):
        c = engine.complete(body.prompt, body.max_tokens)
        return {"text": c.text, "finish_reason": c.finish_reason, "active_entries": list(c.active_entries)}

    @app.post("/edits", status_code=202)
    def submit(body: EditBody):
        requests = requests_from_records(body.requests, "request body, field 'requests'")
        job = engine.submit(requests, body.editor, body.options)
        if body.wait:
            job.done.wait()
            if job.status == "failed":
                return _error(422, f"edit failed: {job.error}", "edit_failed")
            return JSONResponse(job.public(), status_code=200)
        return job.public()

    @app.get("/edits/{job_id}")
    def job_status(job_id: int):
        try:
            return engine.job(job_id).public()
        except KeyError:
            return _error(404, f"no edit job {job_id}", "not_found")

    @app.get("/ledger")
    def ledger(status: str | None = None):
        return [e.summary() for e in engine.ledger.entries(status)]

    @app.get("/ledger/{entry_id}")
    def entry(entry_id: int):
        try:
            found = engine.ledger.get(entry_id)
        except HyperEditError as exc:
            return _error(404, str(exc), "not_found")
        return {**found.to_dict(), "events": engine.ledger.events(entry_id)}

    @app.post("/ledger/{entry_id}/revert")
    def revert(entry_id: int, body: RevertBody | None = None):
        try:
            engine.ledger.get(entry_id)
        except HyperEditError as exc:
            return _error(404, str(exc), "not_found")
        return engine.revert(entry_id, recompute=bool(body and body.recompute))

    @app.get("/metrics")
    def metrics():
        return {**engine.stats.snapshot(), "queue_length": engine.queue_length(),
                "active_entries": len(engine.active), "model": engine.serving.name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": engine.serving.name, "object": "model", "owned_by": "hyperedit"}]}

    @app.post("/v1/completions")
    def completions(body: CompletionBody):
        if body.n != 1:
            raise HyperEditError("only n=1 is supported")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise HyperEditError("prompt must not be empty")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        for p in prompts:
            engine.check_prompt(p, body.max_tokens)  # every prompt checked before any is run
        results = [engine.complete(p, body.max_tokens, stop) for p in prompts]
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": engine.serving.name,
            "choices": [{"text": c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                        for i, c in enumerate(results)],
            "usage": {"prompt_tokens": sum(c.prompt_tokens for c in results),
                      "completion_tokens": sum(c.completion_tokens for c in results),
                      "total_tokens": sum(c.prompt_tokens + c.completion_tokens for c in results)},
            "system_fingerprint": "entries-" + "-".join(map(str, results[-1].active_entries)),
        }

    return app
