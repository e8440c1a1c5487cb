"""Dynamic adjustment (issue 9): learning-rate schedules, the LR range test, the batch-size finder, and the
data-loading knobs with their diagnosis."""
import math
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

import labkit
from labkit import Controls, RunConfig, Store, Trainer, cli, finders
from labkit.measure import data_share, input_verdict
from labkit.techniques import data_loading, schedule

TINY = dict(train_size=256, test_size=64, epochs=1, batch_size=32, log_every=2, timing_warmup=1)


# ---- schedules -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, at, expected", [
    ("constant", [0.0, 0.5, 1.0], [1.0, 1.0, 1.0]),
    ("onecycle", [0.0, 0.1, 0.2, 0.6, 1.0], [0.01, 0.5, 1.0, 0.5, 0.0]),
    ("cosine", [0.1, 0.2, 0.6, 1.0], [0.5, 1.0, 0.5, 0.0]),  # half-way through the decay: cos(pi/2) -> 0.5
    ("step", [0.0, 0.49, 0.5, 0.75, 0.99], [1.0, 1.0, 0.1, 0.01, 0.01]),
    ("plateau", [0.0, 0.9], [1.0, 1.0]),  # plateau lowers the peak lr itself
])
def test_each_schedule_is_a_function_of_progress(name, at, expected):
    assert [schedule.lr_factor(p, name, 0.2, (0.5, 0.75), 0.1) for p in at] == pytest.approx(expected, abs=1e-12)


def test_plateau_waits_for_patience_then_lowers_and_counts_again():
    p = schedule.Plateau(patience=2)
    assert [p.lower_now(v) for v in (3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0)] == \
        [False, False, False, True, False, False, True, False, True]


def test_plateau_lowers_the_lr_in_a_run_as_a_knob_change():
    # A constant-lr run whose loss stops improving: with patience 1 the lr must drop, each drop a new segment.
    result = labkit.run(**{**TINY, "epochs": 3, "log_every": 1}, schedule="plateau", patience=1, decay=0.5,
                        lr=0.02, progress=False, store=False)
    assert result.status == "completed", result.error
    drops = result.segments.iloc[1:]
    assert len(drops) >= 1
    assert list(drops["lr"]) == pytest.approx([0.02 * 0.5 ** (i + 1) for i in range(len(drops))], rel=1e-5)
    allowed = [0.02 * 0.5 ** i for i in range(len(drops) + 1)]  # constant between drops: no other lr is used
    assert all(any(math.isclose(lr, a, rel_tol=1e-5) for a in allowed) for lr in result.history["lr"])


def test_a_schedule_switched_mid_run_goes_on_from_the_current_progress():
    controls, seen = Controls(), []

    def listen(event):
        if event.kind == "logged" and event.step == 4:
            controls.request(schedule="step", milestones=(0.25,), decay=0.1)
        if event.kind == "logged":
            seen.append((event.step, event.lr))
    config = RunConfig(**{**TINY, "log_every": 1}, schedule="constant", lr=0.01)
    result = Trainer(config, listeners=[listen], controls=controls).run()
    assert result.status == "completed", result.error
    lrs = dict(seen)
    # Progress is already past 0.25 when the switch lands: the next step takes the decayed lr at once.
    assert lrs[4] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.001) and lrs[8] == pytest.approx(0.001)


def test_milestones_come_back_from_json_as_a_tuple_and_bad_ones_are_refused():
    config = RunConfig.from_dict({"milestones": [0.3, 0.6]})
    assert config.milestones == (0.3, 0.6) and config.changed() == {"milestones": (0.3, 0.6)}
    with pytest.raises(ValueError, match=r"milestones=\(0.8, 0.4\) is not allowed: use increasing shares"):
        RunConfig(milestones=(0.8, 0.4)).validate()
    assert cli.build_parser().parse_args(["run", "--milestones", "0.3,0.9"]).milestones == (0.3, 0.9)


# ---- the LR range test -----------------------------------------------------------------------------------
def _set_up(**overrides) -> Trainer:
    trainer = Trainer(RunConfig(**{**TINY, **overrides}))
    trainer.setup()
    return trainer


def test_find_lr_suggests_inside_the_swept_range_and_restores_the_model_bit_for_bit():
    trainer = _set_up(train_size=512)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}  # BatchNorm statistics included
    gen = trainer.gen.get_state()
    finding = finders.lr_range_test(trainer, start_lr=1e-4, end_lr=10.0, steps=40)
    assert 10 <= len(finding.curve) <= 40
    assert finding.suggestions, finding  # their rules: test_the_suggestions_follow_their_rules_on_a_known_curve
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(trainer.gen.get_state(), gen) and not trainer.optimizer.state
    assert {trace.name.split(":")[0] for trace in finding.figure().data} >= {s.name for s in finding.suggestions}


