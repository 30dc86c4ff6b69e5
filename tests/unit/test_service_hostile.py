"""Hostile requests against the service (tiny model): cross-site and rebinding requests, huge and
ill-typed bodies, file-naming and unbounded options, long edits, a bad job in a batch, a full queue,
binding beyond loopback without a key."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install hyperedit)")
from fastapi.testclient import TestClient  # noqa: E402

from hyperedit.ledger import Ledger  # noqa: E402
from hyperedit.models import load_model  # noqa: E402
from hyperedit.service import Engine, ServiceConfig, create_app  # noqa: E402

FT = {"layers": [2, 3], "steps": 6, "lr": 5e-2, "max_rel_norm": 5.0}
EDIT = {"prompt": "the eiffel tower is located in the city of", "target": "rome"}
SRC = Path(__file__).resolve().parents[2] / "src"


def _engine(tiny_dirs, tmp_path, **config):
    lm = load_model(str(tiny_dirs["llama"]))
    return Engine(lm, Ledger(tmp_path / "ws"), ServiceConfig(editor_options=FT, max_prompt_tokens=40,
                                                              max_new_tokens=16, **{"batch_window_s": 0.0, **config}))


@pytest.fixture
def engine(tiny_dirs, tmp_path):
    eng = _engine(tiny_dirs, tmp_path)
    yield eng
    eng.close()


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine, max_body_bytes=10_000), base_url="http://127.0.0.1:8000")


def test_form_encoded_and_cross_origin_reverts_are_refused(client, engine):
    assert client.post("/edits", json={"requests": [EDIT], "wait": True}).status_code == 200
    form = client.post("/ledger/1/revert", content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and "application/json" in form.json()["error"]["message"]
    bare = client.post("/ledger/1/revert")
    assert bare.status_code == 415
    other = client.post("/ledger/1/revert", json={}, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403
    rebound = client.get("/ledger", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 421 and "evil.example" in rebound.json()["error"]["message"]
    assert engine.active == (1,)  # none of them reverted anything
    same = client.post("/ledger/1/revert", json={}, headers={"Origin": "http://127.0.0.1:8000"})
    assert same.status_code == 200 and engine.active == ()


@pytest.mark.parametrize("path, body, status, message", [
    ("/generate", {"prompt": "the city", "max_tokens": True}, 422, "max_tokens"),
    ("/generate", {"prompt": "the city", "max_tokens": "8"}, 422, "max_tokens"),
    ("/generate", b'{"prompt": "the city \\ud800 of"}', 400, "not valid Unicode"),
    ("/v1/completions", b'{"prompt": "the city \\udc00"}', 400, "not valid Unicode"),
    ("/edits", b'{"requests": [{"prompt": "the \\ud800 city", "target": "rome"}]}', 400, "not valid Unicode"),
    ("/edits", {"requests": [EDIT], "editor": "memit", "options": {"stats_corpus": "/etc/passwd"}}, 400,
     "'stats_corpus' names a file"),
    ("/edits", {"requests": [EDIT], "options": {"steps": 100_000_000}}, 400, "'steps' must be between 0 and 200"),
    ("/edits", {"requests": [EDIT], "options": {"batch_size": 10**9}}, 400, "'batch_size' must be between"),
    ("/edits", b'{"requests": [{"prompt": "the city of", "target": "rome"}], "options": {"lr": 1e999}}', 400,
     "'lr' must be a finite number"),
    ("/generate", {"prompt": "the " * 5000}, 413, "over 10000 bytes"),
])
def test_hostile_bodies_get_a_clear_4xx(client, path, body, status, message):
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    res = client.post(path, **kwargs)
    assert res.status_code == status, res.text
    assert message in res.json()["error"]["message"]
    assert client.post("/generate", json={"prompt": "the city", "max_tokens": 2}).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_before_parsing(client):
    def chunks():
        for _ in range(50):
            yield b"x" * 1000
    res = client.post("/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert res.status_code == 413


def test_an_edit_past_its_time_limit_fails_and_a_cancelled_one_records_nothing(tiny_dirs, tmp_path):
    engine = _engine(tiny_dirs, tmp_path, edit_timeout_s=0.001)
    try:
        client = TestClient(create_app(engine), base_url="http://127.0.0.1")
        slow = {"steps": 200, "lr": 1e-6, "stop_loss": 0.0, "layers": [2, 3]}
        res = client.post("/edits", json={"requests": [EDIT], "options": slow, "wait": True})
        assert res.status_code == 422 and "time limit of 0.001 s" in res.json()["error"]["message"]
        engine.config.edit_timeout_s = 600
        job = client.post("/edits", json={"requests": [EDIT], "options": slow}).json()["job"]
        deadline = time.time() + 30
        while engine.job(job).status == "queued" and time.time() < deadline:
            time.sleep(0.01)
        assert client.get("/health").status_code == 200
        assert client.post(f"/edits/{job}/cancel", json={}).status_code == 200
        assert engine.job(job).done.wait(30) and engine.job(job).status in ("cancelled", "applied")
        if engine.job(job).status == "cancelled":
            assert engine.ledger.entries() == []
        assert client.post("/generate", json={"prompt": "the city", "max_tokens": 2}).status_code == 200
    finally:
        engine.close()


def test_one_bad_job_in_a_batch_does_not_fail_the_others(tiny_dirs, tmp_path):
    engine = _engine(tiny_dirs, tmp_path, batch_window_s=0.5)
    try:
        client = TestClient(create_app(engine), base_url="http://127.0.0.1")
        too_long = {"prompt": "mary plays the sport of", "target": " ".join(["golf"] * 140)}  # past the context
        jobs = [client.post("/edits", json={"requests": [r]}).json()["job"] for r in (EDIT, too_long)]
        for j in jobs:
            assert engine.job(j).done.wait(60)
        good, bad = (engine.job(j) for j in jobs)
        assert good.status == "applied" and bad.status == "failed", (good.error, bad.error)
        assert [e.requests for e in engine.ledger.entries()] == [[EDIT]]
    finally:
        engine.close()


def test_beyond_the_waiting_bound_generation_is_a_503_with_retry_after(tiny_dirs, tmp_path):
    engine = _engine(tiny_dirs, tmp_path, generation_slots=1, max_waiting=0)
    try:
        client = TestClient(create_app(engine), base_url="http://127.0.0.1")
        held = engine.gate.reserve()
        with held:  # the one slot is taken
            res = client.post("/generate", json={"prompt": "the city", "max_tokens": 2})
            assert res.status_code == 503 and int(res.headers["Retry-After"]) >= 1
            assert client.get("/health").status_code == 200
        assert client.post("/generate", json={"prompt": "the city", "max_tokens": 2}).status_code == 200
    finally:
        engine.close()


def test_serving_beyond_loopback_without_a_key_is_refused_with_one_line(tmp_path):
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "hyperedit", "serve", "-w", str(tmp_path / "ws"),
                           "--host", "0.0.0.0"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--api-key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "ws").exists()
