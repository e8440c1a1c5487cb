"""The results store: one SQLite file (WAL mode) holding runs, their logged metrics and their events.

Each write is a short transaction on its own connection, so several processes and threads can record runs
at once; SQLite serialises the writers and `busy_timeout` makes them wait instead of failing.

Each run records the host and process that trains it. A process that dies without a word (kill -9, a crash,
power loss) cannot mark its run; the next time the store is opened on that host, a "running" run whose process
is gone is marked "interrupted". A process is recognised by its id and start time (and the boot it belongs
to), so a reused process id is not mistaken for the run's; runs of other hosts are left as they are.
"""
from __future__ import annotations

import json
import os
import socket
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
    error TEXT,
    host TEXT,
    pid INTEGER,
    process TEXT,
    run_kind TEXT NOT NULL DEFAULT 'train'
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


def process_identity(pid: int) -> str:
    """What tells this process apart from a later one with the same id: the boot and the process's start time
    (Linux /proc); "" where they cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name
        return f"{boot}:{start}"
    except (OSError, IndexError):
        return ""


def _process_alive(pid: int | None, process: str | None) -> bool:
    if pid is None:  # recorded before runs kept their process: cannot tell, so never marked
        return True
    if process:
        return process_identity(pid) == process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _json(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True)


class Store:
    """Runs recorded in SQLite. `Store()` opens `LABKIT_DB`, else data/labkit.db."""

    @classmethod
    def of(cls, store: "Store | str | Path | None") -> "Store":
        """The store itself, or one opened at a path (None: the default)."""
        return store if isinstance(store, Store) else cls(store)

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            known = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            for column, kind in (("host", "TEXT"), ("pid", "INTEGER"), ("process", "TEXT"),
                                 ("run_kind", "TEXT NOT NULL DEFAULT 'train'")):
                if column not in known:  # a store written before runs recorded their process (or kind)
                    try:
                        with db:
                            db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError as exc:  # another process added it first
                        if "duplicate column" not in str(exc):
                            raise
        self.mark_interrupted()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA busy_timeout=60000")
        return db

    def _write(self, sql: str, rows: list[tuple]) -> int | None:
        with closing(self._connect()) as db, db:  # one transaction: all rows or none
            cursor = db.executemany(sql, rows) if len(rows) != 1 else db.execute(sql, rows[0])
            return cursor.lastrowid

    def start_run(self, config: dict, info: dict, kind: str = "train") -> int:
        """A new run, "running"; `kind` is "train", or a finder's ("find_lr", "find_batch_size")."""
        pid = os.getpid()
        return self._write("INSERT INTO runs (started_at, status, config, info, host, pid, process, run_kind) "
                           "VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
                           [(time.time(), _json(config), _json(info), socket.gethostname(), pid,
                             process_identity(pid), kind)])

    def mark_interrupted(self) -> list[int]:
        """Mark as "interrupted" the runs of this host still "running" whose process is gone; returns their ids."""
        host = socket.gethostname()
        rows = self._query("SELECT id, pid, process FROM runs WHERE status = 'running' AND host = ?", (host,))
        dead = [(run_id, pid) for run_id, pid, process in rows if not _process_alive(pid, process)]
        for run_id, pid in dead:
            error = (f"interrupted: its process (pid {pid} on {host}) ended without finishing the run (killed, "
                     "crashed or the machine stopped); what it had recorded is kept")
            self._write("UPDATE runs SET status = 'interrupted', ended_at = ?, error = ? "
                        "WHERE id = ? AND status = 'running'", [(time.time(), error, run_id)])
            self._write("INSERT INTO events (run_id, step, time_s, kind, data) "
                        "SELECT ?, COALESCE(MAX(step), 0), 0.0, 'error', ? FROM metrics WHERE run_id = ?",
                        [(run_id, _json({"error": error}), run_id)])
        return [run_id for run_id, _ in dead]

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

    def correct_end(self, run_id: int, status: str, error: str | None) -> None:
        """Set a run's final status and error when they differ from what was recorded (a distributed run: a
        rank other than the recording one failed first, or the recording one died); the figures stay."""
        rows = self._query("SELECT status, error FROM runs WHERE id = ?", (run_id,))
        if not rows or tuple(rows[0]) == (status, error):
            return
        self._write("UPDATE runs SET status = ?, error = ?, ended_at = COALESCE(ended_at, ?) WHERE id = ?",
                    [(status, error, time.time(), run_id)])
        if error:
            self._write("INSERT INTO events (run_id, step, time_s, kind, data) "
                        "SELECT ?, COALESCE(MAX(step), 0), 0.0, 'error', ? FROM metrics WHERE run_id = ?",
                        [(run_id, _json({"error": error}), run_id)])

    # ---- reading ----------------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with closing(self._connect()) as db:
            return db.execute(sql, args).fetchall()

    def runs(self, status: str | None = None, last: int | None = None, kind: str | None = "train") -> pd.DataFrame:
        """One row per run: id, status, times, every configuration field and the summary figures. `kind`:
        training runs by default; "find_lr" or "find_batch_size" for the finders' (their figures are under
        "summary"); None for all."""
        sql = "SELECT id, started_at, ended_at, status, config, summary, error, info, run_kind FROM runs"
        where = [(c, v) for c, v in (("status", status), ("run_kind", kind)) if v is not None]
        args: tuple = tuple(v for _, v in where)
        if where:
            sql += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
        sql += " ORDER BY id DESC" + (f" LIMIT {int(last)}" if last else "")
        rows = []
        for run_id, started, ended, st, config, summary, error, info, run_kind in reversed(self._query(sql, args)):
            figures = json.loads(summary) if summary else {}
            # The configuration first: its device ('auto') gives way to the device the run really used.
            info = json.loads(info)
            rows.append({**json.loads(config), "id": run_id, "status": st,
                         "started": pd.Timestamp(started, unit="s"),
                         **{k: figures.get(k) for k in SUMMARY_FIELDS if k not in ("status", "error")},
                         "error": error, "device_name": info.get("device_name"), "kind": run_kind,
                         "study": info.get("study"), "trial": info.get("trial"),
                         **({"summary": figures} if run_kind != "train" else {})})
        columns = ["id", "status", "started", *[k for k in SUMMARY_FIELDS if k not in ("status", "error")], "error",
                   "study", "trial"]
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

    def run_record(self, run_id: int) -> dict[str, Any] | None:
        """One run's record (status, kind, configuration, info, summary, error), or None if there is none."""
        rows = self._query("SELECT status, run_kind, config, info, summary, error FROM runs WHERE id = ?", (run_id,))
        if not rows:
            return None
        status, kind, config, info, summary, error = rows[0]
        return {"id": run_id, "status": status, "kind": kind, "config": json.loads(config), "info": json.loads(info),
                "summary": json.loads(summary) if summary else {}, "error": error}

    def checkpoint_path(self, run_id: int) -> Path:
        """Where a run's checkpoint goes: beside the store, named after it and the run."""
        return self.path.parent / "checkpoints" / f"{self.path.stem}-run-{run_id}.pt"

    def recorder(self, tags: dict[str, Any] | None = None) -> "Recorder":
        return Recorder(self, tags)


