"""labkit.tune, its workers, TuneLab and labkit.ablate, on tiny budgets: every trial is a real run."""
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pandas as pd
import pytest
from plotly.callbacks import Points

import labkit
from labkit.tuning import Tuner, TuneResult, parse_space
from support import wait_until

TINY = dict(train_size=256, test_size=64, epochs=1, batch_size=32, log_every=2, timing_warmup=1, width=8)
SPACE = {"lr": (0.01, 1.0), "batch_size": [32, 64]}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def store(tmp_path):
    return labkit.Store(tmp_path / "tune.db")


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe", "gp", "nsga2"])
def test_each_sampler_runs_stored_trials_and_finds_a_pareto_set(sampler, store):
    # TPE and GP start with 3 random trials, NSGA-II's first population is 4: 5 trials reach their models
    space = {"lr": [0.03, 0.3], "batch_size": [32, 64]} if sampler == "grid" else SPACE
    trials = 3 if sampler in ("grid", "random") else 5
    result = labkit.tune(space, objectives=("accuracy", "throughput"), sampler=sampler, trials=trials, seed=1,
                         store=store, progress=False, quiet=True, **TINY)
    assert list(result.trials["state"]) == ["complete"] * trials
    assert result.trials["accuracy"].between(0, 1).all() and (result.trials["throughput"] > 0).all()
    # every trial is a stored run, labelled with its study and trial number
    runs = store.runs().set_index("id").loc[list(result.trials["run_id"])]
    assert list(runs["study"]) == [result.study_name] * trials and list(runs["trial"]) == list(range(trials))
    assert list(runs["lr"]) == pytest.approx(list(result.trials["lr"]))
    # the Pareto set: no completed trial beats one of its members on both objectives
    front = result.best
    assert 1 <= len(front) <= trials
    for f in front.itertuples():
        assert not ((result.trials["accuracy"] > f.accuracy) & (result.trials["throughput"] > f.throughput)).any()
    config = result.config(int(front["trial"].iloc[0]))
    assert config.lr == pytest.approx(front["lr"].iloc[0]) and config.train_size == 256
    assert isinstance(config.batch_size, int) and config.validate()
    if sampler == "grid":  # each grid point once
        assert len({(r.lr, r.batch_size) for r in result.trials.itertuples()}) == 3


def test_a_failed_trial_is_told_with_its_reason_and_the_study_goes_on(store, tmp_path):
    # batch_size 512 > train_size 256 cannot run at all; an empty image folder fails the run as it loads the data
    empty = f"imagefolder:{tmp_path}"
    result = labkit.tune({"batch_size": [32, 512], "dataset": ["synthetic", empty]}, sampler="grid", trials=4,
                         store=store, progress=False, quiet=True, **TINY)
    states = {(r.batch_size, r.dataset): (r.state, r.error) for r in result.trials.itertuples()}
    assert states[(32, "synthetic")][0] == "complete"
    assert states[(512, "synthetic")][0] == "fail" and "larger than train_size=256" in states[(512, "synthetic")][1]
    assert states[(32, empty)][0] == "fail" and "one sub-folder per class" in states[(32, empty)][1]
    stored = store.runs()
    assert sorted(stored["status"]) == ["completed", "failed"]  # the impossible ones never started a run
    assert result.best["batch_size"].tolist() == [32] and result.best["dataset"].tolist() == ["synthetic"]


def test_a_pruner_stops_a_trial_after_its_first_epoch_and_the_run_says_so(store):
    import optuna

    result = labkit.tune({"lr": [0.05, 0.1]}, sampler="grid", trials=2, store=store, progress=False, quiet=True,
                         pruner=optuna.pruners.ThresholdPruner(lower=0.999), **{**TINY, "epochs": 3})
    assert list(result.trials["state"]) == ["pruned", "pruned"]
    assert "pruned after epoch 1" in result.trials["error"].iloc[0]
    runs = store.runs()
    assert list(runs["status"]) == ["stopped", "stopped"]
    assert runs["steps"].between(8, 9).all()  # one epoch of three (8 steps), stopped at the next step boundary


def test_settings_that_cannot_work_are_refused_with_the_fix(store):
    with pytest.raises(ValueError, match="'speed' is not a run setting"):
        parse_space({"speed": [1, 2]})
    with pytest.raises(ValueError, match="batch_size=0 is not allowed"):
        parse_space({"batch_size": [0, 64]})
    with pytest.raises(ValueError, match="amp takes .*give a list of choices"):
        parse_space({"amp": {"low": 0, "high": 1}})
    assert parse_space({"lr": (0.001, 1.0)})[0].log and not parse_space({"momentum": (0.5, 0.99)})[0].log
    assert parse_space({"width": (8, 64)})[0].integer
    with pytest.raises(ValueError, match="sampler='grid' needs a list of choices.*\\['lr'\\]"):
        Tuner(SPACE, sampler="grid", store=store)
    with pytest.raises(ValueError, match="does not prune multi-objective"):
        Tuner(SPACE, objectives=("accuracy", "throughput"), pruner="median", store=store)
    with pytest.raises(ValueError, match="time_to_accuracy' needs target_accuracy"):
        Tuner(SPACE, objectives="time_to_accuracy", store=store)
    with pytest.raises(ValueError, match="sampler='bayes' is not known"):
        Tuner(SPACE, sampler="bayes", store=store)


