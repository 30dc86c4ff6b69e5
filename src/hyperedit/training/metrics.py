"""An append-only JSONL metrics log that a resumed run rewinds to its checkpoint."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class MetricsLog:
    """One JSON object per line, each with a ``step``; flushed after every record.

    ``rewind(step)`` drops records written after ``step`` (and a half-written last line), so
    a run resumed from the checkpoint of ``step`` logs every step exactly once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[dict]:
        """The complete records (a truncated last line is skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def rewind(self, step: int) -> None:
        """Keep only records with ``step <= step``."""
        kept = [r for r in self.read() if int(r.get("step", 0)) <= step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        os.replace(tmp, self.path)
