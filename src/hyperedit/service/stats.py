"""Counters and latency percentiles reported by the service's ``/metrics`` endpoint."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class ServiceStats:
    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.started = time.time()
        self.counts: Counter = Counter()
        self._latency: deque = deque(maxlen=window)
        self.last_swap_s: float | None = None

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def generation(self, seconds: float) -> None:
        with self._lock:
            self.counts["generations"] += 1
            self._latency.append(seconds)

    def swap(self, seconds: float) -> None:
        with self._lock:
            self.counts["weight_swaps"] += 1
            self.last_swap_s = seconds

    def snapshot(self) -> dict:
        with self._lock:
            lat = list(self._latency)
            counts = dict(self.counts)
        return {"uptime_s": round(time.time() - self.started, 1), "counts": counts,
                "generation_latency_s": {f"p{q}": percentile(lat, q) for q in (50, 90, 99)},
                "last_swap_s": self.last_swap_s}