def test_time_to_accuracy_and_a_study_continued_later(store):
    result = labkit.tune({"lr": [0.05, 0.2]}, objectives=("time_to_accuracy",), target_accuracy=0.01,
                         sampler="grid", trials=1, store=store, study="continued", progress=False, quiet=True,
                         **{**TINY, "epochs": 2})
    first = result.trials.iloc[0]
    assert first["state"] == "complete" and 0 < first["time_to_accuracy"] < math.inf  # 1% is reached at once
    epochs = labkit.Store(store.path).metrics(int(first["run_id"]), "epoch")
    assert first["time_to_accuracy"] == pytest.approx(epochs["time_s"].iloc[0])
    again = labkit.tune({"lr": [0.05, 0.2]}, objectives=("time_to_accuracy",), target_accuracy=0.01,
                        sampler="grid", trials=5, store=store, study="continued", progress=False, quiet=True,
                        **{**TINY, "epochs": 2})
    assert len(again.trials) == 2  # the grid's other point only: grid trials are capped at its size
    assert len(TuneResult.load("continued", store=store).trials) == 2
    joined = Tuner.joining("continued", f"sqlite:///{store.path}", store=store, progress=False, quiet=True)
    assert joined.objectives == ("time_to_accuracy",) and joined.config.epochs == 2 and joined.budget() == 0
    with pytest.raises(ValueError, match="no labkit study 'elsewhere'"):
        Tuner.joining("elsewhere", f"sqlite:///{store.path}", store=store)
    with pytest.raises(ValueError, match="searched another space"):
        labkit.tune({"lr": [0.05, 0.3]}, objectives=("time_to_accuracy",), target_accuracy=0.01, store=store,
                    study="continued", progress=False, **{**TINY, "epochs": 2})
    with pytest.raises(ValueError, match="no study 'nope'"):
        TuneResult.load("nope", store=store)


def test_figures_and_importances_follow_the_trials(store):
    result = labkit.tune({"lr": [0.01, 0.3], "width": [4, 32]}, objectives=("accuracy", "throughput"),
                         sampler="grid", trials=4, store=store, progress=False, quiet=True, **TINY)
    pareto = result.pareto_figure()
    assert sorted(pareto.data[0].customdata) == [0, 1, 2, 3]
    assert sorted(pareto.data[1].customdata) == sorted(result.best["trial"])
    assert "lr=" in pareto.data[0].hovertext[0]
    history = result.history_figure()
    best_accuracy = [y for y in history.data[1].y]
    assert best_accuracy == sorted(best_accuracy) and best_accuracy[-1] == result.trials["accuracy"].max()
    importances = result.importances("throughput")
    assert set(importances) == {"lr", "width"} and sum(importances.values()) == pytest.approx(1.0)
    assert importances["width"] > importances["lr"]  # width 32 costs ~50x the FLOPs of 4; lr costs nothing
    assert "Pareto:" in result.summary()


def test_stop_ends_the_trial_in_progress_and_the_study(store):
    tuner = Tuner(SPACE, sampler="random", trials=50, store=store, progress=False, quiet=True,
                  **{**TINY, "epochs": 200})
    found = {}
    thread = threading.Thread(target=lambda: found.setdefault("result", tuner.run()))
    thread.start()
    wait_until(lambda: tuner._controls is not None, what="a trial to start")
    tuner.stop()
    thread.join(60)
    result = found["result"]
    assert result.status == "stopped" and list(result.trials["state"]) == ["fail"]
    assert "stopped" in result.trials["error"].iloc[0]
    assert store.runs()["status"].tolist() == ["stopped"]


