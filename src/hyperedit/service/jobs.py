"""What the service engine is configured with (``ServiceConfig``) and what it hands out: edit jobs
(``EditJob``, ``EditInterrupted`` when one runs past its time or is cancelled) and completions."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..errors import HyperEditError
from ..requests import EditRequest


@dataclass
class ServiceConfig:
    editor: str = "ft"
    editor_options: dict = field(default_factory=dict)
    checkpoint: str | None = None  # for trained editors; fixed per service (clients never name paths)
    max_prompt_tokens: int = 512
    max_new_tokens: int = 128
    max_edit_requests: int = 64  # per submission
    max_batch: int = 32  # requests applied together in one ledger entry
    batch_window_s: float = 0.2  # how long the worker waits for more edits to join a batch
    measure_metrics: bool = True
    poll_ledger_s: float = 1.0  # how often an idle worker looks for changes made by other processes
    generation_slots: int = 2  # generations run at once
    max_waiting: int = 16  # generations waiting for a slot; beyond, 503 with Retry-After
    max_queued_edits: int = 64  # edit jobs waiting for the worker; beyond, 503
    edit_timeout_s: float = 600.0  # an edit batch running longer is interrupted and its jobs fail
    edit_nice: int = 10  # the edit worker thread's niceness (Linux), so generations keep their share of CPU
    max_choices: int = 8  # OpenAI ``n``
    revert_wait_s: float = 2.0  # a revert waits this long for a running edit, then gets a 503


class EditInterrupted(HyperEditError):
    """An edit passed its time limit or was cancelled."""


@dataclass
class EditJob:
    id: int
    requests: list[EditRequest]
    editor: str
    options: dict
    status: str = "queued"  # queued | running | applied | failed | cancelled
    cancel_requested: bool = False
    deadline: float | None = None  # monotonic time by which a running job must finish
    entry_id: int | None = None
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def public(self) -> dict:
        return {"job": self.id, "status": self.status, "entry": self.entry_id, "error": self.error,
                "editor": self.editor, "n_requests": len(self.requests)}


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of text or a stop string) | "length"
    active_entries: tuple[int, ...]  # the ledger state whose weights produced the text
