"""The command line, run as a user runs it: `python -m labkit ...` and the `labkit` console script."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
import torch

import labkit
from labkit import Store

PYTHON_M = [sys.executable, "-m", "labkit"]
SCRIPT = Path(sys.executable).parent / "labkit"
ENTRIES = {"python -m labkit": PYTHON_M, "labkit script": [str(SCRIPT)]}
TIMEOUT = 300


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LABKIT_OFFLINE="1", LABKIT_DB=str(tmp_path / "env.db"), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", **extra)  # one thread: a small shared machine runs it 10x faster
    return env


def _run(args: list[str], env: dict[str, str], entry: str = "python -m labkit") -> subprocess.CompletedProcess:
    return subprocess.run(ENTRIES[entry] + args, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def test_console_script_is_installed():
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)


# ---- quick commands: bad input, help --------------------------------------------------------------------------
BAD = {  # flags -> what the one line must say: the field and the value, and (part of) what is allowed
    "batch-size 0": (["--batch-size", "0"], "batch_size=0", ">= 1"),
    "amp fp8": (["--amp", "fp8"], "amp='fp8'", "'bf16'"),
    "prune 1.0": (["--prune", "1.0"], "prune=1.0", "0.95"),
    "optimizer sgdx": (["--optimizer", "sgdx"], "optimizer='sgdx'", "'lamb'"),
    "augment foo": (["--augment", "foo"], "augment='foo'", "'flip-crop'"),
    # no GPU here: 'cuda'; where one is visible, a GPU index that does not exist
    "device cuda": ((["--device", "cuda"], "device='cuda'", "'cpu'") if not torch.cuda.is_available()
                    else (["--device", "cuda:99"], "device='cuda:99'", "visible")),
    "missing folder": (["--dataset", "imagefolder:/does/not/exist"], "dataset='imagefolder:/does/not/exist'",
                       "does not exist"),
}
QUICK = {  # name -> (entry point, arguments); the bad inputs alternate between the two entry points
    **{name: (list(ENTRIES)[i % 2], ["run", "--quiet", *flags]) for i, (name, (flags, _, _)) in enumerate(BAD.items())},
    "help": ("python -m labkit", ["--help"]),
    "run help": ("labkit script", ["run", "--help"]),
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Every quick command (each starts Python and torch), a few at a time."""
    tmp = tmp_path_factory.mktemp("quick")
    # LABKIT_DATA in tmp: a command that wrongly went on to train would find no data there
    env = _env(tmp, LABKIT_DATA=str(tmp / "data"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, args, env, entry) for name, (entry, args) in QUICK.items()}
        results = {name: future.result() for name, future in futures.items()}
    assert not (tmp / "env.db").exists() or Store(tmp / "env.db").runs().empty  # nothing ran
    return results


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_exit_2(quick, name):
    proc = quick[name]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (QUICK[name], proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(lines) == 1, proc.stderr
    _, field_and_value, allowed = BAD[name]
    assert lines[0].startswith("labkit: error: ")
    assert field_and_value in lines[0] and allowed in lines[0], lines[0]


def test_unparsable_number_is_a_usage_error(capsys):
    """argparse's own check, in this process (the same `main` the console script calls)."""
    from labkit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--batch-size", "abc"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("argument --batch-size: 'abc' is not an integer")


def test_help(quick):
    top, run_help = quick["help"], quick["run help"]
    assert top.returncode == 0
    commands = re.search(r"\{([\w,-]+)\}", top.stdout)
    assert commands and {"run", "runs"} <= set(commands.group(1).split(",")), top.stdout
    assert run_help.returncode == 0
    for flag in ("--dataset", "--model", "--amp", "--batch-size", "--augment", "--prune", "--prune-method",
                 "--optimizer", "--lr", "--weight-decay", "--epochs", "--max-steps", "--train-size", "--test-size",
                 "--seed", "--device", "--loader", "--db", "--no-store", "--quiet"):
        assert flag in run_help.stdout, flag
    assert not top.stderr and not run_help.stderr


# ---- a real run, then `labkit runs` -----------------------------------------------------------------------------
def _summary(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^(\S+(?: \S+)*?)\s{2,}(.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_tiny_run_prints_a_summary_and_is_listed(tmp_path):
    db = tmp_path / "cli.db"
    proc = _run(["run", "--train-size", "512", "--test-size", "256", "--epochs", "1", "--batch-size", "128",
                 "--width", "8", "--timing-warmup", "1", "--db", str(db)], _env(tmp_path), "labkit script")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = _summary(proc.stdout)
    assert summary["status"] == "completed" and summary["device"] == "cpu" and summary["precision"] == "fp32"
    throughput = re.fullmatch(r"([\d,]+) img/s", summary["throughput"])
    assert throughput and float(throughput.group(1).replace(",", "")) > 0
    accuracy = re.fullmatch(r"(\d+\.\d\d)%", summary["test accuracy"])
    assert accuracy, summary["test accuracy"]
    assert summary["time"].endswith("(4 steps)")
    run_id = int(summary["run id"])

    stored = Store(db).runs()
    assert stored["id"].tolist() == [run_id] and stored["status"].tolist() == ["completed"]
    assert float(accuracy.group(1)) / 100 == pytest.approx(stored["accuracy"].iloc[0], abs=1e-4)  # printed to 0.01%
    assert not (tmp_path / "env.db").exists()  # --db wins over LABKIT_DB

    listed = _run(["runs", "--db", str(db)], _env(tmp_path))
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split()[:3] == ["id", "status", "started"] and "throughput" in header and "accuracy" in header
    columns = header.split()
    cells = rows[0].split()  # "started" is a date and a time: one more cell than header words before "precision"
    assert cells[columns.index("precision") + 1] == "fp32" and cells[columns.index("grad_accum") + 1] == "1"
    assert cells[columns.index("compile") + 1] == "off" and cells[columns.index("channels_last") + 1] == "False"
    assert len(rows) == 1
    cells = rows[0].split()
    assert cells[0] == str(run_id) and cells[1] == "completed"
    assert f"{stored['accuracy'].iloc[0]:.3f}" in cells and "128" in cells


LONG_RUN = ["run", "--quiet", "--train-size", "512", "--test-size", "64", "--batch-size", "16", "--epochs", "1000",
            "--width", "4", "--depth", "1"]


def _start_training(db: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    """Start a long CLI run and return once it has finished an epoch (so it is inside the training loop)."""
    proc = subprocess.Popen(PYTHON_M + LONG_RUN + ["--db", str(db)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)
    return _wait_for_an_epoch(db, proc)


def _wait_for_an_epoch(db: Path, proc: subprocess.Popen) -> subprocess.Popen:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            with closing(sqlite3.connect(db, timeout=30)) as conn:
                try:
                    if conn.execute("SELECT COUNT(*) FROM metrics JOIN runs ON runs.id = metrics.run_id "
                                    "WHERE kind = 'epoch' AND status = 'running'").fetchone()[0]:
                        return proc
                except sqlite3.OperationalError:  # the file is there, its tables not yet
                    pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the run did not finish an epoch: {proc.communicate()}")


def _ignore_sigint():
    # What a shell does to a job it starts in the background (`cmd &`), and what nohup inherits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig, code, inherited_ignore", [(signal.SIGINT, 130, False), (signal.SIGINT, 130, True),
                                                         (signal.SIGTERM, 143, False)],
                         ids=["SIGINT", "SIGINT-inherited-as-ignored", "SIGTERM"])
def test_a_signal_stops_the_run_records_it_and_exits_with_its_code(tmp_path, sig, code, inherited_ignore):
    db = tmp_path / "cli.db"
    proc = _start_training(db, _env(tmp_path), preexec_fn=_ignore_sigint if inherited_ignore else None)
    try:
        # Opened by another process while the run trains: a live run is never taken for an interrupted one.
        assert Store(db).runs()["status"].tolist() == ["running"]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"labkit: stopped by {name}; a run in progress is recorded as stopped"]
    runs = Store(db).runs()
    assert runs["status"].tolist() == ["stopped"] and runs["error"].iloc[0] == f"interrupted ({name})"
    assert runs["steps"].iloc[0] >= 32  # at least the first epoch (512 // 16 steps)


def test_a_run_killed_without_a_word_shows_as_interrupted(tmp_path):
    db = tmp_path / "cli.db"
    done = labkit.run(train_size=128, test_size=64, batch_size=32, width=4, depth=1, epochs=1, progress=False,
                      store=Store(db))
    proc = _start_training(db, _env(tmp_path))
    pid = proc.pid
    proc.kill()  # SIGKILL: no handler runs, nothing is written
    proc.communicate(timeout=TIMEOUT)
    with closing(sqlite3.connect(db)) as conn:  # nothing else has looked at the store yet
        assert conn.execute("SELECT status FROM runs ORDER BY id").fetchall() == [("completed",), ("running",)]

    runs = Store(db).runs()  # opening the store notices the dead process
    assert runs["status"].tolist() == ["completed", "interrupted"]
    assert f"pid {pid}" in runs["error"].iloc[1] and "ended without finishing" in runs["error"].iloc[1]
    assert runs.iloc[0]["accuracy"] == pytest.approx(done.accuracy)  # the earlier run is untouched
    store = Store(db)
    assert len(store.metrics(int(runs["id"].iloc[1]), "epoch")) >= 1  # what it recorded before is kept
    assert store.events(int(runs["id"].iloc[1]))["kind"].tolist()[-1] == "error"
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    listed = _run(["runs", "--db", str(db), "--status", "interrupted"], _env(tmp_path))
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 2, listed.stdout


def test_sigterm_stops_labkit_run_called_from_python(tmp_path):
    """A script (or a batch job) that calls labkit.run: SIGTERM ends the run as stopped, then the script."""
    db = tmp_path / "api.db"
    script = ("import labkit; labkit.run(train_size=512, test_size=64, batch_size=16, epochs=1000, width=4, depth=1, "
              f"progress=False, store={str(db)!r})")
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_an_epoch(db, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "labkit.signals.Interrupted: stopped by SIGTERM" in err  # it goes on
    runs = Store(db).runs()
    assert runs["status"].tolist() == ["stopped"] and runs["error"].tolist() == ["interrupted (SIGTERM)"]


def test_every_knob_is_a_flag_parsed_as_declared(capsys):
    """Flags come from the declarations: on/off for a boolean knob, integers, choices, 'none' where allowed."""
    from labkit.cli import build_parser

    args = build_parser().parse_args(["run", "--channels-last", "on", "--grad-accum", "4", "--compile", "default",
                                      "--optimizer", "adafactor", "--lr", "none"])
    assert (args.channels_last, args.grad_accum, args.compile, args.optimizer, args.lr) == (True, 4, "default",
                                                                                           "adafactor", None)
    assert build_parser().parse_args(["run", "--channels-last", "off"]).channels_last is False
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "--channels-last", "maybe"])
    assert exit_info.value.code == 2 and "'maybe' is not on/off" in capsys.readouterr().err
    assert labkit.cli.main(["run", "--compile", "fast", "--no-store"]) == 2
    assert "compile='fast' is not allowed: use one of 'off', 'default'" in capsys.readouterr().err


def test_knobs_prints_the_declared_table(capsys):
    assert labkit.cli.main(["knobs"]) == 0
    table = capsys.readouterr().out
    assert "| `grad_accum` | `1` | an integer >= 1 and <= 1024 | next step:" in table
    compile_row = next(row for row in table.splitlines() if row.startswith("| `compile` |"))
    assert "| `'off'` |" in compile_row and "| no |" in compile_row  # not live: refused mid-run
