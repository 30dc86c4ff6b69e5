"""The HTTP service on a tiny model: generation, queued edits, ledger, errors, OpenAI client."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install hyperedit)")
from fastapi.testclient import TestClient  # noqa: E402

from hyperedit.ledger import Ledger  # noqa: E402
from hyperedit.models import load_model  # noqa: E402
from hyperedit.service import Engine, ServiceConfig, create_app  # noqa: E402
from hyperedit.requests import EditRequest  # noqa: E402
from hyperedit.service.rwlock import ReadWriteLock  # noqa: E402

FT = {"layers": [2, 3], "steps": 6, "lr": 5e-2, "max_rel_norm": 5.0}
EDIT = {"prompt": "the eiffel tower is located in the city of", "target": "rome"}


@pytest.fixture
def engine(tiny_dirs, tmp_path):
    lm = load_model(str(tiny_dirs["llama"]))
    config = ServiceConfig(editor="ft", editor_options=FT, max_prompt_tokens=40, max_new_tokens=16,
                           batch_window_s=0.0)
    eng = Engine(lm, Ledger(tmp_path / "ws"), config)
    yield eng
    eng.close()


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine), base_url="http://127.0.0.1")


def _generate(client, prompt=EDIT["prompt"]):
    res = client.post("/generate", json={"prompt": prompt, "max_tokens": 3})
    assert res.status_code == 200, res.text
    return res.json()


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_edit_changes_answers_and_revert_restores_them_exactly(client, engine):
    base = _weights(engine.serving.model)
    before = _generate(client)
    assert before["active_entries"] == []
    res = client.post("/edits", json={"requests": [EDIT], "wait": True})
    assert res.status_code == 200 and res.json()["status"] == "applied" and res.json()["entry"] == 1
    after = _generate(client)
    assert after["active_entries"] == [1]
    assert after["text"].split()[0] == "rome" != before["text"].split()[0]
    # the serving copy holds exactly the ledger's weights (those of the worker copy)
    edited = _weights(engine.serving.model)
    assert all(torch.equal(edited[k], v) for k, v in _weights(engine.worker.model).items())
    listed = client.get("/ledger").json()
    assert [e["id"] for e in listed] == [1] and listed[0]["metrics"]["ES"] == 1.0
    assert client.get("/ledger/1").json()["requests"] == [EDIT]
    assert client.post("/ledger/1/revert", json={}).json() == {"reverted": 1, "recomputed": [], "kept": [],
                                                                "computed_on_it": []}
    assert _generate(client) == before
    assert all(torch.equal(base[k], v) for k, v in _weights(engine.serving.model).items())
    metrics = client.get("/metrics").json()
    assert metrics["counts"]["generations"] == 3 and metrics["counts"]["edit_jobs_applied"] == 1
    assert metrics["generation_latency_s"]["p50"] > 0


def test_queued_edits_are_applied_together_in_one_entry(tiny_dirs, tmp_path):
    lm = load_model(str(tiny_dirs["llama"]))
    engine = Engine(lm, Ledger(tmp_path / "ws"), ServiceConfig(editor_options=FT, batch_window_s=0.5))
    try:
        client = TestClient(create_app(engine), base_url="http://127.0.0.1")
        edits = [EDIT, {"prompt": "john plays the sport of", "target": "tennis"},
                 {"prompt": "mary plays the sport of", "target": "golf"}]
        jobs = [client.post("/edits", json={"requests": [e]}) for e in edits]
        assert all(j.status_code == 202 and j.json()["status"] == "queued" for j in jobs)
        for j in jobs:
            engine.job(j.json()["job"]).done.wait(60)
        states = [client.get(f"/edits/{j.json()['job']}").json() for j in jobs]
        assert [s["status"] for s in states] == ["applied"] * 3
        assert {s["entry"] for s in states} == {1}
        assert len(client.get("/ledger/1").json()["requests"]) == 3
    finally:
        engine.close()


@pytest.mark.parametrize("path, body, status, message", [
    ("/generate", b'{"prompt": "the city of", ', 422, "not valid JSON"),
    ("/generate", {"prompt": ""}, 400, "non-empty"),
    ("/generate", {"prompt": "the " * 100}, 400, "accepts at most 40"),
    ("/generate", {"prompt": "the city", "max_tokens": 1000}, 400, "max_tokens must be between 1 and 16"),
    ("/generate", {"text": "the city"}, 422, "prompt: Field required"),
    ("/generate", ["the city"], 422, "send a JSON object"),
    ("/edits", {"requests": [EDIT], "editor": "nonesuch"}, 400, "unknown editor 'nonesuch'"),
    ("/edits", {"requests": [EDIT], "options": {"stepz": 3}}, 400, "unknown option(s) stepz"),
    ("/edits", {"requests": [{"prompt": "the city of", "target": ""}]}, 400, "record 1, field 'target'"),
    ("/edits", {"requests": []}, 400, "at least one edit"),
    ("/edits", {"requests": [{"prompt": "the " * 100, "target": "rome"}]}, 400, "the limit is 40"),
    ("/edits", {"requests": [EDIT], "editor": "malmen"}, 400, "needs a trained checkpoint"),
    ("/ledger/5/revert", {}, 404, "no ledger entry 5"),
    ("/v1/completions", {"prompt": "the " * 100}, 400, "accepts at most 40"),
    ("/v1/completions", {"prompt": "the city", "n": 9}, 400, "n must be between 1 and 8"),
])
def test_bad_requests_get_a_4xx_with_a_clear_message(client, path, body, status, message):
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    res = client.post(path, **kwargs)
    assert res.status_code == status, res.text
    assert message in res.json()["error"]["message"]
    assert _generate(client)["text"]  # and the service keeps serving


def test_reverting_twice_and_unknown_jobs(client):
    client.post("/edits", json={"requests": [EDIT], "wait": True})
    assert client.post("/ledger/1/revert", json={}).status_code == 200
    res = client.post("/ledger/1/revert", json={})
    assert res.status_code == 400 and "already reverted" in res.json()["error"]["message"]
    assert client.get("/edits/99").status_code == 404
    assert client.get("/nowhere").status_code == 404


def test_page_is_served(client):
    res = client.get("/")
    assert res.status_code == 200 and "<h1>hyperedit</h1>" in res.text and "/ledger" in res.text
    assert "/v1/completions" in client.get("/openapi.json").json()["paths"]


def test_write_lock_waits_for_running_generations_and_blocks_new_ones():
    lock, events = ReadWriteLock(), []
    reading, release = threading.Event(), threading.Event()

    def reader(name, started=None):
        with lock.reading():
            events.append(f"{name} in")
            if started:
                started.set()
                release.wait(5)
            events.append(f"{name} out")

    def writer():
        with lock.writing():
            events.append("swap")

    first = threading.Thread(target=reader, args=("r1", reading))
    first.start()
    reading.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.1)
    second = threading.Thread(target=reader, args=("r2",))
    second.start()
    time.sleep(0.1)
    assert events == ["r1 in"]  # the swap waits for r1; r2 waits for the pending swap
    release.set()
    for t in (first, w, second):
        t.join(5)
    assert events == ["r1 in", "r1 out", "swap", "r2 in", "r2 out"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_official_openai_client_talks_to_the_completions_endpoint(engine):
    openai = pytest.importorskip("openai", reason="the OpenAI client is a test extra (pip install .[test])")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        out = client.completions.create(model=engine.serving.name, prompt=EDIT["prompt"], max_tokens=3, temperature=0)
        expected = engine.complete(EDIT["prompt"], 3)
        assert out.choices[0].text == expected.text and out.object == "text_completion"
        assert out.usage.completion_tokens == expected.completion_tokens
        assert [m.id for m in client.models.list().data] == [engine.serving.name]
        with pytest.raises(openai.BadRequestError, match="accepts at most 40"):
            client.completions.create(model=engine.serving.name, prompt="the " * 100, max_tokens=3)
    finally:
        server.should_exit = True
        thread.join(10)


def test_concurrent_generations_see_weights_before_or_after_each_edit(engine, tiny_dirs):
    from hyperedit.eval import generate
    from hyperedit.ledger.weights import LedgerWeights

    prompts = [EDIT["prompt"], "john plays the sport of"]
    stop, answers = threading.Event(), []

    def client(offset):
        i = offset
        while not stop.is_set():
            c = engine.complete(prompts[i % 2], 3)
            answers.append((c.active_entries, prompts[i % 2], c.text))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            job = engine.submit([EditRequest(**EDIT)])
            assert job.done.wait(60) and job.status == "applied"
            time.sleep(0.2)
            engine.revert(job.entry_id)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    reference_lm = load_model(str(tiny_dirs["llama"]))
    weights = LedgerWeights(reference_lm.model, engine.ledger.blobs.get)
    hashes = {e.id: e.delta_hash for e in engine.ledger.entries()}
    states = sorted({s for s, _, _ in answers})
    expected = {}
    for state in states:
        weights.sync([(i, hashes[i]) for i in state])
        expected[state] = {p: generate(reference_lm.adapter, [p], 3)[0] for p in prompts}
    assert len(states) >= 3 and () in states  # base, and both edits (entries 1 and 2) were seen
    assert expected[(1,)][EDIT["prompt"]] != expected[()][EDIT["prompt"]]
    assert [a for a in answers if expected[a[0]][a[1]] != a[2]] == []


def test_service_follows_a_revert_made_by_another_process(engine, tmp_path):
    job = engine.submit([EditRequest(**EDIT)])
    assert job.done.wait(60) and engine.active == (job.entry_id,)
    Ledger(tmp_path / "ws", create=False).revert(job.entry_id)  # as `hyperedit ledger revert` would
    deadline = time.time() + 10
    while engine.active and time.time() < deadline:
        time.sleep(0.05)
    assert engine.active == () and engine.complete(EDIT["prompt"], 3).active_entries == ()