class Recorder:
    """A training-loop listener that records one run in the store.

    Logged points are buffered and written at each epoch end and at the run's end, so recording costs the
    loop a few writes per epoch, not one per step."""

    def __init__(self, store: Store, tags: dict[str, Any] | None = None):
        self.store = store
        self.tags = dict(tags or {})  # recorded with the run's info: a tuning trial's study and trial number
        self.run_id: int | None = None
        self._buffer: list[dict] = []

    def __call__(self, event) -> None:
        kind = event.kind
        if kind == "run_started":
            self.run_id = self.store.start_run(event.config, {**event.info, **self.tags})
        elif kind == "logged":
            self._buffer.append({k: v for k, v in vars(event).items() if k != "kind"})
        elif kind == "segment_started":
            self.store.add_event(self.run_id, event.step, event.time_s, "segment",
                                 {"segment": event.segment, "knobs": event.knobs, "label": event.label,
                                  "changes": {k: list(v) for k, v in event.changes.items()}})
        elif kind == "change_dropped":
            self.store.add_event(self.run_id, event.step, event.time_s, "change_dropped",
                                 {"changes": event.changes, "reason": event.reason})
        elif kind == "epoch_ended":
            self._flush()
            self.store.add_metrics(self.run_id, "epoch", [{k: v for k, v in vars(event).items() if k != "kind"}])
        elif kind == "run_ended":
            self._flush()
            result = event.result
            result.run_id = self.run_id
            if event.checkpoint is not None:  # save=True: the weights go beside the store, the runs table says where
                from . import checkpoints  # torch: only a run that saves needs it here

                path = self.store.checkpoint_path(self.run_id)
                try:
                    result.checkpoint_bytes = checkpoints.write(path, event.checkpoint)
                    result.checkpoint = str(path)
                except OSError as exc:  # a full disk: the run and its figures are still recorded
                    self.store.add_event(self.run_id, result.steps, result.time_s, "error",
                                         {"error": f"checkpoint not saved to {path}: {exc}"})
            if result.error:
                self.store.add_event(self.run_id, result.steps, result.time_s, "error", {"error": result.error})
            self.store.end_run(self.run_id, result.status, result.to_dict(), result.error)

    def _flush(self) -> None:
        self.store.add_metrics(self.run_id, "logged", self._buffer)
        self._buffer = []
