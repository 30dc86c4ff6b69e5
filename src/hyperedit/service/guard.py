"""What every request passes before the app sees it: host, origin, API key, content type, size.

- ``Host`` must name the address the service is bound to (a web page whose DNS name was
  rebound to 127.0.0.1 sends its own name), and a browser's ``Origin``, when sent, must be the
  service itself (another site's page cannot drive it).
- With an API key, every endpoint but the static page needs ``Authorization: Bearer KEY``.
- A POST must be ``application/json``: forms and ``text/plain``, which browsers send cross-site
  without asking, are refused.
- The body is read up to ``max_body_bytes`` before anything parses it.
"""
from __future__ import annotations

import hmac
import json
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}


def allowed_hosts_for(bind_host: str, extra: tuple[str, ...] = ()) -> set[str] | None:
    """Host names a request may carry for a service bound to ``bind_host`` (None: any; a wildcard
    bind cannot know its names unless ``extra`` lists them)."""
    if bind_host in LOOPBACK:
        return LOOPBACK | set(extra)
    if bind_host in WILDCARD:
        return set(extra) or None
    return {bind_host, *extra}


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


class RequestGuard:
    def __init__(self, app, *, api_key: str | None, allowed_hosts: set[str] | None, max_body_bytes: int):
        self.app, self.api_key, self.allowed_hosts, self.max_body_bytes = app, api_key, allowed_hosts, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope["method"], scope["path"], headers)
        if refusal is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            body, refusal = await self._read_body(receive, headers)
            if refusal is None:
                receive = _replay(body, receive)
        if refusal is not None:
            status, message, extra = refusal
            return await _send_error(send, status, message, extra)
        return await self.app(scope, receive, send)

    def _refusal(self, method: str, path: str, headers: dict):
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return 421, f"Host {host!r} is not an address of this service", {}
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, f"requests from the page of {origin!r} are not accepted (cross-origin)", {}
        if self.api_key and not (method == "GET" and path == "/"):
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return 401, "missing or wrong API key: send Authorization: Bearer KEY", {"www-authenticate": "Bearer"}
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return 415, f"send a JSON body with Content-Type: application/json (got {kind or 'none'!r})", {}
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                return 413, f"request body over {self.max_body_bytes} bytes", {}
        return None

    async def _read_body(self, receive, headers):
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, "client disconnected", {})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", (413, f"request body over {self.max_body_bytes} bytes", {})
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A ``receive`` that gives the app the body already read, then the client's later messages
    (a streaming response listens for the disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_error(send, status: int, message: str, extra: dict) -> None:
    kind = {401: "authentication_error", 403: "permission_error"}.get(status, "invalid_request_error")
    payload = json.dumps({"error": {"message": message, "type": kind}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
