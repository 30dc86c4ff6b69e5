"""The HTTP API (FastAPI; OpenAPI docs at ``/docs``) over an ``Engine``.

Every client mistake is a 4xx whose body is ``{"error": {"message": ..., "type": ...}}`` (the
shape OpenAI clients read), and the service keeps serving.
"""
from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.user_jsonl import requests_from_records
from ..errors import HyperEditError
from .engine import Engine
from .gate import ServiceBusy
from .guard import RequestGuard, allowed_hosts_for
from .openai_api import ModelNotFound, Text, add_openai_routes, model_not_found_response, valid_unicode

MAX_BODY_BYTES = 1_000_000


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: Text
    max_tokens: int = 16


class EditBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    requests: list[Any] = Field(description="edits in the user format of docs/data.md")
    editor: str | None = Field(None, description="editing method (default: the service's)")
    options: dict | None = Field(None, description="editor options (default: the service's for its editor)")
    wait: bool = Field(False, description="answer only once the edit is applied (or failed)")


class RevertBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    recompute: bool = False


def _check_unicode(value, where: str) -> None:
    """Raise HyperEditError for a string anywhere in ``value`` that is not valid Unicode."""
    if isinstance(value, str):
        try:
            valid_unicode(value)
        except ValueError as exc:
            raise HyperEditError(f"{where}: {exc}") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_unicode(k, where)
            _check_unicode(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value, 1):
            _check_unicode(v, f"{where}[{i}]")


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
        supported = err.get("type") != "extra_forbidden"
        parts.append(f"{where}: {err.get('msg') if supported else 'parameter not supported by this service'}")
    return "; ".join(dict.fromkeys(parts))


def create_app(engine: Engine, *, host: str = "127.0.0.1", api_key: str | None = None,
               allowed_hosts: tuple[str, ...] = (), max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The app for a service bound to ``host``: requests must name that host; with ``api_key``
    every endpoint but the page needs it as a Bearer token."""
    app = FastAPI(title="hyperedit", version="1",
                  description="A language model whose facts can be edited, with a revertible ledger of edits.")
    app.state.engine = engine
    app.add_middleware(RequestGuard, api_key=api_key, allowed_hosts=allowed_hosts_for(host, allowed_hosts),
                       max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        engine.stats.count("client_errors")
        # OpenAI clients expect 400 for a bad parameter; the service's own API keeps 422
        message = _validation_message(exc)
        bad_text = "not valid Unicode" in message  # a value no field type could hold: 400 everywhere
        return _error(400 if bad_text or request.url.path.startswith("/v1/") else 422, message)

    @app.exception_handler(ModelNotFound)
    async def _no_model(request: Request, exc: ModelNotFound):
        engine.stats.count("client_errors")
        return model_not_found_response(exc)

    @app.exception_handler(ServiceBusy)
    async def _busy(request: Request, exc: ServiceBusy):
        engine.stats.count("busy_refusals")
        response = _error(503, str(exc), "server_busy")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

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
    async def health():  # on the event loop: answers while every worker thread is busy
        return {"status": "ok", "model": engine.serving.name, "active_entries": list(engine.active)}

    @app.post("/generate")
    def generate(body: GenerateBody):
        c = engine.complete(body.prompt, body.max_tokens)
        return {"text": c.text, "finish_reason": c.finish_reason, "active_entries": list(c.active_entries)}

    @app.post("/edits", status_code=202)
    async def submit(body: EditBody):
        _check_unicode(body.requests, "request body, field 'requests'")
        _check_unicode(body.options, "request body, field 'options'")
        requests = requests_from_records(body.requests, "request body, field 'requests'")
        job = await run_in_threadpool(engine.submit, requests, body.editor, body.options)
        if body.wait:
            while not job.done.is_set():  # waits on the event loop, not in a worker thread
                await asyncio.sleep(0.05)
            if job.status in ("failed", "cancelled"):
                return _error(422, f"edit {job.status}: {job.error}", "edit_failed")
            return JSONResponse(job.public(), status_code=200)
        return job.public()

    @app.post("/edits/{job_id}/cancel")
    def cancel(job_id: int):
        try:
            return engine.cancel(job_id).public()
        except KeyError:
            return _error(404, f"no edit job {job_id}", "not_found")

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
    async def metrics():
        return {**engine.stats.snapshot(), "queue_length": engine.queue_length(),
                "generations_waiting": engine.gate.waiting,
                "active_entries": len(engine.active), "model": engine.serving.name}

    add_openai_routes(app, engine)
    return app
