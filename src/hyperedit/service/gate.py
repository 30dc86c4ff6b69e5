"""Admission for generations: a few run at once, a bounded number wait, the rest are told to retry.

Letting every request wait makes latency grow without bound under load (and holds a server
thread per waiting request); beyond ``max_waiting`` waiting requests the service answers 503 with
``Retry-After`` instead.
"""
from __future__ import annotations

import contextlib
import math
import threading


class ServiceBusy(Exception):
    """The service cannot take this request now; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class AdmissionGate:
    def __init__(self, slots: int, max_waiting: int, typical_seconds=lambda: None):
        self.slots, self.max_waiting = slots, max_waiting
        self._running = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        self._typical_seconds = typical_seconds

    @property
    def waiting(self) -> int:
        return max(0, self._pending - self.slots)

    def reserve(self) -> "contextlib.AbstractContextManager":
        """Take a place in line (ServiceBusy when the line is full); entering the returned context
        waits for a slot, leaving it gives both back. A reservation must be entered."""
        with self._lock:
            if self._pending >= self.slots + self.max_waiting:
                typical = self._typical_seconds() or 1.0
                raise ServiceBusy(f"the service is busy ({self.max_waiting} requests waiting); retry later",
                                  math.ceil(typical * self._pending / self.slots))
            self._pending += 1
        return self._run()

    @contextlib.contextmanager
    def _run(self):
        try:
            with self._running:
                yield
        finally:
            with self._lock:
                self._pending -= 1