def test_the_suggestions_follow_their_rules_on_a_known_curve():
    lrs = [10 ** (-4 + i * 0.1) for i in range(40)]
    # flat, then falling fastest around index 20, lowest at index 30, then up again
    loss = [2.0 - 1.0 / (1 + math.exp(-(i - 20) / 2)) if i <= 30 else 1.0 + (i - 30) * 0.2 for i in range(40)]
    found = {s.name: s.lr for s in finders.suggest(lrs, loss)}
    assert found["steepest"] == pytest.approx(lrs[20])
    assert found["min/10"] == pytest.approx(lrs[30] / 10)
    assert lrs[0] < found["valley"] < lrs[30]
    # A bump on the way down: the valley's point lies on the descent, never on the bump.
    bumpy = [5, 4, 3, 2, 1, 3, 4, 5, 6, 0.5, 0.4]
    valley = {s.name: s.lr for s in finders.suggest([10 ** (-4 + i / 2) for i in range(11)], bumpy, 0, 0)}["valley"]
    assert bumpy[[10 ** (-4 + i / 2) for i in range(11)].index(valley)] <= 3


def test_bad_sweeps_are_refused_with_the_fix():
    trainer = _set_up()
    with pytest.raises(ValueError, match="need 0 < start_lr < end_lr"):
        finders.lr_range_test(trainer, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="at least 10 steps"):
        finders.lr_range_test(trainer, steps=5)


def test_find_lr_inside_a_live_run_lets_the_run_go_on_and_is_stored_linked(tmp_path):
    store = Store(tmp_path / "runs.db")
    live = labkit.LiveRun(RunConfig(**{**TINY, "epochs": 4}), store=store).start()
    try:
        live.pause()
        finding = live.find_lr(steps=20, start_lr=1e-3)
        assert len(finding.curve) > 0 and finding.run_id is not None
        assert live.status == "paused"  # still paused, still there
    finally:
        live.resume()
    result = live.wait(120)
    assert result.status == "completed", result.error
    assert result.steps == 4 * 256 // 32 and result.skipped_steps == 0  # the test's steps are not the run's
    records = store.runs(kind="find_lr")
    assert list(records["id"]) == [finding.run_id] and records["summary"].iloc[0]["steps"] == len(finding.curve)
    assert len(store.metrics(finding.run_id, "find_lr")) == len(finding.curve)
    assert list(store.runs()["id"]) == [result.run_id]  # training runs only, by default


def test_a_finder_asked_of_a_run_that_ended_is_refused():
    live = labkit.LiveRun(RunConfig(**TINY), store=False).start()
    live.wait(60)
    with pytest.raises(RuntimeError, match="find_lr\\(config\\)"):
        live.find_lr()


