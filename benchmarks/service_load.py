"""Loopback load test of ``hyperedit serve``: concurrent generations while edits come and go.

Starts the service on the embedded model in a child process (127.0.0.1, a free port, a fresh
ledger workspace, the ft demo setting, no apply-time metrics), then for ``--duration`` seconds runs ``--clients`` threads that each send
``/generate`` requests back to back (prompts in turn), while a controller applies an edit and
reverts it every ``--edit-every`` seconds. Every answer carries the ledger state it was generated
on; afterwards each state's weights are rebuilt in this process from the ledger and every answer
is compared with that state's greedy answer: a generation that saw half-applied weights would not
match. Reported: requests served, errors, latency percentiles, mismatches.

    nice -n 10 python benchmarks/service_load.py --clients 4 --duration 60

``--edits none`` runs the clients alone (the baseline); ``--edits hostile`` keeps one long edit
(the most ft steps a client may ask for, never converging) in flight instead, resubmitted when the
service's ``--edit-timeout`` ends it, and also times ``/health``. ``--max-waiting`` is the service's
queue bound (503 with Retry-After beyond it; counted as ``busy_refusals``).

Writes benchmarks/results/service_load.json and .md (``--out`` names others).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("service_load")
PROMPTS = ["The Eiffel Tower is located in the city of", "Lionel Messi plays the sport of",
           "The official language of Brazil is", "The Statue of Liberty is located in the city of"]
EDIT = {"prompt": "The Eiffel Tower is located in the city of", "target": "Rome", "subject": "Eiffel Tower"}
MAX_TOKENS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOSTILE_OPTIONS = {"steps": 200, "lr": 1e-9, "stop_loss": 0.0}


def _start_server(workspace: Path, port: int, model: str, extra: list[str]) -> subprocess.Popen:
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "hyperedit", "serve", "-w", str(workspace), "--model", model,
                             "--port", str(port), "--max-new-tokens", str(MAX_TOKENS), "--no-metrics", "-q", *extra], env=env)


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not start in time")


def _client(base: str, stop: threading.Event, offset: int, results: list) -> None:
    with httpx.Client(base_url=base, timeout=120) as http:
        i = offset
        while not stop.is_set():
            prompt = PROMPTS[i % len(PROMPTS)]
            i += 1
            start = time.perf_counter()
            try:
                res = http.post("/generate", json={"prompt": prompt, "max_tokens": MAX_TOKENS})
                body = res.json()
                results.append({"prompt": prompt, "status": res.status_code, "latency": time.perf_counter() - start,
                                "text": body.get("text"), "state": tuple(body.get("active_entries", ()))})
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                results.append({"prompt": prompt, "status": None, "latency": time.perf_counter() - start,
                                "error": str(exc)})
            if results[-1]["status"] == 503:
                time.sleep(float(res.headers.get("Retry-After", 1)))


def _health(base: str, stop: threading.Event, latencies: list) -> None:
    with httpx.Client(base_url=base, timeout=120) as http:
        while not stop.wait(0.5):
            start = time.perf_counter()
            if http.get("/health").status_code == 200:
                latencies.append(time.perf_counter() - start)


def _hostile(base: str, stop: threading.Event, log_: list) -> None:
    """Keep one long edit in flight; record how each ended."""
    with httpx.Client(base_url=base, timeout=600) as http:
        while not stop.is_set():
            res = http.post("/edits", json={"requests": [EDIT], "options": HOSTILE_OPTIONS, "wait": True})
            log_.append(("hostile", res.status_code, res.json().get("error", {}).get("message") if
                         res.status_code != 200 else "applied", time.time()))


def _controller(base: str, stop: threading.Event, every: float, log_: list) -> None:
    with httpx.Client(base_url=base, timeout=600) as http:
        while not stop.wait(every):
            res = http.post("/edits", json={"requests": [EDIT], "wait": True}).json()
            log_.append(("applied", res.get("entry"), time.time()))
            if stop.wait(every):
                break
            http.post(f"/ledger/{res['entry']}/revert", json={})
            log_.append(("reverted", res.get("entry"), time.time()))


def _reference_answers(workspace: Path, model: str, states: set) -> tuple[dict, list[float]]:
    """Greedy answers of every prompt on the weights of each ledger state, rebuilt here; and the
    editor's time of every entry."""
    from hyperedit.eval import generate
    from hyperedit.ledger import Ledger
    from hyperedit.ledger.weights import LedgerWeights
    from hyperedit.models import load_model

    ledger = Ledger(workspace, create=False)
    entries = ledger.entries()
    hashes = {e.id: e.delta_hash for e in entries}
    lm = load_model(model)
    weights = LedgerWeights(lm.model, ledger.blobs.get)
    answers = {}
    for state in sorted(states):
        weights.sync([(i, hashes[i]) for i in state])
        answers[state] = {p: generate(lm.adapter, [p], MAX_TOKENS)[0] for p in PROMPTS}
    return answers, [e.edit_time_s for e in entries if e.edit_time_s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--edit-every", type=float, default=8, help="seconds between applying and reverting")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="service_load")
    parser.add_argument("--edits", choices=("revert", "none", "hostile"), default="revert")
    parser.add_argument("--max-waiting", type=int, default=16)
    parser.add_argument("--edit-timeout", type=float, default=600)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from hyperedit.bench.records import make_record, write_results
    from hyperedit.service.stats import percentile

    root = Path(tempfile.mkdtemp(prefix="service-load-"))
    workspace, port = root / "ws", _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_server(workspace, port, args.model, ["--max-waiting", str(args.max_waiting),
                                                       "--edit-timeout", str(args.edit_timeout)])
    try:
        _wait_ready(base, proc)
        for p in PROMPTS:  # warm-up
            httpx.post(f"{base}/generate", json={"prompt": p, "max_tokens": MAX_TOKENS}, timeout=120)
        stop, results, edits, health = threading.Event(), [], [], []
        threads = [threading.Thread(target=_client, args=(base, stop, i, results)) for i in range(args.clients)]
        threads.append(threading.Thread(target=_health, args=(base, stop, health)))
        if args.edits == "revert":
            threads.append(threading.Thread(target=_controller, args=(base, stop, args.edit_every, edits)))
        elif args.edits == "hostile":
            threads.append(threading.Thread(target=_hostile, args=(base, stop, edits)))
        start = time.time()
        for t in threads:
            t.start()
        time.sleep(args.duration)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.time() - start
        server_metrics = httpx.get(f"{base}/metrics", timeout=30).json()
    finally:
        proc.terminate()
        proc.wait(60)
    ok = [r for r in results if r["status"] == 200]
    reference, edit_times = _reference_answers(workspace, args.model, {r["state"] for r in ok})
    mismatches = [r for r in ok if reference[r["state"]][r["prompt"]] != r["text"]]
    changed = [p for p in PROMPTS if len({reference[s][p] for s in reference}) > 1]
    latencies = [r["latency"] for r in ok]
    metrics = {"ES": None, "GS": None, "LS": None, "clients": args.clients, "duration_s": round(elapsed, 1),
               "edits": args.edits, "max_waiting": args.max_waiting, "edit_timeout_s": args.edit_timeout,
               "requests_served": len(ok), "requests_per_s": round(len(ok) / elapsed, 2),
               "busy_refusals": sum(r["status"] == 503 for r in results),
               "errors": len(results) - len(ok) - sum(r["status"] == 503 for r in results),
               "health_p50_s": round(percentile(health, 50), 4) if health else None,
               "health_p90_s": round(percentile(health, 90), 4) if health else None,
               "hostile_edit_outcomes": sorted({e[2] for e in edits if e[0] == "hostile"}),
               **{f"latency_p{q}_s": round(percentile(latencies, q), 3) for q in (50, 90, 99)},
               "latency_max_s": round(max(latencies), 3), "edits_applied": sum(e[0] == "applied" for e in edits),
               "edits_reverted": sum(e[0] == "reverted" for e in edits), "ledger_states_seen": len(reference),
               "answers_checked": len(ok), "answers_mismatched": len(mismatches),
               "prompts_whose_answer_the_edit_changes": len(changed),
               "answers_on_edited_weights": sum(bool(r["state"]) for r in ok),
               "server_last_swap_s": server_metrics.get("last_swap_s")}
    log.info("%s", metrics)
    shutil.rmtree(root, ignore_errors=True)
    record = make_record(editor="ft", model=args.model, dataset="loopback-load", split="-", mode="sequential",
                         n_edits=metrics["edits_applied"], metrics=metrics,
                         edit_time_s=sum(edit_times) / len(edit_times) if edit_times else 0.0, peak_rss_mb=None,
                         seed=0, what="service load test", max_tokens=MAX_TOKENS, prompts=PROMPTS, edit=EDIT,
                         reference_examples={",".join(map(str, s)) or "base": reference[s][EDIT["prompt"]]
                                             for s in list(reference)[:4]})
    notes = ("Loopback HTTP, service and clients on the same 2-core CPU machine (shared), greedy decoding. "
             "`answers_mismatched` counts answers that differ from the answer of the ledger state they report; "
             "0 means every generation saw the weights before or after an edit, never a mix.")
    write_results([record], args.out, RESULTS_DIR, title="Service under load while edits are applied and reverted", notes=notes)


if __name__ == "__main__":
    main()
