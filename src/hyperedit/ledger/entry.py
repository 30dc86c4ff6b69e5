"""One ledger entry: an edit with everything needed to audit, reproduce or undo it."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field

from ..requests import EditRequest

_JSON_FIELDS = ("options", "base_model", "requests", "metrics", "delta_meta", "parents")


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    created_at: str
    status: str  # active | reverted
    source: str  # computed (by an editor here) | imported (a saved delta)
    editor: str | None
    options: dict
    checkpoint: str | None
    checkpoint_hash: str | None
    base_model: dict
    requests: list  # user-format records
    metrics: dict
    delta_hash: str
    delta_meta: dict = field(repr=False)
    state_hash: str | None
    parents: list  # ids of the entries active when the delta was computed
    edit_time_s: float | None
    reverted_at: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "LedgerEntry":
        data = dict(row)
        for key in _JSON_FIELDS:
            data[key] = json.loads(data[key])
        return cls(**data)

    def column_values(self) -> dict:
        """The entry as database column values (JSON text for structured fields)."""
        data = asdict(self)
        for key in _JSON_FIELDS:
            data[key] = json.dumps(data[key], sort_keys=True, default=str)
        return data

    def edit_requests(self) -> list[EditRequest]:
        from ..data.user_jsonl import requests_from_records

        return requests_from_records(self.requests, f"ledger entry {self.id}")

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The fields shown in listings."""
        first = self.requests[0] if self.requests else {}
        return {"id": self.id, "status": self.status, "created_at": self.created_at, "editor": self.editor,
                "source": self.source, "n_requests": len(self.requests),
                "first_request": f"{first.get('prompt', '')} -> {first.get('target', '')}" if first else "",
                "metrics": {k: v for k, v in self.metrics.items() if k in ("ES", "GS", "LS")}}
