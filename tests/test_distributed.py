"""Distributed data parallel (labkit.dist): torchrun processes on the CPU (gloo), watched and steered from here.

Each test that launches processes costs 10-15 s on 2 cores (torchrun and two Pythons importing torch), so
each one checks as much as one run can show."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import labkit
from labkit import cli
from labkit.config import RunConfig
from labkit.data import DeviceBatches, Split
from labkit.dist.launch import Launcher, launch_commands
from labkit.dist.ranks import Ranks
from labkit.events import EpochEnded, RunEnded, from_message, to_message
from labkit.result import RunResult
from labkit.store import Store
from support import wait_until

# Plain SGD, no augmentation, GroupNorm (independent of how the batch is split), one logged point per step.
EXACT = dict(train_size=1024, test_size=256, epochs=1, batch_size=128, norm="group", optimizer="sgd",
             augment="none", log_every=1, timing_warmup=0, seed=5)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's child with RANK=rank (Linux /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def _group_is_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---- with processes ------------------------------------------------------------------------------------
def test_two_processes_from_the_cli_take_the_steps_of_one_and_are_stored_once(tmp_path, capsys):
    db = tmp_path / "runs.db"
    one = labkit.run(**EXACT, store=False, progress=False)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in EXACT.items()]
    assert cli.main(["run", "--nproc", "2", "--db", str(db), "--quiet", *flags]) == 0
    out = capsys.readouterr().out
    assert "rank 0" in out and "rank 1" in out and "gradient all-reduce" in out  # each rank's times

    runs = Store(db).runs()
    assert len(runs) == 1 and runs.iloc[0]["nproc"] == 2 and runs.iloc[0]["status"] == "completed"
    two = Store(db).metrics(int(runs.iloc[0]["id"]))
    assert len(two) == len(one.history) == 1024 // 128
    # The global batch's loss, step by step: the same up to float summation order.
    assert two["loss"].tolist() == pytest.approx(one.history["loss"].tolist(), rel=1e-5)
    # Sharded evaluation adds up to the whole test set; weights equal to rounding may flip one borderline image.
    assert abs(runs.iloc[0]["accuracy"] - one.accuracy) <= 1 / 256
    summary = json.loads(Store(db)._query("SELECT summary FROM runs")[0][0])
    assert [r["rank"] for r in summary["ranks"]] == [0, 1] and all(r["compute_s"] > 0 for r in summary["ranks"])


def test_the_panel_starts_a_distributed_run_which_streams_takes_changes_on_every_rank_at_one_step_and_stops(
        tmp_path):
    store = Store(tmp_path / "runs.db")
    lab = labkit.Lab(RunConfig(nproc=2, train_size=4096, test_size=256, epochs=4, batch_size=128, norm="group",
                               log_every=2, timing_warmup=1), store=store)
    assert "nproc" in lab.controls  # "nproc (next run)"
    live = lab.start()
    assert isinstance(live.trainer, Launcher), lab.last_error
    wait_until(lambda: live.step >= 4, 120, "the first steps")
    live.set(lr=0.02, batch_size=64)
    assert live.wait_measured(60)
    assert (live.knobs.lr, live.knobs.batch_size) == (0.02, 64)
    assert not lab.set_control("prune", 0.3) and "cannot change on a distributed run" in lab.last_error
    with pytest.raises(RuntimeError, match="the finders measure one process"):
        live.find_lr()

    live.pause()
    time.sleep(1.0)  # the ranks pause together at the next step boundary and log the step they paused at
    paused_at = live.step
    time.sleep(1.0)
    assert live.step == paused_at and live.status == "paused"
    live.resume()
    lab.stop()
    result = lab.wait(60)
    assert result.status == "stopped" and result.steps < 4 * 4096 // 128

    # Every rank ended with the same weights: each applied the change (and the stop) at the same step.
    ended = live.trainer.ended
    assert sorted(ended) == [0, 1] and ended[0]["weights_sum"] == ended[1]["weights_sum"]
    events = store.events(live.run_id)
    changed_at = events[events.kind == "segment"]["step"].tolist()
    assert len(changed_at) == 2 and changed_at[0] == 0 and paused_at >= changed_at[1] >= 4
    assert events[events.kind == "segment"]["label"].iloc[1] == "batch_size: 128 -> 64, lr: None -> 0.02"
    assert store.runs()["status"].tolist() == ["stopped"]  # stored once, by rank 0
    # The panel saw it live: the charts' points and the change's label, the status line's end.
    assert len(lab.dashboard.loss.x) >= 3 and [c[1] for c in lab.dashboard.changes] == [
        "batch_size: 128 -> 64, lr: None -> 0.02"]
    assert "stopped" in lab.status.value
    assert _group_is_gone(live.trainer.process.pid)


def test_a_killed_rank_fails_the_run_with_its_name_and_leaves_no_process(tmp_path):
    store = Store(tmp_path / "runs.db")
    live = labkit.LiveRun(nproc=2, train_size=4096, test_size=256, epochs=50, batch_size=128, norm="group",
                          store=store).start()
    wait_until(lambda: live.step >= 2, 120, "the first steps")
    os.kill(_rank_pid(live.trainer.process.pid, rank=1), signal.SIGKILL)
    killed_at = time.monotonic()
    result = live.wait(60)
    assert time.monotonic() - killed_at < 30
    assert result.status == "failed" and "rank 1 was killed by SIGKILL" in result.error
    stored = store.runs().iloc[-1]
    assert (stored["status"], stored["error"]) == ("failed", result.error)
    assert store.events(int(stored["id"]))["kind"].iloc[-1] == "error"
    assert _group_is_gone(live.trainer.process.pid)


def test_ctrl_c_in_the_cli_stops_every_rank_and_records_the_run_as_stopped(tmp_path):
    db = tmp_path / "runs.db"
    cli_process = subprocess.Popen([sys.executable, "-m", "labkit", "run", "--nproc", "2", "--db", str(db), "--quiet",
                                    "--train-size", "4096", "--test-size", "256", "--epochs", "50", "--norm", "group"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: db.exists() and not Store(db).runs().empty, 120, "the run to start")
    time.sleep(1.0)
    cli_process.send_signal(signal.SIGINT)
    out, err = cli_process.communicate(timeout=60)
    assert cli_process.returncode == 130, err
    assert "stopped by SIGINT" in err
    stored = Store(db).runs().iloc[-1]
    assert (stored["status"], stored["error"]) == ("stopped", "interrupted (SIGINT)")
    leftover = [pid for pid in filter(str.isdigit, os.listdir("/proc"))
                if _reads(f"/proc/{pid}/environ").count(f"LABKIT_RUN_STORE={db}".encode())]
    assert leftover == []


def _reads(path: str) -> bytes:
    try:
        return open(path, "rb").read()
    except OSError:
        return b""


# ---- without processes ---------------------------------------------------------------------------------
def test_settings_that_cannot_split_or_change_across_processes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="use a multiple of 3"):
        RunConfig(nproc=3, batch_size=256).validate()
    with pytest.raises(ValueError, match="prune_at=0"):
        RunConfig(nproc=2, prune=0.5, prune_at=0.5).validate()
    with pytest.raises(ValueError, match="each process takes its own device"):
        RunConfig(nproc=2, device="cuda:1").validate()
    launcher = Launcher(RunConfig(nproc=2, batch_size=128))
    with pytest.raises(ValueError, match="multiple of 2"):
        launcher.check_change({"batch_size": 63})
    with pytest.raises(ValueError, match="cannot change on a distributed run"):
        launcher.check_change({"channels_last": True})
    assert launcher.check_change({"lr": 0.1, "amp": "bf16"}).lr == 0.1


def test_each_rank_takes_its_own_equal_share_of_every_batch_and_of_the_test_set():
    split = Split(torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1), torch.arange(40))
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - every rank draws the same order
    whole = [y for _, y in DeviceBatches(split, torch.device("cpu")).train_batches(lambda: 8, gen())]
    shares = [[y for _, y in DeviceBatches(split, torch.device("cpu"), Ranks(r, 2).share).train_batches(
        lambda: 8, gen())] for r in range(2)]
    for batch, first, second in zip(whole, *shares):
        assert len(first) == len(second) == 4 and torch.equal(torch.cat([first, second]), batch)
    tests = [torch.cat([y for _, y in DeviceBatches(split, torch.device("cpu"), Ranks(r, 2).share).eval_batches()])
             for r in range(2)]
    assert torch.equal(torch.cat(tests), torch.arange(40))


def test_the_root_cause_is_the_first_own_failure_not_a_peer_cut_off():
    launcher = Launcher(RunConfig(nproc=2, batch_size=128))
    launcher.ended = {0: {"rank": 0, "status": "failed", "time": 2.0,
                          "error": "RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:4321"},
                      1: {"rank": 1, "status": "failed", "time": 1.0, "error": "out of memory on cpu at batch_size=64"}}
    assert launcher._first_failure(1) == "rank 1 failed: out of memory on cpu at batch_size=64"
    launcher.ended = {r: {"rank": r, "status": "failed", "time": r, "error": "loss became nan at step 3"}
                      for r in range(2)}
    assert launcher._first_failure(1) == "loss became nan at step 3"  # every rank saw it: no rank to blame
    launcher.ended = {r: {"rank": r, "status": "stopped", "time": r, "error": "enough"} for r in range(2)}
    assert launcher._first_failure(0) is None
    launcher.ended = {}  # killed at the end of a slow stop, before a word: still a stop, not a failure
    assert "ended without reporting" in launcher._first_failure(-15)
    launcher.controls.stop("enough")
    assert launcher._first_failure(-15) is None


def test_events_and_results_cross_the_channel_intact():
    result = RunResult(status="completed", config=RunConfig(milestones=(0.3, 0.6), nproc=2), throughput=12.5,
                       history=pd.DataFrame([{"step": 1, "loss": 2.0}]),
                       ranks=pd.DataFrame([{"rank": 0, "data_s": 0.1, "compute_s": 1.0, "allreduce_s_per_step": None}]))
    back = from_message(json.loads(json.dumps(to_message(RunEnded(result))))).result
    assert back.config == result.config and back.throughput == 12.5
    assert back.history.equals(result.history) and back.ranks["rank"].tolist() == [0]
    epoch = EpochEnded(1, 8, 2.0, 0, 2.1, 0.5, 0.6, 1.9)
    assert from_message(json.loads(json.dumps(to_message(epoch)))) == epoch


def test_print_launch_gives_each_machine_its_torchrun_command(capsys):
    assert cli.main(["run", "--nproc", "4", "--nnodes", "2", "--rdzv-endpoint", "node0:29500", "--print-launch",
                     "--batch-size", "512", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("-m torch.distributed.run --nproc-per-node=4 --nnodes=2") == 2
    assert "--node-rank=0" in out and "--node-rank=1" in out and "--master-addr=node0 --master-port=29500" in out
    assert '"batch_size": 512' in out and "-m labkit.dist.worker" in out
    with pytest.raises(ValueError, match="--rdzv-endpoint"):
        launch_commands(RunConfig(nproc=2), nnodes=2, endpoint=None)
    with pytest.raises(ValueError, match="2 machines x nproc=8 = 16 processes: use a multiple of 16"):
        launch_commands(RunConfig(nproc=8, batch_size=200), nnodes=2, endpoint="node0:29500")
    assert cli.main(["run", "--nproc", "2", "--nnodes", "2"]) == cli.EXIT_USAGE  # says to use --print-launch
