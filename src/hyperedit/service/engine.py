"""The served model and its ledger: generation, queued edits, reverts and the weight swap.

Two copies of the model: the *serving* copy answers generations, the *worker* copy is where
editors compute deltas (some editors change weights while they work, e.g. ft trains in place).
After the ledger changes, the serving copy's new weights are computed outside any lock and then
copied in under the write side of a readers-writer lock; every generation holds the read side for
its whole run, so it sees the weights before an edit or after it, never a mix.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time

import torch

from ..editors import editor_entry, make_config
from ..errors import HyperEditError
from ..ledger import Ledger
from ..ledger.weights import LedgerWeights
from ..models import LoadedModel
from ..models.adapters import ModelAdapter
from ..requests import EditRequest
from .decode import Decoded, Sampling, decode
from .gate import AdmissionGate, ServiceBusy
from .jobs import Completion, EditInterrupted, EditJob, ServiceConfig
from .options import check_client_options
from .rwlock import ReadWriteLock
from .stats import ServiceStats

log = logging.getLogger(__name__)
MAX_JOBS_KEPT = 10_000  # job statuses remembered for GET /edits/{job}


class Engine:
    def __init__(self, lm: LoadedModel, ledger: Ledger, config: ServiceConfig | None = None,
                 spec: str | None = None):
        self.config = config or ServiceConfig()
        self.serving = lm
        worker_model = copy.deepcopy(lm.model)
        self.worker = LoadedModel(worker_model, lm.tokenizer,
                                  ModelAdapter(worker_model, lm.tokenizer, chat_template=lm.adapter.chat_template),
                                  lm.name)
        self.ledger = ledger.attach(self.worker, spec=spec)
        self._serving_weights = LedgerWeights(lm.model, ledger.blobs.get)
        self._lock = ReadWriteLock()
        self._ledger_mutex = threading.Lock()  # one ledger writer (and worker-model user) at a time
        self.active: tuple[int, ...] = ()
        self.stats = ServiceStats()
        self._jobs: dict[int, EditJob] = {}
        self._job_ids = itertools.count(1)
        self._queue: queue.Queue[EditJob] = queue.Queue()
        self._stop = threading.Event()
        self._running: list[EditJob] = []  # the batch the worker is applying
        for module in {self.worker.model, self.worker.model.get_input_embeddings()}:  # a forward meets one of them
            module.register_forward_pre_hook(self._interrupt_if_due)
        self.gate = AdmissionGate(self.config.generation_slots, self.config.max_waiting,
                                  lambda: self.stats.snapshot()["generation_latency_s"]["p50"])
        self.check_editor(self.config.editor, self.config.editor_options)
        with self._ledger_mutex:
            self._publish()
        self._thread = threading.Thread(target=self._work, name="hyperedit-edits", daemon=True)
        self._thread.start()

    # ----- generation ---------------------------------------------------------------------
    def prompt_tokens(self, prompt: str) -> int:
        return len(self.serving.adapter.encode_prompts([prompt])["input_ids"][0])

    def check_prompt(self, prompt: str, max_tokens: int) -> int:
        """Raise HyperEditError for an empty or oversized prompt or token budget; return its length."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise HyperEditError("prompt must be a non-empty string")
        if max_tokens < 1 or max_tokens > self.config.max_new_tokens:
            raise HyperEditError(f"max_tokens must be between 1 and {self.config.max_new_tokens}, got {max_tokens}")
        n = self.prompt_tokens(prompt)
        if n > self.config.max_prompt_tokens:
            raise HyperEditError(f"prompt has {n} tokens; this service accepts at most {self.config.max_prompt_tokens}")
        return n

    @torch.no_grad()
    def complete(self, prompt: str, max_tokens: int, stop: list[str] | None = None) -> Completion:
        """Greedy continuation of ``prompt`` on one consistent version of the weights."""
        n_prompt = self.check_prompt(prompt, max_tokens)
        adapter, tok = self.serving.adapter, self.serving.tokenizer
        batch = adapter.encode_prompts([prompt], device=self.serving.device)
        with self.gate.reserve(), self._lock.reading():
            start = time.perf_counter()
            active = self.active
            out = self.serving.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False,
                                              pad_token_id=tok.pad_token_id)
        new = out[0] if adapter.is_seq2seq else out[0, batch["input_ids"].shape[1]:]
        ids = new.tolist()
        finish = "stop" if tok.eos_token_id in ids else "length"
        text = tok.decode(ids, skip_special_tokens=True)
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        self.stats.generation(time.perf_counter() - start)
        return Completion(text, n_prompt, len(ids), finish, active)

    def decode(self, prompt_ids: list[int], max_new: int, sampling: Sampling, should_stop,
               want_prompt_logprobs: bool = False, reservation=None) -> tuple[Decoded, tuple[int, ...]]:
        """Sampled or greedy continuations of token ids (the OpenAI endpoints), on one version of
        the weights; returns them and that version's active entries."""
        with reservation or self.gate.reserve(), self._lock.reading():
            if self.serving.adapter.is_seq2seq:
                raise HyperEditError("the /v1 endpoints need a decoder-only model; use /generate")
            start = time.perf_counter()
            active = self.active
            out = decode(self.serving.model, prompt_ids, max_new, sampling, self.serving.tokenizer.eos_token_id,
                         should_stop, want_prompt_logprobs)
        self.stats.generation(time.perf_counter() - start)
        return out, active

    # ----- edits ---------------------------------------------------------------------------
    def check_editor(self, name: str, options: dict) -> None:
        """Raise HyperEditError unless ``name`` is an editor this service can run with ``options``."""
        entry = editor_entry(name)
        if entry.needs_checkpoint:
            if name != self.config.editor or not self.config.checkpoint:
                raise HyperEditError(f"editor {name!r} needs a trained checkpoint; this service was started "
                                     f"with {self.config.editor!r}" + (" and a checkpoint" if self.config.checkpoint else ""))
            return
        make_config(entry.config_class, options)

    def submit(self, requests: list[EditRequest], editor: str | None = None, options: dict | None = None) -> EditJob:
        """Queue edits (checked now, applied by the worker in batches); returns the job.

        Options a client sends are checked against the service's limits (no file names, bounded
        counts); the service's own options for its editor are the operator's and are not."""
        if options is not None:
            check_client_options(editor_entry(editor or self.config.editor).config_class, options)
        if self._queue.qsize() >= self.config.max_queued_edits:
            raise ServiceBusy(f"{self._queue.qsize()} edit jobs are waiting; retry later",
                              retry_after=self.config.batch_window_s + 5)
        editor = editor or self.config.editor
        options = dict(self.config.editor_options if options is None and editor == self.config.editor else options or {})
        if not requests:
            raise HyperEditError("requests must hold at least one edit")
        if len(requests) > self.config.max_edit_requests:
            raise HyperEditError(f"{len(requests)} requests in one submission; the limit is {self.config.max_edit_requests}")
        for i, r in enumerate(requests, 1):
            n = self.prompt_tokens(r.prompt)
            if n > self.config.max_prompt_tokens:
                raise HyperEditError(f"request {i}: prompt has {n} tokens; the limit is {self.config.max_prompt_tokens}")
        self.check_editor(editor, options)
        job = EditJob(next(self._job_ids), list(requests), editor, options)
        self._jobs[job.id] = job
        while len(self._jobs) > MAX_JOBS_KEPT:  # forget the oldest (dicts keep insertion order)
            self._jobs.pop(next(iter(self._jobs)))
        self.stats.count("edit_jobs_submitted")
        self._queue.put(job)
        return job

    def job(self, job_id: int) -> EditJob:
        if job_id not in self._jobs:
            raise KeyError(job_id)
        return self._jobs[job_id]

    def cancel(self, job_id: int) -> EditJob:
        """Cancel a queued job, or interrupt a running one at its editor's next model forward."""
        job = self.job(job_id)
        if job.status in ("queued", "running"):
            job.cancel_requested = True
            if job.status == "queued":
                self._finish([job], "cancelled", "cancelled by a client")
        return job

    def revert(self, entry_id: int, recompute: bool = False) -> dict:
        """Revert an entry; while an edit is being applied, wait briefly and then answer busy
        (a request thread is never held for the length of an edit)."""
        if not self._ledger_mutex.acquire(timeout=self.config.revert_wait_s):
            raise ServiceBusy("an edit is being applied; retry the revert when it is done", retry_after=5)
        try:
            result = self.ledger.revert(entry_id, recompute=recompute)
            self._publish()
        finally:
            self._ledger_mutex.release()
        self.stats.count("reverts")
        return result

    def queue_length(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    # ----- worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        if sys.platform.startswith("linux") and self.config.edit_nice:
            try:  # per thread on Linux; the thread's math-library workers, started later, inherit it
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.config.edit_nice)
            except OSError:
                log.warning("could not lower the edit worker's priority")
        last_check = time.monotonic()
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
                if first.status == "cancelled":
                    continue
            except queue.Empty:
                if time.monotonic() - last_check >= self.config.poll_ledger_s:
                    self._follow_external_changes()
                    last_check = time.monotonic()
                continue
            time.sleep(self.config.batch_window_s)
            batch, held = [first], []
            size = len(first.requests)
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job.status == "cancelled":
                    continue
                same = (job.editor, json.dumps(job.options, sort_keys=True)) == \
                       (first.editor, json.dumps(first.options, sort_keys=True))
                if same and size + len(job.requests) <= self.config.max_batch:
                    batch.append(job)
                    size += len(job.requests)
                else:
                    held.append(job)
            for job in held:  # kept for the next round, in their order
                self._queue.put(job)
            self._apply(batch)

    def _interrupt_if_due(self, module, args) -> None:
        """Forward pre-hook on the worker model: every editor runs the model, so a running batch
        past its deadline or cancelled stops at its next forward."""
        for job in self._running:
            if job.cancel_requested:
                raise EditInterrupted("cancelled by a client")
            if job.deadline is not None and time.monotonic() > job.deadline:
                raise EditInterrupted(f"the edit ran past the service's time limit of {self.config.edit_timeout_s:g} s")

    def _finish(self, jobs: list[EditJob], status: str, error: str | None = None, entry_id: int | None = None) -> None:
        for job in jobs:
            job.status, job.error, job.entry_id = status, error, entry_id
            job.done.set()
        self.stats.count(f"edit_jobs_{status}", len(jobs))

    def _apply(self, batch: list[EditJob]) -> None:
        """Apply a batch as one entry; when it fails for another reason than its time limit, each
        job is retried alone, so one bad job does not fail the jobs batched with it."""
        requests = [r for job in batch for r in job.requests]
        first = batch[0]
        try:
            with self._ledger_mutex:
                deadline = time.monotonic() + self.config.edit_timeout_s
                for job in batch:
                    job.status, job.deadline = "running", deadline
                self._running = batch
                try:
                    entry = self.ledger.apply(requests, first.editor, first.options, checkpoint=self.config.checkpoint
                                              if first.editor == self.config.editor else None,
                                              metrics=self.config.measure_metrics)
                finally:
                    self._running = []
                self._publish()
        except EditInterrupted as exc:
            log.warning("edit batch interrupted: %s", exc)
            cancelled = [j for j in batch if j.cancel_requested]
            self._finish(cancelled, "cancelled", str(exc))
            self._finish([j for j in batch if not j.cancel_requested], "failed", str(exc))
            return
        except Exception as exc:  # a failed edit must not stop the worker
            if len(batch) > 1:
                log.warning("edit batch of %d jobs failed (%s); applying each alone", len(batch), exc)
                for job in batch:
                    self._apply([job])
                return
            log.exception("edit job failed")
            self._finish(batch, "failed", str(exc) or type(exc).__name__)
            return
        self._finish(batch, "applied", entry_id=entry.id)
        self.stats.count("edit_batches")

    def _follow_external_changes(self) -> None:
        """Serve changes another process made to the workspace (e.g. `hyperedit ledger revert`)."""
        try:
            with self._ledger_mutex:
                if tuple(self.ledger.active_chain()) != self._serving_weights.applied:
                    log.info("the ledger changed outside this service; serving its new state")
                    self._publish()
        except Exception:  # never stop the worker; the next poll tries again
            log.exception("could not follow the ledger")

    def _publish(self) -> None:
        """Bring the serving copy to the ledger's active entries (the caller holds the ledger mutex)."""
        chain = self.ledger.active_chain()
        planned = self._serving_weights.plan(chain)
        start = time.perf_counter()
        with self._lock.writing():
            self._serving_weights.write(chain, planned)
            self.active = tuple(i for i, _ in chain)
        self.stats.swap(time.perf_counter() - start)
