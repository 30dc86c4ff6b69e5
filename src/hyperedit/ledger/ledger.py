"""The edit ledger: a workspace directory holding the history of edits made to one base model.

    workspace/ledger.sqlite              entries, events, the base model's identity (SQLite, WAL)
    workspace/blobs/<sha256>.safetensors delta shifts and editor states, by content hash

The model's weights are a pure function of the base model and the set of active entries (see
``weights.py``), so ``revert`` is exact. Every delta is computed on the weights of the entries
active at that moment (recorded as ``parents``): reverting an entry leaves later deltas as they
were computed; ``revert(..., recompute=True)`` recomputes them on the new history instead.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path
from typing import Sequence

from ..data.user_jsonl import user_record
from ..delta import EditDelta
from ..editors.protocols import SequentialState
from ..errors import HyperEditError
from ..outputs import claim, write_directory
from ..requests import EditRequest
from .blobs import BlobStore
from .entry import LedgerEntry
from .identity import base_identity, directory_hash
from .store import DB_FILE, Store, now
from .weights import LedgerWeights

log = logging.getLogger(__name__)

EXPORT_MARKER = "hyperedit-ledger-export.json"
_BASE_KEY = "base_model"


class Ledger:
    """Open (or create) the ledger in ``workspace``; ``attach`` a model to apply, revert or export."""

    def __init__(self, workspace: str | Path, create: bool = True):
        self.workspace = Path(workspace)
        db_file = self.workspace / DB_FILE
        if not db_file.is_file():
            if not create:
                raise HyperEditError(f"{self.workspace}: no ledger here ({DB_FILE} missing)")
            # another process may be creating this workspace now: its own files are not foreign
            own = {DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", "blobs"}
            if self.workspace.is_file() or (self.workspace.is_dir()
                                            and any(p.name not in own for p in self.workspace.iterdir())):
                raise HyperEditError(f"{self.workspace}: exists and is not a ledger workspace; "
                                     f"choose a new or empty directory")
            self.workspace.mkdir(parents=True, exist_ok=True)
        self.store = Store(db_file)
        self.blobs = BlobStore(self.workspace)
        self.lm = None
        self._weights: LedgerWeights | None = None

    # ----- the base model --------------------------------------------------------------------
    @property
    def base_model(self) -> dict | None:
        with self.store.read() as db:
            row = db.execute("SELECT value FROM workspace WHERE key = ?", (_BASE_KEY,)).fetchone()
        return json.loads(row["value"]) if row else None

    def attach(self, lm, spec: str | None = None) -> "Ledger":
        """Bind to a freshly loaded, unedited model; the first model attached defines the workspace.

        ``spec`` is how the model was loaded (a name or directory), kept so commands can reload it.
        """
        identity = base_identity(lm, spec)
        with self.store.write() as db:
            db.execute("INSERT OR IGNORE INTO workspace (key, value) VALUES (?, ?)",
                       (_BASE_KEY, json.dumps(identity, sort_keys=True)))
            bound = json.loads(db.execute("SELECT value FROM workspace WHERE key = ?", (_BASE_KEY,)).fetchone()[0])
        if bound["fingerprint"] != identity["fingerprint"]:
            raise HyperEditError(
                f"{self.workspace}: ledger belongs to base model {bound['name']} ({bound['dtype']}, weights "
                f"{bound['fingerprint'][:12]}), not {identity['name']} ({identity['dtype']}, weights "
                f"{identity['fingerprint'][:12]})")
        self.lm = lm
        self._weights = LedgerWeights(lm.model, self.blobs.get)
        return self

    def _need_lm(self):
        if self.lm is None:
            raise HyperEditError("this ledger operation needs a model: call attach(lm) first")
        return self.lm

    # ----- reading -----------------------------------------------------------------------
    def entries(self, status: str | None = None) -> list[LedgerEntry]:
        if status not in (None, "active", "reverted"):
            raise HyperEditError(f"status must be active or reverted, not {status!r}")
        query, args = "SELECT * FROM entries", ()
        if status:
            query, args = query + " WHERE status = ?", (status,)
        with self.store.read() as db:
            return [LedgerEntry.from_row(r) for r in db.execute(query + " ORDER BY id", args)]

    def get(self, entry_id: int) -> LedgerEntry:
        with self.store.read() as db:
            row = db.execute("SELECT * FROM entries WHERE id = ?", (int(entry_id),)).fetchone()
        if row is None:
            raise HyperEditError(f"{self.workspace}: no ledger entry {entry_id}")
        return LedgerEntry.from_row(row)

    def events(self, entry_id: int | None = None) -> list[dict]:
        query, args = "SELECT * FROM events", ()
        if entry_id is not None:
            query, args = query + " WHERE entry_id = ?", (int(entry_id),)
        with self.store.read() as db:
            return [{**dict(r), "detail": json.loads(r["detail"])} for r in db.execute(query + " ORDER BY id", args)]

    # ----- weights -----------------------------------------------------------------------
    def active_chain(self) -> list[tuple[int, str]]:
        """(id, delta hash) of the active entries in id order: all that the weights depend on."""
        with self.store.read() as db:
            return [tuple(r) for r in db.execute("SELECT id, delta_hash FROM entries WHERE status = 'active' ORDER BY id")]

    def sync(self) -> list[tuple[int, str]]:
        """Set the attached model's weights to base + active entries; returns their chain."""
        self._need_lm()
        chain = self.active_chain()
        self._weights.sync(chain)
        return chain

    # ----- writing -----------------------------------------------------------------------
    def apply(self, requests: Sequence[EditRequest], editor: str, options: dict | None = None,
              checkpoint: str | None = None, metrics: bool = True) -> LedgerEntry:
        """Compute an edit with ``editor`` on the current weights and record it as a new active entry."""
        lm = self._need_lm()
        requests = list(requests)
        if not requests:
            raise HyperEditError("no requests to apply")
        active = self.entries("active")
        self._weights.sync(_chain(active))  # the weights the editor sees are exactly those of ``active``
        computed = self._compute(editor, options or {}, checkpoint, requests, active)
        return self._insert(computed, requests, source="computed", editor=editor, options=options or {},
                            checkpoint=checkpoint, measure=metrics, lm=lm)

    def import_delta(self, delta: EditDelta, requests: Sequence[EditRequest] = (), metrics: bool = True) -> LedgerEntry:
        """Record a saved delta as a new active entry (metrics need the requests it was made for)."""
        lm = self._need_lm()
        delta.check_fits(lm.model)
        chain = self.sync()
        computed = _Computed(delta, None, [i for i, _ in chain], None)
        return self._insert(computed, list(requests), source="imported", editor=delta.meta.get("editor"),
                            options={}, checkpoint=None, measure=metrics and bool(requests), lm=lm)

    def revert(self, entry_id: int, recompute: bool = False) -> dict:
        """Mark an entry reverted; with ``recompute``, recompute every later computed entry on the
        weights without it (in id order, each editor's sequential state replayed), all in one commit.

        Returns ``{"reverted": id, "recomputed": [ids], "kept": [ids of later imported entries],
        "computed_on_it": [ids of later active entries whose delta was computed with it in place and
        not recomputed]}``.
        """
        target = self.get(entry_id)
        if target.status != "active":
            raise HyperEditError(f"ledger entry {entry_id} is already reverted")
        updates, kept = [], []
        if recompute:
            lm = self._need_lm()
            chain = [e for e in self.entries("active") if e.id < target.id]
            for entry in (e for e in self.entries("active") if e.id > target.id):
                if entry.source != "computed":
                    kept.append(entry.id)
                    chain.append(entry)
                    continue
                if entry.checkpoint and directory_hash(entry.checkpoint) != entry.checkpoint_hash:
                    raise HyperEditError(f"ledger entry {entry.id}: checkpoint {entry.checkpoint} changed or is "
                                         f"missing; cannot recompute (nothing was changed)")
                self._weights.sync(_chain(chain))
                requests = entry.edit_requests()
                computed = self._compute(entry.editor, entry.options, entry.checkpoint, requests, chain)
                metrics = _measure(lm, requests, computed.delta) if entry.metrics else {}
                new = replace(entry, delta_hash=self.blobs.put(computed.delta.shifts), state_hash=computed.state_hash,
                              metrics=metrics, parents=computed.parents, edit_time_s=computed.seconds,
                              delta_meta=computed.delta.meta)
                updates.append((entry, new))
                chain.append(new)
        with self.store.write() as db:
            status = db.execute("SELECT status FROM entries WHERE id = ?", (target.id,)).fetchone()["status"]
            if status != "active":
                raise HyperEditError(f"ledger entry {entry_id} is already reverted")
            for old, new in updates:
                row = db.execute("SELECT status, delta_hash FROM entries WHERE id = ?", (old.id,)).fetchone()
                if tuple(row) != ("active", old.delta_hash):
                    raise HyperEditError(f"ledger entry {old.id} changed during recomputation; nothing was changed, retry")
                values = new.column_values()
                db.execute("UPDATE entries SET delta_hash = :delta_hash, state_hash = :state_hash, metrics = :metrics, "
                           "parents = :parents, edit_time_s = :edit_time_s, delta_meta = :delta_meta WHERE id = :id",
                           values)
                _event(db, old.id, "recomputed", {"after_revert_of": target.id, "old_delta": old.delta_hash,
                                                  "new_delta": new.delta_hash})
            db.execute("UPDATE entries SET status = 'reverted', reverted_at = ? WHERE id = ?", (now(), target.id))
            _event(db, target.id, "reverted", {"recompute": recompute})
        if self.lm is not None:
            self.sync()
        recomputed = [new.id for _, new in updates]
        dependents = [e.id for e in self.entries("active")
                      if e.source == "computed" and target.id in e.parents and e.id not in recomputed]
        return {"reverted": target.id, "recomputed": recomputed, "kept": kept, "computed_on_it": dependents}

    def export(self, out: str | Path) -> Path:
        """Write the merged model (base + active entries) as a Hugging Face model directory.

        A model directory hyperedit wrote there before is replaced; anything else is refused
        (``hyperedit.outputs``)."""
        lm = self._need_lm()
        out = Path(out)
        claim(out, "model", option="export", overwrite=True)
        chain = self.sync()
        with write_directory(out, "model") as tmp:
            lm.model.save_pretrained(tmp, safe_serialization=True)
            lm.tokenizer.save_pretrained(tmp)
            marker = {"workspace": str(self.workspace.resolve()), "base_model": self.base_model,
                      "active_entries": [i for i, _ in chain], "exported_at": now()}
            (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2))
        return out

    def verify(self) -> dict:
        """Check the database and that every referenced blob is present and intact."""
        with self.store.read() as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        entries = self.entries()
        referenced = {h for e in entries for h in (e.delta_hash, e.state_hash) if h}
        problems = [f"blob {h}: {msg}" for h in sorted(referenced) if (msg := self.blobs.check(h))]
        if integrity != "ok":
            problems.insert(0, f"database: {integrity}")
        return {"ok": not problems, "entries": len(entries), "active": sum(e.status == "active" for e in entries),
                "problems": problems, "unreferenced_blobs": sorted(self.blobs.digests() - referenced),
                "stale_temporaries": self.blobs.stale_temporaries()}

    # ----- internals -----------------------------------------------------------------------
    def _compute(self, editor_name, options, checkpoint, requests, chain) -> "_Computed":
        from ..editors import get_editor

        editor = get_editor(editor_name, checkpoint=checkpoint, lm=self.lm, **options)
        stateful = isinstance(editor, SequentialState)
        if stateful:
            self._continue_state(editor, editor_name, directory_hash(checkpoint), chain)
        start = time.perf_counter()
        delta = editor.edit(self.lm, requests)
        seconds = time.perf_counter() - start
        delta.meta.setdefault("config", asdict(editor.config) if is_dataclass(editor.config) else {})
        state_hash = None
        if stateful:
            tensors, meta = editor.stream_state()
            if tensors:
                state_hash = self.blobs.put(tensors, meta)
        return _Computed(delta, state_hash, [e.id for e in chain], seconds)

    def _continue_state(self, editor, editor_name: str, checkpoint_hash: str | None, chain) -> None:
        """Give ``editor`` the sequential state of the latest entry of ``chain`` made by the same
        editor from the same checkpoint (its memory of every earlier edit of the history)."""
        prior = next((e for e in reversed(chain) if e.editor == editor_name and e.state_hash
                      and e.checkpoint_hash == checkpoint_hash), None)
        if prior is not None:
            editor.load_stream_state(self.blobs.get(prior.state_hash), self.blobs.get_meta(prior.state_hash) or {})

    def _insert(self, computed: "_Computed", requests, *, source, editor, options, checkpoint, measure, lm) -> LedgerEntry:
        computed.delta.check_finite()  # never recorded (also for deltas built in code)
        metrics = _measure(lm, requests, computed.delta) if measure else {}
        delta_hash = self.blobs.put(computed.delta.shifts)
        values = LedgerEntry(
            id=None, created_at=now(), status="active", source=source, editor=editor, options=dict(options),
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None, checkpoint_hash=directory_hash(checkpoint),
            base_model=self.base_model, requests=[user_record(r) for r in requests], metrics=metrics,
            delta_hash=delta_hash, delta_meta=computed.delta.meta, state_hash=computed.state_hash,
            parents=computed.parents, edit_time_s=computed.seconds, reverted_at=None).column_values()
        values.pop("id")
        columns = ", ".join(values)
        with self.store.write() as db:
            cursor = db.execute(f"INSERT INTO entries ({columns}) VALUES ({', '.join(':' + k for k in values)})", values)
            entry_id = cursor.lastrowid
            _event(db, entry_id, "applied", {"delta": delta_hash, "source": source})
        self.sync()
        return self.get(entry_id)


class _Computed:
    def __init__(self, delta: EditDelta, state_hash: str | None, parents: list[int], seconds: float | None):
        self.delta, self.state_hash, self.parents, self.seconds = delta, state_hash, parents, seconds


def _chain(entries: Sequence[LedgerEntry]) -> list[tuple[int, str]]:
    return [(e.id, e.delta_hash) for e in entries]


def _event(db, entry_id: int, action: str, detail: dict) -> None:
    db.execute("INSERT INTO events (entry_id, action, at, detail) VALUES (?, ?, ?, ?)",
               (entry_id, action, now(), json.dumps(detail, sort_keys=True)))


def _measure(lm, requests: list[EditRequest], delta: EditDelta) -> dict:
    """ES/GS/LS (and the other scalar metrics) of ``delta`` on top of the model's current weights."""
    from ..eval import evaluate, locality_reference

    if not requests:
        return {}
    reference = locality_reference(lm.adapter, requests)
    with delta.applied(lm.model):
        metrics, _ = evaluate(lm.adapter, requests, reference)
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float))}
