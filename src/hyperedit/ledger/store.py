"""The ledger's SQLite database: schema, versioning and short transactions.

WAL mode lets readers (``list``, a serving process) run while one writer commits; every write is
one ``BEGIN IMMEDIATE`` transaction, so concurrent writers queue on SQLite's lock (``busy_timeout``)
instead of failing or interleaving. A connection is opened per operation, which keeps the store
safe to use from several threads and processes at once.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import sqlite3
import time
from pathlib import Path

from ..errors import HyperEditError

DB_FILE = "ledger.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS workspace (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'reverted')),
    source TEXT NOT NULL CHECK (source IN ('computed', 'imported')),
    editor TEXT,
    options TEXT NOT NULL,
    checkpoint TEXT,
    checkpoint_hash TEXT,
    base_model TEXT NOT NULL,
    requests TEXT NOT NULL,
    metrics TEXT NOT NULL,
    delta_hash TEXT NOT NULL,
    delta_meta TEXT NOT NULL,
    state_hash TEXT,
    parents TEXT NOT NULL,
    edit_time_s REAL,
    reverted_at TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id INTEGER NOT NULL REFERENCES entries(id),
    action TEXT NOT NULL,
    at TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_status ON entries(status, id);
"""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _set_wal(db: sqlite3.Connection) -> None:
    """Switch a new database to WAL. SQLite answers this pragma "database is locked" at once, without
    waiting for ``busy_timeout``, while another process creates the same workspace: retry until the
    timeout (a database already in WAL mode needs no lock)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Store:
    """Access to ``DB_FILE`` inside a workspace directory."""

    def __init__(self, path: Path):
        self.path = path
        self._init()
        self._check_version()

    def _init(self) -> None:
        """Create the schema once (idempotent, safe when several processes open a new workspace)."""
        try:
            db = self.connect()
        except sqlite3.DatabaseError as exc:
            raise HyperEditError(f"{self.path}: not a usable ledger database ({exc})") from None
        try:
            _set_wal(db)
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            if db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise HyperEditError(f"{self.path}: not a usable ledger database ({exc})") from exc
        finally:
            db.close()

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = FULL")
        return db

    @contextlib.contextmanager
    def read(self):
        db = self.connect()
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def write(self):
        """One immediate transaction: committed on success, rolled back on any error."""
        db = self.connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _check_version(self) -> None:
        with self.read() as db:
            row = db.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise HyperEditError(f"{self.path}: ledger database has no schema version")
        if row["version"] != SCHEMA_VERSION:
            raise HyperEditError(f"{self.path}: ledger schema version {row['version']} is not supported "
                                 f"(this hyperedit reads version {SCHEMA_VERSION})")