def test_cli_find_lr_prints_the_suggestions_and_records_them(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    assert cli.main(["find-lr", "--train-size", "256", "--batch-size", "32", "--steps", "20", "--db", db,
                     "--quiet", "--plot", str(tmp_path / "lr.html")]) == 0
    out = capsys.readouterr().out
    assert "LR range test: " in out and (tmp_path / "lr.html").stat().st_size > 10_000
    suggested = Store(db).runs(kind="find_lr")["summary"].iloc[0]["suggestions"]  # what was printed was stored
    assert all(f"{name:<9} lr={lr:<9.3g}" in out for name, lr in suggested.items())
    assert suggested or "no suggestion" in out
    cli.main(["runs", "--db", db, "--kind", "find_lr"])
    assert "train_size=256" in capsys.readouterr().out


# ---- batch size by throughput ----------------------------------------------------------------------------
def test_the_recommendation_is_the_smallest_near_the_fastest_within_the_memory_budget():
    table = pd.DataFrame({"batch_size": [8, 16, 32, 64, 128], "throughput": [100.0, 180.0, 196.0, 200.0, 150.0],
                          "peak_memory_bytes": [10, 20, 40, 80, 160], "seconds": 1.0, "fits": True, "note": ""})
    found = finders._recommend(table, budget=100, margin=0.2, tolerance=0.05, notes=[])
    assert found.recommended == 32 and found.largest_that_fits == 128  # 196 is within 5% of 200; 128 over budget
    assert "The largest that fits, 128, gives 150 img/s (0.77x)" in found.reason
    none = finders._recommend(table, budget=5, margin=0.2, tolerance=0.05, notes=[])
    assert none.recommended is None and "no batch size fits with a 20% memory margin" in none.reason


def test_find_batch_size_measures_each_size_and_restores_the_model(tmp_path):
    store = Store(tmp_path / "runs.db")
    finding = labkit.find_batch_size(**{**TINY, "train_size": 512}, sizes=[8, 32, 128], time_limit_s=600,
                                     store=store, progress=False)
    assert list(finding.table["batch_size"]) == [8, 32, 128] and finding.table["fits"].all()
    assert (finding.table["throughput"] > 0).all() and (finding.table["peak_memory_bytes"] > 0).all()
    assert finding.recommended in (8, 32, 128) and finding.largest_that_fits == 128
    assert store.runs(kind="find_batch_size")["summary"].iloc[0]["recommended"] == finding.recommended
    assert len(finding.figure().data) >= 2


CAPPED = textwrap.dedent("""
    import torch, labkit
    from labkit import finders
    torch.ones(8, 8) @ torch.ones(8, 8)  # start torch's threads before the cap
    found = labkit.find_batch_size(train_size=4096, test_size=64, width=64, sizes=[16, 64, 256, 1024, 4096],
                                   memory_cap_bytes=300 * 2**20, time_limit_s=600, store=False, progress=False)
    print(found)
    oom = found.table[~found.table["fits"]]
    assert len(oom) == 1 and oom["note"].iloc[0] == "out of memory", found.table
    assert found.recommended is not None and found.recommended < int(oom["batch_size"].iloc[0])
    after = labkit.run(train_size=256, test_size=64, epochs=1, batch_size=32, width=64, store=False, progress=False)
    assert after.status == "completed", after.error  # the memory went back: the process trains on
    print("OK")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU memory cap is Linux's address-space limit")
def test_the_batch_finder_survives_an_out_of_memory_it_provokes():
    # In a child process: the cap lowers the whole process's address-space limit while the finder runs.
    done = subprocess.run([sys.executable, "-c", CAPPED], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


# ---- data loading ----------------------------------------------------------------------------------------
def test_worker_knobs_that_would_do_nothing_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="num_workers=2 has no effect: dataset='synthetic' with loader='auto'"):
        RunConfig(num_workers=2).validate()
    with pytest.raises(ValueError, match="prefetch_factor needs worker processes"):
        RunConfig(loader="dataloader", prefetch_factor=4).validate()
    with pytest.raises(ValueError, match="persistent_workers needs worker processes"):
        RunConfig(loader="dataloader", persistent_workers=True).validate()
    RunConfig(loader="dataloader", num_workers=2, prefetch_factor=4, persistent_workers=True).validate()


def test_workers_start_safely_for_the_platform():
    options = data_loading.loader_options(RunConfig(loader="dataloader", num_workers=2), torch.device("cpu"))
    assert options["timeout"] == data_loading.WORKER_TIMEOUT_S and options["pin_memory"] is False
    method = options["multiprocessing_context"].get_start_method()
    assert method == ("fork" if sys.platform.startswith("linux") else "spawn")  # pytest runs a script
    assert data_loading.loader_options(RunConfig(), torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}


def test_a_streamed_run_with_workers_reports_its_data_share_and_leaves_no_worker_behind():
    import multiprocessing

    result = labkit.run(**{**TINY, "epochs": 2}, loader="dataloader", num_workers=1, persistent_workers=True,
                        progress=False, store=False)
    assert result.status == "completed", result.error
    assert 0.0 <= result.data_share <= 1.0 and result.input_verdict
    assert result.data_share == pytest.approx(result.data_time_s / (result.data_time_s + result.compute_time_s))
    assert result.input_verdict in result.summary()
    assert not multiprocessing.active_children()  # the worker ended with the run


@pytest.mark.parametrize("share, streamed, workers, cores, on_cpu, starts, advice", [
    (0.05, True, 0, 8, False, "compute-bound: getting the data takes 5%", "cannot speed it up"),
    (0.2, True, 0, 8, False, "partly input-bound: 20%", "try num_workers=7"),
    (0.63, True, 0, 16, False, "input-bound: 63% of each step waits for data", "try num_workers=8"),
    (0.63, True, 1, 2, False, "input-bound: 63%", "more workers would take cores from training"),
    (0.4, False, 0, 2, False, "input-bound: 40%", "already on the device"),
    # Training on the CPU: workers take its cores, and what training loses to them counts as compute.
    (0.6, True, 0, 2, True, "input-bound: 60%", "try loader='device'"),
    (0.08, True, 2, 2, True, "compute-bound: getting the data takes 8%", "share the 2 cores with training"),
])
def test_the_input_verdict_names_the_share_and_what_to_try(share, streamed, workers, cores, on_cpu, starts, advice):
    verdict = input_verdict(share, streamed, workers, cores, on_cpu)
    assert verdict.startswith(starts) and advice in verdict


def test_the_data_share_is_data_time_over_both_and_nothing_timed_says_nothing():
    assert data_share(3.0, 1.0) == 0.75 and data_share(0.0, 0.0) is None and input_verdict(None, True, 0, 2) == ""


def test_export_writes_an_image_folder_that_trains(tmp_path):
    path = labkit.synthetic.export(tmp_path / "jpeg", train_size=200, test_size=50, image_size=48, progress=False)
    files = sorted((path / "train").rglob("*.jpg"))
    assert len(files) == 200 and len(list((path / "test").rglob("*.jpg"))) == 50
    assert sorted(p.name for p in (path / "train").iterdir()) == sorted(labkit.data.synthetic.CLASSES)
    from PIL import Image
    with Image.open(files[0]) as image:
        assert image.format == "JPEG" and image.size == (48, 48) and image.mode == "RGB"
    assert labkit.synthetic.export(path, train_size=200, test_size=50, image_size=48, progress=False) == path
    with pytest.raises(ValueError, match="already exists and holds another export"):
        labkit.synthetic.export(path, train_size=400, test_size=50, image_size=48, progress=False)
    result = labkit.run(dataset=f"imagefolder:{path}", epochs=1, batch_size=50, width=8, log_every=1,
                        timing_warmup=1, progress=False, store=False)
    assert result.status == "completed" and result.steps == 4 and result.data_share is not None


# ---- the panel -------------------------------------------------------------------------------------------
def test_the_panel_finds_an_lr_and_its_suggestion_button_sets_the_control(tmp_path):
    lab = labkit.Lab(RunConfig(**TINY), store=str(tmp_path / "runs.db"))
    found = lab.finders.find_lr(steps=20, start_lr=1e-3).result(timeout=120)
    buttons = lab.finders.choices.children
    assert [b.description.split()[1] for b in buttons] == [s.name for s in found.suggestions]
    buttons[-1].click()
    assert lab.config.lr == pytest.approx(found.suggestions[-1].lr, rel=1e-2)
    assert "LR range test" in lab.finders.message.value and len(lab.finders.figure.data) >= 3


def test_the_panel_status_says_whether_the_run_waits_for_data(tmp_path):
    import html

    lab = labkit.Lab(RunConfig(**TINY, loader="dataloader"), store=str(tmp_path / "runs.db"))
    lab.start()
    result = lab.wait(120)
    assert result.status == "completed" and html.escape(f"input: {result.input_verdict}") in lab.status.value


class _DyingDataset(torch.utils.data.Dataset):
    """Images whose fifth read kills the worker process that reads it (as the kernel's OOM killer would)."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        if i == 5 and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), 9)
        return torch.zeros(3, 8, 8, dtype=torch.uint8), 0


def test_a_worker_that_dies_fails_the_run_with_a_message_instead_of_hanging():
    from labkit.data import LoaderBatches

    options = data_loading.loader_options(RunConfig(loader="dataloader", num_workers=1), torch.device("cpu"))
    batches = LoaderBatches(_DyingDataset(), torch.device("cpu"), options)
    with pytest.raises(RuntimeError, match="DataLoader worker .* (killed|exited unexpectedly)") as caught:
        for _ in batches.eval_batches():
            pass
    batches.close()
    message = Trainer(RunConfig(**TINY, loader="dataloader", num_workers=1))._explain(caught.value)
    assert "worker processes failed (num_workers=1)" in message and "num_workers=0 to see the error" in message


def test_stopping_a_live_run_ends_its_worker_processes():
    import multiprocessing

    live = labkit.LiveRun(RunConfig(**{**TINY, "epochs": 50}, loader="dataloader", num_workers=1,
                                    persistent_workers=True), store=False).start()
    assert live.wait_measured(timeout=120)
    assert multiprocessing.active_children()  # the worker is there while the run trains
    live.stop()
    assert live.wait(60).status == "stopped"
    assert not multiprocessing.active_children()