def test_the_cli_tunes_a_space_from_a_file(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"low": 0.01, "high": 1.0}, "batch_size": [32, 64]}))
    db = tmp_path / "cli.db"
    args = ["--space", str(space), "--trials", "2", "--sampler", "random", "--objectives", "accuracy,throughput",
            "--db", str(db), "--study", "cli", "--train-size", "256", "--test-size", "64", "--epochs", "1",
            "--batch-size", "32", "--width", "8", "--log-every", "2", "--timing-warmup", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "labkit", "tune", *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "study cli (random, completed): 2 trials 2 complete" in done.stdout
    assert "2/2" in done.stderr  # the progress bar over trials
    assert len(labkit.runs(db).query("study == 'cli'")) == 2
    listed = subprocess.run([sys.executable, "-m", "labkit", "runs", "--db", str(db), "--study", "cli"],
                            capture_output=True, text=True, env=env, timeout=60)
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:5] == ["id", "status", "started", "study", "trial"] and len(lines) == 3
    space.write_text("[1, 2]")
    bad = subprocess.run([sys.executable, "-m", "labkit", "tune", *args], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "give a JSON object" in bad.stderr


def test_two_workers_share_a_study_and_a_killed_one_leaves_its_trial_failed(store):
    # Two worker processes against one study (the store's SQLite file); each trial long enough to be killed.
    tuner = Tuner({"lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}, sampler="grid", trials=6, workers=2, store=store,
                  pruner="none", progress=False, quiet=True, **{**TINY, "epochs": 6})
    found = {}
    thread = threading.Thread(target=lambda: found.setdefault("result", tuner.run()))
    thread.start()
    # Kill the worker of the first run that starts training; its trial must end failed, the other worker goes on.
    def training():
        with sqlite3.connect(store.path) as db:
            return [pid for (pid,) in db.execute("SELECT pid FROM runs WHERE status = 'running'")]

    def victim():  # a trial in progress whose worker's run is training
        pids = training()
        return next((t for t in tuner.study.get_trials(deepcopy=False)
                     if t.state.name == "RUNNING" and t.user_attrs.get("pid") in pids), None)

    wait_until(victim, timeout=60, what="a trial's run to start")
    victim = victim()
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    thread.join(180)
    result = found["result"]
    trials = result.trials.set_index("trial")
    assert trials.loc[victim.number, "state"] == "fail"
    assert f"pid {victim.user_attrs['pid']}" in trials.loc[victim.number, "error"]
    assert len(trials) == 6 and (trials["state"] == "complete").sum() >= 4
    pids = {t.user_attrs["pid"] for t in tuner.study.get_trials(deepcopy=False)}
    assert len(pids) == 2  # both workers took trials
    runs = labkit.Store(store.path).runs()  # the killed run is "interrupted" in the store: nothing else is lost
    assert (runs["status"] == "interrupted").sum() == 1 and (runs["status"] == "completed").sum() >= 4


def test_tunelab_streams_trials_and_opens_a_clicked_one_in_a_lab(store):
    tl = labkit.TuneLab(SPACE, objectives=("accuracy", "throughput"), sampler="random", trials=3, store=store,
                        **TINY)
    with pytest.raises(ValueError, match="not started"):
        tl.select(0)
    tl.start()
    result = tl.wait(120)
    assert result is not None and result.status == "completed" and len(tl.rows) == 3
    assert "3 of 3 trials" in tl.status.value and "completed" in tl.status.value
    assert sorted(tl.pareto_fig.data[0].customdata) == [0, 1, 2]  # the chart follows the study
    assert len(tl.history_fig.data[1].y) == 3
    assert tl.table.value.count("</tr>") == 4 and "None" not in tl.table.value  # header + 3 trials
    trace = tl.pareto_fig.data[0]
    tl._on_click(trace, Points(point_inds=[1], xs=[trace.x[1]], ys=[trace.y[1]], trace_name=trace.name,
                               trace_index=0))
    chosen = int(trace.customdata[1])
    assert tl.selected == chosen and f"trial {chosen}" in tl.chosen.value and not tl.open_button.disabled
    lab = tl.open_lab()
    assert lab.base.lr == pytest.approx(result.trials.set_index("trial").loc[chosen, "lr"])
    assert tl.lab_box.children[1] is lab.widget


def test_tunelab_refuses_bad_settings_at_once_and_stop_ends_the_study(store):
    with pytest.raises(ValueError, match="not a run setting"):
        labkit.TuneLab({"speed": [1]}, store=store)
    tl = labkit.TuneLab(SPACE, sampler="random", trials=10, store=store, **{**TINY, "epochs": 100})
    tl.start()
    wait_until(lambda: tl.tuner._controls is not None, what="a trial to start")
    tl.stop()
    result = tl.wait(60)
    assert result.status == "stopped" and "stopped" in tl.status.value


def test_ablation_measures_each_technique_against_its_leave_one_out(store):
    result = labkit.ablate(augment="flip", width=8, optimizer="adamw", seeds=[0, 1], store=store,
                           progress=False, quiet=True, **{k: v for k, v in TINY.items() if k != "width"})
    table = result.table.set_index("setting")
    assert list(table.index) == ["all", "without augment", "without optimizer"]
    assert (table["runs"] == 2).all() and len(result.runs) == 6
    runs = result.runs
    for technique, knob, default in (("augment", "augment", "flip-crop"), ("optimizer", "optimizer", "nesterov")):
        ids = runs[runs["setting"] == f"without {technique}"]["run_id"]
        assert set(store.runs().set_index("id").loc[list(ids), knob]) == {default}
    # the contribution is the seed-paired difference: recompute it from the runs
    full = runs[runs["setting"] == "all"].set_index("seed")["accuracy"]
    without = runs[runs["setting"] == "without optimizer"].set_index("seed")["accuracy"]
    assert table.loc["without optimizer", "accuracy_contribution"] == pytest.approx((full - without).mean())
    speed = (runs[runs["setting"] == "all"].set_index("seed")["throughput"]
             / runs[runs["setting"] == "without augment"].set_index("seed")["throughput"] - 1)
    assert table.loc["without augment", "throughput_contribution"] == pytest.approx(speed.mean())
    assert len(result.verdicts()) == 2 and "noise" in result.verdicts()[0]
    fig = result.figure()
    assert list(fig.data[0].x) == ["augment", "optimizer"]
    with pytest.raises(ValueError, match="changes no technique"):
        labkit.ablate(width=8, store=store)
    with pytest.raises(ValueError, match="\\['precision'\\] is not in the combination"):
        labkit.ablate(augment="flip", techniques=["precision"], store=store)


def test_hypervolume_and_replay_on_a_measured_table():
    from labkit.tuning import hypervolume, replay, trials_to_reach

    front = pd.DataFrame({"accuracy": [0.9, 0.8, 0.5, 0.7], "throughput": [100.0, 200.0, 300.0, 150.0]})
    ref = {"accuracy": 0.0, "throughput": 0.0}
    # the dominated (0.7, 150) adds nothing: 0.9*100 + 0.8*(200-100) + 0.5*(300-200)
    assert hypervolume(front, ("accuracy", "throughput"), ref) == pytest.approx(90 + 80 + 50)
    assert hypervolume(front.iloc[:1], ("accuracy", "throughput"), ref) == pytest.approx(90)
    memory = pd.DataFrame({"accuracy": [0.9, 0.8], "peak_memory": [100.0, 50.0]})  # memory: less is better
    assert hypervolume(memory, ("accuracy", "peak_memory"), {"accuracy": 0.0, "peak_memory": 200.0}) == \
        pytest.approx(0.9 * 100 + 0.8 * 50)
    table = pd.DataFrame([{"lr": lr, "width": w, "accuracy": 0.5 + lr, "throughput": 1000.0 / w}
                          for lr in (0.1, 0.2, 0.3) for w in (8, 16)])
    order = replay(table, ["lr", "width"], ("accuracy", "throughput"), "grid", 100, seed=0)
    assert len(order) == 6 and len(order.drop_duplicates(["lr", "width"])) == 6  # every point once, then stop
    row = order.iloc[0]
    assert row["accuracy"] == pytest.approx(0.5 + row["lr"]) and row["throughput"] == pytest.approx(1000 / row["width"])
    whole = hypervolume(table, ("accuracy", "throughput"), ref)
    assert trials_to_reach(order, ("accuracy", "throughput"), ref, whole) <= 6
    assert trials_to_reach(order.iloc[:1], ("accuracy", "throughput"), ref, 2 * whole) is None
    assert len(replay(table, ["lr", "width"], ("accuracy", "throughput"), "tpe", 8, seed=0)) == 8


def test_a_study_in_optunas_journal_file(tmp_path, store):
    journal = f"journal:{tmp_path / 'study.log'}"
    result = labkit.tune({"lr": [0.05, 0.1]}, sampler="grid", trials=2, store=store, storage=journal, study="j",
                         progress=False, quiet=True, **TINY)
    assert list(result.trials["state"]) == ["complete", "complete"]
    assert (tmp_path / "study.log").stat().st_size > 0
    assert len(TuneResult.load("j", journal).trials) == 2 and list(store.runs()["study"]) == ["j", "j"]


def test_ctrl_c_in_the_cli_records_the_trial_and_its_run_as_stopped(tmp_path):
    db = tmp_path / "int.db"
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": [0.05, 0.1]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "tune", "--space", str(space), "--db", str(db),
                             "--study", "int", "--quiet", "--train-size", "256", "--test-size", "64",
                             "--epochs", "500", "--width", "8"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def training():
        if not db.exists():
            return False
        with sqlite3.connect(db) as connection:
            try:
                return connection.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0] > 0
            except sqlite3.OperationalError:  # the tables are not there yet
                return False

    wait_until(training, timeout=60, what="the first trial's run to start")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped by SIGINT" in err
    assert labkit.runs(db)["status"].tolist() == ["stopped"]
    trial = TuneResult.load("int", store=db).trials.iloc[0]
    assert trial["state"] == "fail" and "interrupted" in trial["error"]
