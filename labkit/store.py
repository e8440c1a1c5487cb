"""The results store: one SQLite file (WAL mode) holding runs, their logged metrics and their events.

Each write is a short transaction on its own connection, so several processes and threads can record runs
at once; SQLite serialises the writers and `busy_timeout` makes them wait instead of failing.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd

from .paths import default_db
from .result import SUMMARY_FIELDS

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    info TEXT NOT NULL,
    summary TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, kind, step);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    time_s REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


def _json(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True)


class Store:
    """Runs recorded in SQLite. `Store()` opens `LABKIT_DB`, else data/labkit.db."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA busy_timeout=60000")
        return db

    def _write(self, sql: str, rows: list[tuple]) -> int | None:
        with closing(self._connect()) as db, db:  # one transaction: all rows or none
            cursor = db.executemany(sql, rows) if len(rows) != 1 else db.execute(sql, rows[0])
            return cursor.lastrowid

    def start_run(self, config: dict, info: dict) -> int:
        return self._write("INSERT INTO runs (started_at, status, config, info) VALUES (?, 'running', ?, ?)",
                           [(time.time(), _json(config), _json(info))])

    def add_metrics(self, run_id: int, kind: str, rows: list[dict]) -> None:
        if rows:
            self._write("INSERT INTO metrics (run_id, kind, step, data) VALUES (?, ?, ?, ?)",
                        [(run_id, kind, int(r["step"]), _json(r)) for r in rows])

    def add_event(self, run_id: int, step: int, time_s: float, kind: str, data: dict) -> None:
        self._write("INSERT INTO events (run_id, step, time_s, kind, data) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, step, time_s, kind, _json(data))])

    def end_run(self, run_id: int, status: str, summary: dict, error: str | None) -> None:
        self._write("UPDATE runs SET ended_at = ?, status = ?, summary = ?, error = ? WHERE id = ?",
                    [(time.time(), status, _json(summary), error, run_id)])

    # ---- reading ----------------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with closing(self._connect()) as db:
            return db.execute(sql, args).fetchall()

    def runs(self, status: str | None = None, last: int | None = None) -> pd.DataFrame:
        """One row per run: id, status, times, every configuration field and the summary figures."""
        sql = "SELECT id, started_at, ended_at, status, config, summary, error, info FROM runs"
        args: tuple = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        sql += " ORDER BY id DESC" + (f" LIMIT {int(last)}" if last else "")
        rows = []
        for run_id, started, ended, st, config, summary, error, info in reversed(self._query(sql, args)):
            figures = json.loads(summary) if summary else {}
            # The configuration first: its device ('auto') gives way to the device the run really used.
            rows.append({**json.loads(config), "id": run_id, "status": st,
                         "started": pd.Timestamp(started, unit="s"),
                         **{k: figures.get(k) for k in SUMMARY_FIELDS if k not in ("status", "error")},
                         "error": error, "device_name": json.loads(info).get("device_name")})
        columns = ["id", "status", "started", *[k for k in SUMMARY_FIELDS if k not in ("status", "error")], "error"]
        return pd.DataFrame(rows, columns=None if rows else columns)

    def metrics(self, run_id: int, kind: str = "logged") -> pd.DataFrame:
        """A run's logged points ('logged') or epoch ends ('epoch'), in step order."""
        rows = self._query("SELECT data FROM metrics WHERE run_id = ? AND kind = ? ORDER BY step, rowid",
                           (run_id, kind))
        return pd.DataFrame([json.loads(r[0]) for r in rows])

    def events(self, run_id: int) -> pd.DataFrame:
        rows = self._query("SELECT step, time_s, kind, data FROM events WHERE run_id = ? ORDER BY rowid", (run_id,))
        return pd.DataFrame([{"step": s, "time_s": t, "kind": k, **json.loads(d)} for s, t, k, d in rows],
                            columns=["step", "time_s", "kind"] if not rows else None)

    def recorder(self) -> "Recorder":
        return Recorder(self)


class Recorder:
    """A training-loop listener that records one run in the store.

    Logged points are buffered and written at each epoch end and at the run's end, so recording costs the
    loop a few writes per epoch, not one per step."""

    def __init__(self, store: Store):
        self.store = store
        self.run_id: int | None = None
        self._buffer: list[dict] = []

    def __call__(self, event) -> None:
        kind = event.kind
        if kind == "run_started":
            self.run_id = self.store.start_run(event.config, event.info)
        elif kind == "logged":
            self._buffer.append({k: v for k, v in vars(event).items() if k != "kind"})
        elif kind == "segment_started":
            self.store.add_event(self.run_id, event.step, event.time_s, "segment",
                                 {"segment": event.segment, "knobs": event.knobs, "label": event.label,
                                  "changes": {k: list(v) for k, v in event.changes.items()}})
        elif kind == "epoch_ended":
            self._flush()
            self.store.add_metrics(self.run_id, "epoch", [{k: v for k, v in vars(event).items() if k != "kind"}])
        elif kind == "run_ended":
            self._flush()
            result = event.result
            result.run_id = self.run_id
            if result.error:
                self.store.add_event(self.run_id, result.steps, result.time_s, "error", {"error": result.error})
            self.store.end_run(self.run_id, result.status, result.to_dict(), result.error)

    def _flush(self) -> None:
        self.store.add_metrics(self.run_id, "logged", self._buffer)
        self._buffer = []
