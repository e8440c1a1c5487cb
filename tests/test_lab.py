"""The lab panel, driven from Python as a user would drive it: set widget values, click buttons."""
import time

import numpy as np
import pytest

import labkit
from labkit import Lab, RunConfig, Store
from labkit.config import KNOB

AUGMENT_PRESETS, OPTIMIZERS, PRUNE_METHODS = (KNOB[k].allowed.options for k in ("augment", "optimizer", "prune_method"))
from support import wait_until

SMALL = dict(train_size=1000, test_size=200, width=8, depth=2, batch_size=32, log_every=2, timing_warmup=2,
             epochs=100, max_steps=400, device="cpu")


@pytest.fixture
def lab(tmp_path):
    panel = Lab(RunConfig(**SMALL), store=Store(tmp_path / "runs.db"))
    yield panel
    panel.stop()
    panel.wait(60)


def test_the_panel_offers_every_knob_with_its_allowed_values(lab):
    assert list(lab.amp_buttons) == ["off", "bf16", "fp16"]
    assert all(not b.disabled for b in lab.amp_buttons.values())  # the CPU runs all three
    assert lab.amp_buttons["off"].button_style == "primary"
    sizes = list(lab.batch_size.options)
    assert sizes == [8, 16, 32, 64, 128, 256, 512] and lab.batch_size.value == 32  # powers of two <= train_size
    assert lab.augment.options == AUGMENT_PRESETS and lab.optimizer.options == OPTIMIZERS
    assert lab.prune_method.options == PRUNE_METHODS and (lab.prune.min, lab.prune.max) == (0.0, 0.95)
    assert lab.lr.value == pytest.approx(labkit.techniques.optimizers.default_lr("nesterov")) and lab.epochs.value == 100
    assert "ready" in lab.status.value and lab.widget.children[-1] is lab.dashboard.widget
    # The controls are the declarations': every knob that declares one has it; one that cannot change mid-run
    # says it sets up the next run.
    declared = {k.name for k in KNOB.values() if k.control and k.control.kind != "buttons"}
    assert set(lab.controls) == declared >= {"channels_last", "compile", "grad_accum"}
    assert lab.compile.options == KNOB["compile"].allowed.options and lab.compile.description.endswith("(next run)")
    assert lab.grad_accum.value == 1 and lab.channels_last.value is False


def test_with_no_run_the_controls_set_up_the_next_run(lab):
    lab.amp_buttons["bf16"].click()
    lab.batch_size.value = 64
    lab.augment.value = "none"
    lab.optimizer.value = "adam"
    lab.prune.value = 0.3
    lab.prune_method.value = "channels"
    lab.epochs.value = 1
    c = lab.config
    assert (c.amp, c.batch_size, c.augment, c.optimizer, c.prune, c.prune_method, c.epochs) == \
        ("bf16", 64, "none", "adam", 0.3, "channels", 1)
    assert c.lr is None and lab.lr.value == pytest.approx(labkit.techniques.optimizers.default_lr("adam"))  # follows the optimizer
    assert lab.set_control("compile", "default") and lab.set_control("grad_accum", 4)
    assert lab.set_control("channels_last", True)
    assert (lab.config.compile, lab.config.grad_accum, lab.config.channels_last) == ("default", 4, True)
    lab.lr.value = 0.003
    assert lab.config.lr == 0.003
    lab.optimizer.value = "sgd"
    assert lab.config.lr == 0.003  # a learning rate the user typed stays


