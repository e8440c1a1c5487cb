"""LiveRun: knobs changed while a run trains in a background thread, knob by knob, on real (tiny) runs."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from labkit import LiveRun, RunConfig, Store
from labkit.events import Logged
from support import wait_until

# Tiny and slow to finish on its own: each test changes what it needs, then stops the run.
SMALL = dict(train_size=1000, test_size=200, width=8, depth=2, batch_size=32, log_every=2, timing_warmup=2,
             epochs=100, max_steps=400, schedule="constant", device="cpu")


def advance(live, steps=3):
    """Wait until the run has trained `steps` more steps."""
    target = live.step + steps
    wait_until(lambda: live.step >= target or not live.running, what=f"step {target}")


def wait_segments(live, count):
    wait_until(lambda: len(live.segments) >= count or not live.running, what=f"{count} segments")
    assert len(live.segments) >= count, live.error


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "runs.db")


@pytest.fixture
def started(store):
    runs = []

    def start(**overrides):
        live = LiveRun(RunConfig(**{**SMALL, **overrides}), store=store).start()
        runs.append(live)
        return live

    yield start
    for live in runs:  # never leave a thread training after a test
        live.stop()
        live.wait(60)


def test_amp_switches_autocast_and_the_grad_scaler(started, store):
    live = started()
    advance(live)
    live.set(amp="fp16")
    wait_segments(live, 2)
    advance(live, 4)
    assert live.trainer.scaler.is_enabled()  # fp16 trains with a GradScaler
    live.set(amp="bf16")
    wait_segments(live, 3)
    assert not live.trainer.scaler.is_enabled()  # bf16 needs none: dropped
    live.stop()
    result = live.wait(60)
    assert result.status == "stopped"
    seg = live.segments
    assert list(seg["amp"]) == ["off", "fp16", "bf16"]
    fp16_points = result.history[result.history["segment"] == 1]
    assert fp16_points["loss_scale"].notna().all() and len(fp16_points) > 0
    assert result.history[result.history["segment"] == 2]["loss_scale"].isna().all()
    events = store.events(live.run_id)
    assert list(events[events["kind"] == "segment"]["label"]) == ["start", "amp: off -> fp16", "amp: fp16 -> bf16"]


def test_batch_size_augment_and_lr_take_effect_at_the_next_step(started):
    live = started()
    advance(live)
    live.set(batch_size=64, augment="none", lr=0.01)
    wait_segments(live, 2)
    advance(live, 4)
    live.stop()
    result = live.wait(60)
    second = result.history[result.history["segment"] == 1]
    assert (second["batch_size"] == 64).all() and len(second) > 0
    assert second["lr"].to_numpy() == pytest.approx(0.01)  # schedule "constant": the peak lr itself
    first = result.history[result.history["segment"] == 0]
    assert (first["batch_size"] == 32).all()
    row = live.segments.iloc[1]
    assert (row["batch_size"], row["augment"], row["lr"]) == (64, "none", 0.01)
    assert row["start_step"] == live.segments.iloc[0]["end_step"]


def test_optimizer_change_builds_a_fresh_optimizer_over_the_same_parameters(started):
    live = started()
    advance(live)
    before = live.trainer.optimizer
    live.set(optimizer="adam", lr=1e-3)
    wait_segments(live, 2)
    after = live.trainer.optimizer
    assert isinstance(after, torch.optim.Adam) and after is not before
    model_params = {id(p) for p in live.trainer.model.parameters()}
    assert {id(p) for g in after.param_groups for p in g["params"]} == model_params
    live.stop()
    assert live.wait(60).status == "stopped"


def test_unstructured_pruning_applies_masks_now(started):
    live = started()
    advance(live)
    live.set(prune=0.5)
    wait_segments(live, 2)
    advance(live, 2)
    live.stop()
    result = live.wait(60)
    assert result.sparsity == pytest.approx(0.5, abs=0.02)
    assert live.segments.iloc[1]["prune"] == 0.5


def test_channel_pruning_removes_channels_and_rebuilds_the_optimizer(started):
    live = started(prune_method="channels")
    advance(live)
    params_before = sum(p.numel() for p in live.trainer.model.parameters())
    live.set(prune=0.5)
    wait_segments(live, 2)
    advance(live, 2)
    live.stop()
    result = live.wait(60)
    assert result.params < 0.7 * params_before
    seg = live.segments
    assert seg.iloc[1]["flops_per_image"] < seg.iloc[0]["flops_per_image"]
    optimized = {id(p) for g in live.trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in live.trainer.model.parameters()}


def test_a_bad_value_raises_at_once_and_the_run_goes_on_unchanged(started):
    live = started()
    advance(live)
    for bad in (dict(amp="fp8"), dict(batch_size=0), dict(prune=1.0), dict(optimizer="sgdx"), dict(epochs=3)):
        with pytest.raises(ValueError):
            live.set(**bad)
    live.set(prune=0.3)
    wait_segments(live, 2)
    with pytest.raises(ValueError, match="pruning only adds"):
        live.set(prune=0.1)
    with pytest.raises(ValueError, match="already pruned"):
        live.set(prune_method="channels")
    advance(live, 3)
    assert live.running and len(live.segments) == 2
    assert (live.knobs.amp, live.knobs.batch_size, live.knobs.prune) == ("off", 32, 0.3)


def test_a_change_made_invalid_before_the_boundary_is_dropped_not_fatal(started):
    live = started()
    advance(live)
    live.set(prune=0.5)
    wait_segments(live, 2)
    live.controls.request(prune=0.2)  # as if set() had checked it just before prune=0.5 was applied
    advance(live, 3)
    assert live.running and live.knobs.prune == 0.5 and len(live.segments) == 2
    assert "pruning only adds" in live.rejected[0]


def test_setting_the_value_in_force_starts_no_segment(started):
    live = started()
    advance(live)
    live.set(amp="off", batch_size=32)
    advance(live, 4)
    assert len(live.segments) == 1


def test_stop_takes_effect_within_one_step(started, store):
    live = started()
    advance(live)
    at_stop = live.step
    live.stop()
    result = live.wait(30)
    assert result.status == "stopped" and result.steps <= at_stop + 1
    assert store.runs().iloc[-1]["status"] == "stopped"
    with pytest.raises(RuntimeError, match="has ended"):
        live.set(amp="bf16")


def test_pause_holds_the_loop_and_resume_goes_on(started):
    live = started()
    advance(live)
    live.pause()
    time.sleep(0.3)  # let it reach the step boundary
    held = live.step
    assert live.status == "paused"
    time.sleep(0.5)
    assert live.step == held
    live.resume()
    advance(live, 2)
    assert live.status == "running"


def test_wait_with_a_timeout_returns_none_while_training(started):
    live = started()
    assert live.wait(0.05) is None and live.result is None


def test_one_run_at_a_time_per_device(started, store):
    first = started()
    second = LiveRun(RunConfig(**SMALL), store=store)
    with pytest.raises(RuntimeError, match="already training on cpu"):
        second.start()
    first.stop()
    first.wait(30)
    third = started(max_steps=3)
    assert third.wait(60).status == "completed"
    assert [r for r in store.runs()["status"]] == ["stopped", "completed"]


def test_a_crash_in_the_training_thread_is_kept_and_stored_as_failed(store):
    def explode(event):
        if isinstance(event, Logged) and event.step >= 4:
            raise RuntimeError("listener broke")

    live = LiveRun(RunConfig(**SMALL), store=store, listeners=[explode]).start()
    result = live.wait(60)
    assert isinstance(live.error, RuntimeError) and "listener broke" in str(live.error)
    assert result.status == "failed" and "listener broke" in result.error
    stored = store.runs().iloc[-1]
    assert stored["status"] == "failed" and "listener broke" in stored["error"]
    assert live.status == "failed"


def test_a_failure_before_training_starts_is_stored_too(store, tmp_path):
    empty = tmp_path / "no-images"
    empty.mkdir()
    live = LiveRun(RunConfig(**{**SMALL, "dataset": f"imagefolder:{empty}"}), store=store).start()
    result = live.wait(60)
    assert live.error is not None and result.status == "failed"
    stored = store.runs().iloc[-1]
    assert stored["status"] == "failed" and stored["error"] == result.error
    assert LiveRun(RunConfig(**{**SMALL, "max_steps": 2}), store=store).start().wait(60).status == "completed"


def test_a_bad_configuration_raises_before_any_thread_starts(store):
    with pytest.raises(ValueError, match="batch_size"):
        LiveRun(RunConfig(**SMALL), store=store, batch_size=0)


# ---- signals: a live run trains in a thread, which signals never reach -----------------------------------------
def test_an_interrupt_while_waiting_stops_the_run_and_goes_on(started, store):
    live = started()
    advance(live)
    # Ctrl-C, or the kernel's stop button: sent to the process, so any of its threads may receive it
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        live.wait(60)
    timer.join()
    assert live.result.status == "stopped" and live.result.error == "interrupted (SIGINT)"
    assert store.runs()["status"].tolist() == ["stopped"]


SIGTERM_SCRIPT = """
import sys, time
from labkit import LiveRun, RunConfig, Store
live = LiveRun(RunConfig(**{config!r}), store=Store(sys.argv[1])).start()
while live.step < 5:
    time.sleep(0.05)
print("training", flush=True)
time.sleep(300)  # the main thread is idle, as a notebook's is between cells
"""


def test_sigterm_stops_the_live_runs_records_them_and_still_ends_the_process(tmp_path):
    db = tmp_path / "runs.db"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT.format(config=SMALL), str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline() == "training\n", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM  # ended as SIGTERM asks, after the run recorded its end
    runs = Store(db).runs()
    assert runs["status"].tolist() == ["stopped"] and runs["error"].tolist() == ["stopped by SIGTERM"]
    assert runs["steps"].iloc[0] >= 5


def test_auto_is_resolved_and_setting_what_is_in_force_starts_no_segment(started):
    from labkit import devices

    resolved = devices.resolve_amp("auto", torch.device("cpu"))
    live = started(amp="auto")
    assert live.knobs.amp == resolved and live.config.amp == "auto"
    advance(live)
    live.set(amp="auto", augment="none")
    wait_segments(live, 2)
    advance(live)
    seg = live.segments
    assert len(seg) == 2 and list(seg["amp"]) == [resolved, resolved] and list(seg["augment"]) == ["flip-crop", "none"]
