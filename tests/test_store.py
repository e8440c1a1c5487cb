"""The results store: SQLite in WAL mode, concurrent writers, and what real runs (completed, failed on a NaN,
interrupted) leave in it."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import torch

import labkit
from labkit import RunConfig, RunResult, Store
from labkit.config import field_names
from labkit.events import EpochEnded, Logged, RunEnded, RunStarted, SegmentStarted
from labkit.result import SUMMARY_FIELDS

# Small but real runs on the synthetic data (its cache lives in the checkout's data/ folder).
SMALL = dict(width=8, depth=2, progress=False)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_OFFLINE", "1")
    monkeypatch.setenv("LABKIT_DB", str(tmp_path / "env.db"))


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


def _snapshot(path: Path) -> dict[str, list[tuple]]:
    return {table: _rows(path, f"SELECT * FROM {table} ORDER BY rowid") for table in ("runs", "metrics", "events")}


# ---- schema -----------------------------------------------------------------------------------------------
def test_schema_and_wal_mode(tmp_path):
    store = Store(tmp_path / "sub" / "x.db")
    assert store.path == tmp_path / "sub" / "x.db" and store.path.is_file()
    tables = {name for (name,) in _rows(store.path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "metrics", "events"} <= tables
    columns = {t: [r[1] for r in _rows(store.path, f"PRAGMA table_info({t})")] for t in ("runs", "metrics", "events")}
    assert {"id", "started_at", "ended_at", "status", "config", "info", "summary", "error"} <= set(columns["runs"])
    assert {"run_id", "kind", "step", "data"} <= set(columns["metrics"])
    assert {"run_id", "step", "time_s", "kind", "data"} <= set(columns["events"])
    # WAL is a property of the file: a fresh connection sees it
    assert _rows(store.path, "PRAGMA journal_mode") == [("wal",)]
    Store(store.path)  # opening again keeps what is there
    assert _rows(store.path, "PRAGMA journal_mode") == [("wal",)]


def test_a_store_written_before_runs_kept_their_process_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db, db:  # the round-1 schema, with a run that never ended
        db.executescript("""CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL,
            ended_at REAL, status TEXT NOT NULL, config TEXT NOT NULL, info TEXT NOT NULL, summary TEXT, error TEXT);
            INSERT INTO runs (started_at, status, config, info) VALUES (1.0, 'running', '{}', '{}');""")
    store = Store(path)
    assert {"host", "pid", "process"} <= {r[1] for r in _rows(path, "PRAGMA table_info(runs)")}
    assert _rows(path, "SELECT status FROM runs") == [("running",)]  # no process recorded: cannot tell, left alone
    run_id = store.start_run({}, {})
    assert _rows(path, "SELECT pid FROM runs WHERE id = ?", (run_id,)) == [(os.getpid(),)]


def test_only_runs_whose_process_is_gone_are_marked_interrupted(tmp_path):
    store = Store(tmp_path / "x.db")
    mine = store.start_run({}, {})  # this process: alive
    reused = store.start_run({}, {})  # this pid, but an earlier process that had it (another start time)
    elsewhere = store.start_run({}, {})  # another machine's run: this host cannot see its process
    with closing(sqlite3.connect(store.path)) as db, db:
        db.execute("UPDATE runs SET process = 'an-earlier-boot:1' WHERE id = ?", (reused,))
        db.execute("UPDATE runs SET host = 'another-host', process = 'x:1' WHERE id = ?", (elsewhere,))
    assert Store(store.path).mark_interrupted() == []  # already marked when Store() opened it
    status = dict(_rows(store.path, "SELECT id, status FROM runs"))
    assert status == {mine: "running", reused: "interrupted", elsewhere: "running"}


def test_store_path_from_labkit_db(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DB", str(tmp_path / "from_env.db"))
    assert Store().path == tmp_path / "from_env.db" and (tmp_path / "from_env.db").is_file()
    assert labkit.runs().empty


# ---- recording through the listener, from several processes ------------------------------------------------
LOGGED_PER_RUN = 4


def _record_one(store: Store, seed: int, status: str = "completed", error: str | None = None) -> int:
    """Feed a Recorder the events of one run, as the training loop emits them."""
    config = RunConfig(seed=seed, batch_size=64)
    recorder = store.recorder()
    recorder(RunStarted(config.to_dict(), {"device": "cpu", "device_name": f"writer {seed}"}, LOGGED_PER_RUN))
    recorder(SegmentStarted(0, 0, 0.0, {"batch_size": 64}, {}))
    for step in range(1, LOGGED_PER_RUN + 1):
        recorder(Logged(step=step, epoch=1, segment=0, time_s=0.01 * step, loss=1.0 / step, lr=0.1,
                        batch_size=64, throughput=1000.0 + seed, data_s=0.001, compute_s=0.002, loss_scale=None,
                        skipped_steps=0))
    recorder(EpochEnded(epoch=1, step=LOGGED_PER_RUN, time_s=0.1, segment=0, train_loss=0.5,
                        test_accuracy=(seed % 100) / 100, train_accuracy=0.5, epoch_time_s=0.1))
    recorder(RunEnded(RunResult(status=status, config=config, throughput=1000.0 + seed,
                                accuracy=(seed % 100) / 100, steps=LOGGED_PER_RUN, error=error)))
    return recorder.run_id


def _writer(path: str, worker: int, runs: int, barrier) -> None:
    torch.set_num_threads(1)
    store = Store(path)
    barrier.wait(timeout=120)  # start writing together, so the writers really contend
    for i in range(runs):
        _record_one(store, seed=worker * 1000 + i)


def test_concurrent_writer_processes_lose_nothing(tmp_path, monkeypatch):
    path = tmp_path / "shared.db"
    Store(path)
    workers, runs = 4, 25
    ctx = multiprocessing.get_context("spawn")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the writers
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_writer, args=(str(path), w, runs, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * workers

    total = workers * runs
    assert _rows(path, "SELECT COUNT(*) FROM runs") == [(total,)]
    assert _rows(path, "SELECT status, COUNT(*) FROM runs GROUP BY status") == [("completed", total)]
    assert _rows(path, "SELECT COUNT(*) FROM runs WHERE ended_at IS NULL OR summary IS NULL") == [(0,)]
    seeds = sorted(json.loads(c)["seed"] for (c,) in _rows(path, "SELECT config FROM runs"))
    assert seeds == sorted(w * 1000 + i for w in range(workers) for i in range(runs))
    # every run has all its rows, attached to the right run
    per_run = _rows(path, "SELECT r.id, json_extract(r.config, '$.seed'), "
                          "(SELECT COUNT(*) FROM metrics m WHERE m.run_id = r.id AND m.kind = 'logged'), "
                          "(SELECT COUNT(*) FROM metrics m WHERE m.run_id = r.id AND m.kind = 'epoch'), "
                          "(SELECT COUNT(*) FROM events e WHERE e.run_id = r.id AND e.kind = 'segment') FROM runs r")
    assert all(row[2:] == (LOGGED_PER_RUN, 1, 1) for row in per_run), per_run
    assert _rows(path, "SELECT COUNT(*) FROM metrics") == [(total * (LOGGED_PER_RUN + 1),)]
    table = Store(path).runs()
    assert len(table) == total and (table["throughput"] == 1000.0 + table["seed"]).all()


def test_failed_run_is_stored_and_earlier_runs_are_untouched(tmp_path):
    store = Store(tmp_path / "x.db")
    first = _record_one(store, seed=1)
    second = _record_one(store, seed=2)
    before = _snapshot(store.path)
    failed = _record_one(store, seed=3, status="failed", error="loss became nan at step 3")
    after = _snapshot(store.path)
    for table in before:
        assert after[table][:len(before[table])] == before[table]  # byte-for-byte the same rows
    assert _rows(store.path, "SELECT id, status, error FROM runs ORDER BY id") == [
        (first, "completed", None), (second, "completed", None), (failed, "failed", "loss became nan at step 3")]
    assert store.events(failed)["kind"].tolist() == ["segment", "error"]
    assert store.events(failed)["error"].iloc[-1] == "loss became nan at step 3"


def test_runs_filters_by_status_and_last(tmp_path):
    store = Store(tmp_path / "x.db")
    ids = [_record_one(store, seed=s) for s in range(3)] + [_record_one(store, seed=9, status="failed", error="x")]
    assert labkit.runs(store)["id"].tolist() == ids
    assert labkit.runs(store, status="failed")["id"].tolist() == [ids[3]]
    assert labkit.runs(store, last=2)["id"].tolist() == ids[2:]
    assert labkit.runs(str(store.path), status="completed")["id"].tolist() == ids[:3]
    assert labkit.runs(store, status="stopped").empty


# ---- real runs --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store") / "runs.db")
    result = labkit.run(train_size=512, test_size=256, epochs=1, batch_size=128, store=store, **SMALL)
    return store, result


def test_real_run_is_recorded(completed_run):
    store, result = completed_run
    assert result.status == "completed", result.error
    assert result.run_id is not None and result.steps == 512 // 128
    row = _rows(store.path, "SELECT status, error, ended_at > started_at, summary FROM runs WHERE id = ?",
                (result.run_id,))
    assert row[0][:3] == ("completed", None, 1)
    summary = json.loads(row[0][3])
    assert summary["accuracy"] == pytest.approx(result.accuracy) and summary["steps"] == 4
    logged = store.metrics(result.run_id)
    assert len(logged) == len(result.history) >= 1
    assert logged["step"].tolist() == result.history["step"].tolist()
    assert logged["loss"].tolist() == pytest.approx(result.history["loss"].tolist())
    epochs = store.metrics(result.run_id, "epoch")
    assert epochs["epoch"].tolist() == [1] and epochs["test_accuracy"].iloc[0] == pytest.approx(result.accuracy)
    events = store.events(result.run_id)
    assert events["kind"].tolist() == ["segment"] and events["label"].iloc[0] == "start"
    assert events["knobs"].iloc[0]["batch_size"] == 128


def test_runs_table_has_config_fields_and_summary_figures(completed_run):
    store, result = completed_run
    table = labkit.runs(store)
    assert set(field_names()) <= set(table.columns)
    assert set(SUMMARY_FIELDS) <= set(table.columns)
    row = table[table["id"] == result.run_id].iloc[0]
    assert row["status"] == "completed" and row["batch_size"] == 128 and row["train_size"] == 512
    assert row["accuracy"] == pytest.approx(result.accuracy) and row["params"] == result.params
    assert row["flops_per_image"] == result.flops_per_image and row["steps"] == 4
    assert isinstance(row["device_name"], str)


NAN = dict(optimizer="sgd", lr=10.0, weight_decay=1.0, momentum=0.9, schedule="constant", batch_size=16,
           train_size=512, test_size=64, epochs=1, max_steps=30, log_every=1, timing_warmup=0)


def test_nan_loss_fails_the_run_with_the_step_and_a_hint(tmp_path):
    """lr=10 with weight decay 1 multiplies the weights by about -9 a step: the loss overflows to NaN within
    ~15 steps (checked: step 14 for seeds 0 and 1 on this CPU)."""
    store = Store(tmp_path / "x.db")
    ok = labkit.run(train_size=128, test_size=64, epochs=1, batch_size=32, store=store, **SMALL)
    assert ok.status == "completed"
    before = _snapshot(store.path)

    bad = labkit.run(store=store, **NAN, **SMALL)
    assert bad.status == "failed"
    match = re.search(r"loss became (nan|inf|-inf) at step (\d+)", bad.error)
    assert match, bad.error
    step = int(match.group(2))
    assert step == bad.steps < NAN["max_steps"]  # logged every step: caught at the step it happened
    assert "lower lr" in bad.error and "optimizer='sgd'" in bad.error
    assert len(bad.history) == step - 1 and bad.history["loss"].notna().all()  # the finite steps before it
    assert bad.accuracy is None  # it never reached an evaluation

    after = _snapshot(store.path)
    for table in before:
        assert after[table][:len(before[table])] == before[table]
    assert _rows(store.path, "SELECT status, error FROM runs WHERE id = ?", (bad.run_id,)) == [("failed", bad.error)]
    assert store.events(bad.run_id)["kind"].tolist() == ["segment", "error"]
    assert len(store.metrics(bad.run_id)) == step - 1

    # the process is still usable: the next run trains normally
    again = labkit.run(train_size=128, test_size=64, epochs=1, batch_size=32, store=store, **SMALL)
    assert again.status == "completed" and again.error is None and 0.0 <= again.accuracy <= 1.0
    assert labkit.runs(store)["status"].tolist() == ["completed", "failed", "completed"]


def test_keyboard_interrupt_from_a_listener_is_stored_as_stopped_and_raised(tmp_path):
    store = Store(tmp_path / "x.db")
    seen = []

    def interrupt_on_third_logged(event):
        seen.append(event.kind)
        if event.kind == "logged" and seen.count("logged") == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        labkit.run(train_size=256, test_size=64, epochs=2, batch_size=32, log_every=1, timing_warmup=0,
                   store=store, listeners=[interrupt_on_third_logged], **SMALL)
    assert seen[-1] == "run_ended" and seen.count("logged") == 3 and "epoch_ended" not in seen
    rows = _rows(store.path, "SELECT id, status, error, ended_at IS NOT NULL, summary FROM runs")
    assert len(rows) == 1
    run_id, status, error, ended, summary = rows[0]
    assert (status, ended) == ("stopped", 1) and "KeyboardInterrupt" in error
    assert json.loads(summary)["steps"] == 3
    assert store.metrics(run_id)["step"].tolist() == [1, 2, 3]

    # and the next run in this process completes
    again = labkit.run(train_size=128, test_size=64, epochs=1, batch_size=64, store=store, **SMALL)
    assert again.status == "completed"
    assert labkit.runs(store)["status"].tolist() == ["stopped", "completed"]


def test_runs_table_keeps_the_device_the_run_trained_on(completed_run):
    store, result = completed_run
    assert result.device == "cpu" or result.device.startswith(("cuda", "mps"))
    row = labkit.runs(store).set_index("id").loc[result.run_id]
    assert (row.astype(str) == result.device).any(), row.to_dict()