def test_live_changes_reach_the_running_run_the_charts_and_the_store(lab):
    lab.run_button.click()
    run = lab.run
    wait_until(lambda: run.step >= 6, what="first steps")
    first_status = lab.status.value
    lab.amp_buttons["bf16"].click()
    wait_until(lambda: len(run.segments) >= 2 and run.segments["throughput"].notna().iloc[1], what="amp segment")
    lab.batch_size.value = 64
    wait_until(lambda: len(run.segments) >= 3, what="batch-size segment")
    wait_until(lambda: run.segments["throughput"].notna().all(), what="a timed interval")
    time.sleep(0.3)  # the charts redraw at most every 0.25 s
    run.controls.pause()  # hold still while reading the charts
    time.sleep(0.3)
    lab.dashboard._redraw(force=True)
    marks = lab.dashboard.throughput_fig.data[1]
    assert list(marks.text) == ["amp: off -> bf16", "batch_size: 32 -> 64"]
    bars = lab.dashboard.segments_fig.data[0]
    assert list(bars.x) == ["#0 start", "#1 amp: off -> bf16", "#2 batch_size: 32 -> 64"]
    assert np.asarray(bars.y, dtype=float) == pytest.approx(run.segments["throughput"].to_numpy(float))
    line = lab.dashboard.throughput_fig.data[0]
    assert isinstance(line.y, np.ndarray) and line.y.dtype == np.float64 and len(line.y) == len(run.history)
    run.controls.resume()
    wait_until(lambda: "amp bf16" in lab.status.value, what="status update")
    assert lab.status.value != first_status and "segment #2 batch_size: 32 -&gt; 64" in lab.status.value
    lab.stop_button.click()
    result = lab.wait(60)
    assert result.status == "stopped"
    wait_until(lambda: "stopped" in lab.status.value, what="final status")
    stored = lab.store.runs().iloc[-1]
    assert stored["status"] == "stopped" and stored["id"] == run.run_id
    labels = lab.store.events(run.run_id)["label"].dropna().tolist()
    assert labels == ["start", "amp: off -> bf16", "batch_size: 32 -> 64"]


def test_a_refused_live_change_is_shown_and_the_control_reverts(lab):
    lab.prune.value = 0.0
    lab.run_button.click()
    wait_until(lambda: lab.run.step >= 3, what="first steps")
    lab.prune.value = 0.5
    wait_until(lambda: lab.run.knobs.prune == 0.5, what="pruning applied")
    lab.prune.value = 0.2
    assert "pruning only adds" in lab.last_error and "pruning only adds" in lab.errors.value
    assert lab.prune.value == 0.5 and lab.run.knobs.prune == 0.5
    lab.augment.value = "flip"  # an accepted change clears the message
    assert lab.last_error is None


def test_with_live_off_the_running_run_is_left_alone(lab):
    lab.run_button.click()
    wait_until(lambda: lab.run.step >= 3, what="first steps")
    lab.live.value = False
    lab.batch_size.value = 128
    time.sleep(1.0)
    assert lab.run.knobs.batch_size == 32 and len(lab.run.segments) == 1
    assert lab.config.batch_size == 128


def test_a_second_run_while_one_trains_is_refused_in_the_panel(lab):
    lab.run_button.click()
    first = lab.run
    lab.run_button.click()
    assert lab.run is first and "already training on cpu" in lab.last_error


def test_a_crash_in_the_training_thread_reaches_the_panel_and_the_store(tmp_path):
    empty = tmp_path / "no-images"
    empty.mkdir()
    panel = Lab(RunConfig(**{**SMALL, "dataset": f"imagefolder:{empty}"}), store=Store(tmp_path / "runs.db"))
    panel.run_button.click()
    result = panel.wait(60)
    assert result.status == "failed"
    wait_until(lambda: panel.last_error is not None, what="the error in the panel")
    assert panel.last_error.startswith("run failed: ") and result.error in panel.last_error
    assert "failed" in panel.status.value
    stored = panel.store.runs().iloc[-1]
    assert stored["status"] == "failed" and stored["error"] == result.error



def test_set_control_and_wait_measured_drive_the_panel_as_the_notebook_does(lab):
    run = lab.start()
    assert run.wait_measured(timeout=60)
    assert lab.set_control("amp", "bf16")
    assert run.wait_measured(timeout=60)  # the amp segment started and has its own throughput
    assert lab.set_control("prune", 0.5)
    assert run.wait_measured(timeout=60)
    seg = run.segments
    assert list(seg["amp"]) == ["off", "bf16", "bf16"] and list(seg["prune"]) == [0.0, 0.0, 0.5]
    assert seg["throughput"].notna().all()
    assert not lab.set_control("prune", 0.2) and "pruning only adds" in lab.last_error


# ---- the status line: what the exercises ask (accuracy and the gap, FLOPs per image, MFU, peak memory) ----------
TINY = dict(SMALL, train_size=256, test_size=64, epochs=2, max_steps=None)


def _run_and_watch(tmp_path, **config):
    """A real run started from the panel; returns the panel, the result and every status it showed."""
    panel = Lab(RunConfig(**{**TINY, **config}), store=Store(tmp_path / "runs.db"))
    shown = []
    panel.status.observe(lambda change: shown.append(change["new"]), names="value")
    panel.start()
    result = panel.wait(60)
    assert result.status == "completed"
    wait_until(lambda: "completed" in panel.status.value, what="final status")
    return panel, result, shown


def _number(pattern, text):
    import re
    match = re.search(pattern, text)
    return float(match.group(1).replace(",", "")) if match else None


def test_the_status_shows_accuracy_and_gap_flops_after_channel_pruning_and_peak_memory(tmp_path):
    panel, r, shown = _run_and_watch(tmp_path, prune=0.5, prune_method="channels")  # pruned halfway (prune_at)
    running = [s for s in shown if "· running ·" in s]
    mflops = r"fwd ([\d.]+) MFLOPs/img"
    # FLOPs per image: the dense model's in the first segment, the pruned model's (with the dense figure) after.
    dense = [s for s in running if "segment #0" in s and "FLOPs" in s]
    pruned = [s for s in running if "segment #1" in s]
    assert dense and pruned and r.flops_per_image < 0.6 * r.dense_flops_per_image
    assert all(_number(mflops, s) == pytest.approx(r.dense_flops_per_image / 1e6, rel=0.01) for s in dense)
    assert all("(dense" not in s for s in dense)
    assert all(_number(mflops, s) == pytest.approx(r.flops_per_image / 1e6, rel=0.01) for s in pruned)
    assert all(_number(r"\(dense ([\d.]+) M\)", s) == pytest.approx(r.dense_flops_per_image / 1e6, rel=0.01)
               for s in pruned)
    # Train and test accuracy with the gap, once an epoch has ended (live too); the gap adds up.
    assert any("train " in s and "gap" in s for s in running)
    final = panel.status.value
    assert f"train {r.train_accuracy:.1%} / test {r.accuracy:.1%} (gap " in final
    gap = _number(r"gap (-?[\d.]+) pts", final)
    assert gap == pytest.approx(100 * (r.train_accuracy - r.accuracy), abs=0.11)
    # Peak memory, named for what it measures on a CPU: live, and the RunResult's at the end.
    assert any("peak mem" in s and "MiB (process RSS)" in s for s in running)
    assert f"peak mem {r.peak_memory_bytes / 2**20:,.0f} MiB (process RSS)" in final
    assert "img/s (run mean)" in final and "<br>" in final  # two lines: progress, then the model
    # No peak FLOP/s is known for a CPU: no MFU at all, live or at the end.
    assert r.mfu is None and not any("MFU" in s for s in shown)


def test_the_status_shows_mfu_when_the_device_peak_is_known(tmp_path, monkeypatch):
    peak = 4e10
    monkeypatch.setattr(labkit.devices, "peak_flops", lambda device, amp: peak)
    panel, r, shown = _run_and_watch(tmp_path, epochs=1)
    live = [s for s in shown if "· running ·" in s and "MFU" in s]
    assert live, "no live MFU"
    for s in live:  # 3 x forward FLOPs x the throughput shown / the peak
        expected = 300 * _number(r"fwd ([\d.]+) MFLOPs", s) * 1e6 * _number(r"([\d,]+) img/s", s) / peak
        assert _number(r"MFU ([\d.]+)%", s) == pytest.approx(expected, rel=0.02, abs=0.06)
    assert r.mfu == pytest.approx(3 * r.flops_per_image * r.throughput / peak)  # the same function at the end
    assert f"MFU {r.mfu:.1%}" in panel.status.value


def test_status_figures_read_as_the_exercises_ask():
    from labkit.lab.panel import _accuracy_text, _memory_text, _si
    assert _accuracy_text(0.714, 0.642) == "train 71.4% / test 64.2% (gap 7.2 pts)"
    assert _accuracy_text(0.5, 0.515) == "train 50.0% / test 51.5% (gap -1.5 pts)"
    assert (_si(3_981_952), _si(1_106_240), _si(512), _si(2.5e9)) == ("3.98 M", "1.11 M", "512 ", "2.50 G")
    import torch
    assert _memory_text(412 * 2**20, torch.device("cpu")) == "peak mem 412 MiB (process RSS)"
    assert _memory_text(412 * 2**20, torch.device("cuda")).startswith("peak GPU mem 412 MiB")
