"""labkit.record and the helpers the lessons use; the notebook runner behind `labkit notebooks`."""
from __future__ import annotations

import json
import math
import sys

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import labkit
from labkit import cli, lessons
from labkit.lessons import runner as nbrun


@pytest.fixture(autouse=True)
def _no_ambient_metrics(monkeypatch):
    """No metrics file unless a test sets one (a stray `metrics_path` in __main__ or the environment)."""
    monkeypatch.delenv(lessons.METRICS_ENV, raising=False)
    monkeypatch.delattr(sys.modules["__main__"], "metrics_path", raising=False)
    monkeypatch.setattr(lessons, "_lesson_file", None)


# ---- record ----------------------------------------------------------------------------------------------------
def test_record_is_exported():
    assert labkit.record is lessons.record


def test_record_writes_and_merges(tmp_path):
    path = tmp_path / "sub" / "m.json"
    assert lessons.record("a", 1.5, path) == 1.5
    lessons.record("b", 2, path)
    lessons.record("a", 3.0, path)  # a later value replaces the earlier one
    assert json.loads(path.read_text()) == {"a": 3.0, "b": 2}
    assert lessons.read_metrics(path) == {"a": 3.0, "b": 2}
    assert not list(path.parent.glob("*.tmp"))  # written through a temporary file, renamed


def test_record_converts_numpy_torch_and_non_finite(tmp_path):
    path = tmp_path / "m.json"
    lessons.record("np", np.float32(0.25), path)
    lessons.record("t", torch.tensor(7), path)
    lessons.record("nan", float("nan"), path)
    lessons.record("inf", np.float64("inf"), path)
    lessons.record("list", [1, np.int64(2), float("nan")], path)
    lessons.record("text", "bf16", path)
    figures = json.loads(path.read_text())  # strict JSON: no NaN literals
    assert figures == {"np": 0.25, "t": 7, "nan": None, "inf": None, "list": [1, 2, None], "text": "bf16"}
    assert isinstance(figures["t"], int)


def test_record_rejects_what_json_cannot_hold(tmp_path):
    with pytest.raises(TypeError):
        lessons.record("obj", object(), tmp_path / "m.json")
    with pytest.raises(ValueError):
        lessons.record("", 1, tmp_path / "m.json")


def test_record_finds_the_notebooks_metrics_path(tmp_path, monkeypatch):
    """A notebook sets `metrics_path` in its parameters cell: the kernel's __main__ namespace."""
    path = tmp_path / "nb.json"
    monkeypatch.setattr(sys.modules["__main__"], "metrics_path", str(path), raising=False)
    lessons.record("x", 1)
    assert lessons.read_metrics(path) == {"x": 1}


def test_record_falls_back_to_the_environment_then_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "metrics_path", None, raising=False)  # the lessons' default
    lessons.record("only_in_memory", 4)
    assert lessons.recorded()["only_in_memory"] == 4
    assert lessons.metrics_file() is None
    monkeypatch.setenv(lessons.METRICS_ENV, str(tmp_path / "env.json"))
    lessons.record("y", 5)
    assert lessons.read_metrics(tmp_path / "env.json") == {"y": 5}


# ---- helpers -----------------------------------------------------------------------------------------------------
def test_hardware_names_the_cpu_and_torch():
    line = lessons.hardware("cpu")
    assert line.startswith("CPU ") and f"torch {torch.__version__}" in line and "bf16 units" in line


def test_reference_tables():
    table = lessons.reference("pruning")
    assert list(table.columns) == ["result", "hardware", "source"]
    assert table["result"].str.contains("1.38x").any()
    with pytest.raises(ValueError, match="unknown topic"):
        lessons.reference("nope")


@pytest.mark.slow
def test_sweep_runs_each_setting_in_turn(capsys):
    table, runs = lessons.sweep("amp", ["off", "bf16"], repeats=2, store=False, train_size=256, test_size=64,
                                batch_size=64, epochs=1, timing_warmup=1, log_every=1, device="cpu")
    assert list(table["amp"]) == ["off", "bf16"] and set(runs) == {"off", "bf16"}
    assert runs["bf16"].config.amp == "bf16"
    assert (table["status"] == "completed").all() and (table["throughput"] > 0).all()
    assert capsys.readouterr().out.count("amp=") == 4  # two settings, two turns each
    stacked = lessons.curves(runs, "amp")
    assert set(stacked["amp"]) == {"off", "bf16"} and "loss" in stacked


@pytest.mark.slow
def test_sweep_with_labelled_settings():
    table, runs = lessons.sweep("setting", {"masks": {"prune": 0.5}, "dense": {"prune": 0.0}}, store=False,
                                quiet=True, train_size=256, test_size=64, batch_size=64, epochs=2,
                                timing_warmup=1, log_every=1, device="cpu")
    assert list(table["setting"]) == ["masks", "dense"]
    assert table.set_index("setting").loc["masks", "sparsity"] == pytest.approx(0.5, abs=0.01)
    assert table.set_index("setting").loc["dense", "sparsity"] == 0.0


@pytest.mark.slow
def test_sweep_over_seeds_gives_mean_and_spread(capsys):
    table, runs = lessons.sweep("augment", ["none", "flip"], seeds=[0, 1], store=False, train_size=256,
                                test_size=64, batch_size=64, epochs=1, timing_warmup=1, log_every=2, device="cpu")
    assert list(table["runs"]) == [2, 2]
    out = capsys.readouterr().out
    assert out.count("(seed 0)") == 2 and out.count("(seed 1)") == 2  # each seed ran each setting
    assert runs["flip"].config.seed == 1  # the last run kept per setting
    assert (table["final_loss_std"] > 0).all()  # two seeds do not train the same way
    assert table["accuracy"].between(0, 1).all() and (table["accuracy_std"] >= 0).all()
    with pytest.raises(ValueError, match="seeds=\\[\\]"):
        lessons.sweep("augment", ["none"], seeds=[], store=False)


def test_difference_says_when_it_is_within_the_noise():
    import pandas as pd

    table = pd.DataFrame({"k": ["a", "b", "c"], "accuracy": [0.50, 0.52, 0.60], "accuracy_std": [0.02, 0.015, 0.01],
                          "runs": [3, 3, 3]})
    assert "within the noise" in lessons.difference(table, "k", "a", "b")
    assert "+2.0 pts" in lessons.difference(table, "k", "a", "b")
    assert "beyond the noise" in lessons.difference(table, "k", "a", "c")
    one = table.assign(runs=1, accuracy_std=0.0)
    assert "from one run each" in lessons.difference(one, "k", "a", "c")


def test_reference_puts_your_figures_first():
    table = lessons.reference("pruning", mine={"speed-up at 50% channels": 1.31})
    assert table.iloc[0]["result"] == "speed-up at 50% channels: 1.31"
    assert table.iloc[0]["source"] == "you, in this notebook" and table.iloc[0]["hardware"] == lessons.machine()
    assert len(table) == len(lessons.REFERENCES["pruning"]) + 1


def test_begin_records_the_machine_and_starts_the_lesson_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    stale = tmp_path / "lessons" / "99_test.metrics.json"
    stale.parent.mkdir()
    stale.write_text('{"old": 1}')
    line = lessons.begin("99_test", "cpu")
    assert line in capsys.readouterr().out and line.startswith("CPU ")
    lessons.record("x", 2.0)
    figures = lessons.read_metrics(stale)
    assert "old" not in figures and figures["x"] == 2.0 and figures["lesson"] == "99_test"
    assert figures["device_type"] == "cpu" and figures["gpu"] is False and figures["fp16_native"] is False
    assert figures["bf16_native"] != figures["bf16_emulated"]  # a CPU runs bf16, natively or not


def test_begin_leaves_a_set_metrics_path_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv(lessons.METRICS_ENV, str(tmp_path / "ci.json"))
    lessons.begin("99_test", "cpu")
    assert lessons.read_metrics(tmp_path / "ci.json")["lesson"] == "99_test"
    assert not (tmp_path / "data").exists()


# ---- predictions -------------------------------------------------------------------------------------------------
def test_reveal_closes_a_number_prediction(capsys):
    lessons.predict("speedup", "bf16 / fp32 here?", number=True, answer=1.5)
    text = lessons.reveal("speedup", 0.1, "emulated here", unit="x")
    assert "you said 1.5x" in text and "measured here: 0.1x" in text and "15x too high" in text
    assert "why: emulated here" in text and text in capsys.readouterr().out
    assert lessons.recorded()["prediction_speedup"] == 1.5
    lessons.predict("speedup", "bf16 / fp32 here?", number=True, answer=1.1)
    assert "close" in lessons.reveal("speedup", 1.0)
    lessons.predict("speedup", "bf16 / fp32 here?", number=True, answer=0.5)
    assert "2x too low" in lessons.reveal("speedup", 1.0)


def test_reveal_closes_a_choice_and_headless_runs_still_get_the_measurement():
    lessons.predict("fastest", "which is fastest?", ["a", "b"], answer="a")
    assert "you said a" in lessons.reveal("fastest", "a") and "right" in lessons.reveal("fastest", "a")
    assert "not on this machine" in lessons.reveal("fastest", "b")
    lessons.predict("unanswered", "which?", ["a", "b"])  # headless: nobody answers
    text = lessons.reveal("unanswered", "b", "because")
    assert "no prediction recorded · measured here: b" in text and "prediction_unanswered" not in lessons.recorded()
    assert "not measured here" in lessons.reveal("fastest", None)
    assert "no prediction recorded" in lessons.reveal("never_asked", 3.0)


def test_predict_refuses_what_cannot_be_answered():
    with pytest.raises(ValueError, match="choices=\\[...\\] or number=True"):
        lessons.predict("x", "?")
    with pytest.raises(ValueError, match="at least two choices"):
        lessons.predict("x", "?", ["only"])
    with pytest.raises(ValueError, match="not one of the choices"):
        lessons.predict("x", "?", ["a", "b"], answer="c")


def test_predict_in_jupyter_reads_the_widget(monkeypatch):
    from labkit.lessons import teach

    monkeypatch.setattr(teach, "_in_kernel", lambda: True)
    number = lessons.predict("n", "how many?", number=True)
    assert "application/vnd.jupyter.widget-view+json" in number._repr_mimebundle_()
    number.widget.value = " 1.5x"
    assert "you said 1.5" in lessons.reveal("n", 1.5)
    number.widget.value = "lots"
    assert "'lots' is not a number" in lessons.reveal("n", 1.5)
    choice = lessons.predict("c", "which?", ["yes", "no"])
    assert "no prediction recorded" in lessons.reveal("c", "no")
    choice.widget.value = "no"
    assert "right" in lessons.reveal("c", "no")


# ---- claims ------------------------------------------------------------------------------------------------------
def _claims():
    return [lessons.Claim("bf16 >= 1.3x fp32", "bf16_speedup", at_least=1.3, when="bf16_native", where="native"),
            lessons.Claim("bf16 <= 0.33x fp32", "bf16_speedup", at_most=0.33, when="bf16_emulated"),
            lessons.Claim("gap small", "gap", at_least=0.0, at_most=0.03),
            lessons.Claim("never measured", "nothing", at_most=1.0)]


def test_claims_are_judged_on_the_recorded_figures():
    from labkit.lessons import teach

    lessons.claims(*_claims())
    for name, value in {"bf16_native": True, "bf16_emulated": False, "bf16_speedup": 0.9, "gap": 0.01}.items():
        lessons.record(name, value)
    table = lessons.claims_table()
    assert list(table["verdict"]) == ["does not hold here", "not applicable here", "holds", "not measured"]
    assert list(table["band"]) == [">= 1.3", "<= 0.33", "0 to 0.03", "<= 1"]
    assert table.iloc[0]["measured"] == 0.9 and table.iloc[0]["applies where"] == "native"
    # the verdicts need nothing but the recorded figures (what `labkit notebooks` and the class report read)
    figures = json.loads(json.dumps(lessons.recorded()))
    assert [r["verdict"] for r in teach.judge(figures)] == list(table["verdict"])
    assert teach.judge({**figures, "bf16_speedup": 1.6})[0]["verdict"] == "holds"
    assert teach.judge({k: v for k, v in figures.items() if k != "bf16_native"})[0]["verdict"] == "not measured"


def test_labkit_notebooks_prints_each_lessons_claims():
    from dataclasses import asdict

    figures = {"claims": [asdict(c) for c in _claims()], "bf16_native": False, "bf16_emulated": True,
               "bf16_speedup": 0.08, "gap": 0.05}
    text = nbrun.report([nbrun.NotebookRun("01_mixed_precision", "ok", 30.0, figures),
                         nbrun.NotebookRun("02_batch_size", "ok", 30.0, {"x": 1.0})])
    claims = text.split("Claims on this machine")[1]
    assert "01_mixed_precision" in claims and "02_batch_size" not in claims  # only lessons with claims
    lines = claims.splitlines()
    assert any(l.split()[:3] == ["not", "applicable", "here"] and "bf16 >= 1.3x" in l for l in lines)
    assert any(l.strip().startswith("holds") and "bf16_speedup = 0.08" in l for l in lines)
    assert any(l.strip().startswith("does not hold here") and "gap = 0.05" in l for l in lines)
    assert "claims " not in text.split("Claims on this machine")[0]  # not listed as a figure
    assert "2 of 2 notebooks ok" in text  # a claim never fails a notebook


def test_a_claim_needs_a_band_and_claims_need_claims():
    with pytest.raises(ValueError, match="at_least, at_most or both"):
        lessons.Claim("vague", "x")
    with pytest.raises(TypeError, match="Claim objects"):
        lessons.claims({"text": "a dict"})


# ---- exercises ---------------------------------------------------------------------------------------------------
def test_an_exercise_not_attempted_wrong_or_right(capsys):
    from labkit.lessons.exercises import ExerciseNotPassed
    from labkit.techniques.augment import blend

    def unsolved(x, y, lam, perm, num_classes):
        raise NotImplementedError

    def forgot_the_targets(x, y, lam, perm, num_classes):
        return lam * x + (1 - lam) * x[perm], torch.nn.functional.one_hot(y, num_classes).float()

    def right(x, y, lam, perm, num_classes):
        return blend(x, torch.nn.functional.one_hot(y, num_classes).float(), lam, perm)

    assert lessons.check("mixup", unsolved) is False
    assert "not attempted yet" in capsys.readouterr().out
    assert lessons.check("mixup", forgot_the_targets) is False
    assert "item 1 of the result" in capsys.readouterr().out  # the images were right, the targets not
    assert lessons.check("mixup", right) is True
    assert "correct" in capsys.readouterr().out
    with pytest.raises(ExerciseNotPassed, match="not attempted"):
        lessons.check("mixup", unsolved, strict=True)
    with pytest.raises(ValueError, match="no exercise 'nope'"):
        lessons.check("nope", right)


def test_exercise_checks_catch_near_misses():
    """Each check fails a plausible wrong answer (the case a student would get wrong), passes the real thing."""
    from torch.nn.utils import prune

    from labkit.techniques.schedule import lr_factor

    assert lessons.check("bf16_round", lambda x: x.to(torch.bfloat16).float())
    truncate = lambda x: (x.view(torch.int32) & ~0xFFFF).view(torch.float32)  # noqa: E731 - no rounding
    assert not lessons.check("bf16_round", truncate)
    assert lessons.check("warmup", lambda p, lr, w: lr * lr_factor(p, "onecycle", w))
    assert not lessons.check("warmup", lambda p, lr, w: lr * min(1.0, p / w))  # warm-up without the decay

    def masks_per_layer(weights, amount):  # local, not global: the classic mistake
        return [w.abs() > w.abs().flatten().kthvalue(max(1, round(amount * w.numel()))).values for w in weights]

    assert not lessons.check("global_mask", masks_per_layer)

    def raises(x):
        raise RuntimeError("boom")

    assert not lessons.check("bf16_round", raises)

    def scale_never_grows(scale, good, inf, interval):
        return (scale / 2, 0) if inf else (scale, good + 1)

    assert not lessons.check("loss_scale", scale_never_grows)

    def adam_with_l2(p, g, m, v, t, lr, wd):  # weight decay added to the gradient: Adam, not AdamW
        g = g + wd * p
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        return p - lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8), m, v

    assert not lessons.check("adamw", adam_with_l2)

    def summed_not_averaged(model, x, y, k):  # each micro-batch's mean loss, not divided by k
        for xb, yb in zip(x.chunk(k), y.chunk(k)):
            torch.nn.functional.cross_entropy(model(xb), yb).backward()

    assert not lessons.check("grad_accum", summed_not_averaged)
    assert not lessons.check("nhwc_strides", lambda shape: torch.empty(shape).stride())  # NCHW's
    assert lessons.check("nhwc_strides", lambda s: torch.empty(s, memory_format=torch.channels_last).stride())

    def ring_bytes(model, nproc):  # every parameter, in 4 bytes each: forgets frozen layers and bf16 weights
        return 2 * (nproc - 1) / nproc * 4 * sum(p.numel() for p in model.parameters())

    assert not lessons.check("ring_allreduce", ring_bytes)
    assert lessons.check("ring_allreduce", lambda model, nproc: 2 * (nproc - 1) / nproc * sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad))
    del prune


def test_panel_is_a_lab_preset_to_the_settings_that_trains_nothing_yet():
    lab = lessons.panel(amp="fp16", batch_size=64, train_size=512, epochs=3)
    assert isinstance(lab, labkit.Lab) and lab.run is None and "ready" in lab.status.value
    c = lab.config
    assert (c.amp, c.batch_size, c.train_size, c.epochs) == ("fp16", 64, 512, 3)


# ---- baselines ---------------------------------------------------------------------------------------------------
def test_bands_min_max_and_value_tol():
    assert nbrun.band_limits({"min": 0.1}) == (0.1, math.inf)
    assert nbrun.band_limits({"value": 0.5, "tol": 0.01}) == pytest.approx((0.49, 0.51))
    for bad in ({}, {"value": 1}, {"value": 1, "tol": 1, "min": 0}, {"low": 1}, [0, 1]):
        with pytest.raises(ValueError):
            nbrun.band_limits(bad)


def test_check_figures_fails_missing_nan_and_out_of_band():
    bands = {"acc": {"min": 0.5, "max": 1.0}, "sparsity": {"value": 0.5, "tol": 0.01}, "loss": {"max": 10},
             "gone": {"min": 0}, "flag": {"min": 0}}
    figures = {"acc": 0.7, "sparsity": 0.52, "loss": None, "flag": True}
    checks = {c.name: c for c in nbrun.check_figures(figures, bands)}
    assert checks["acc"].ok
    assert not checks["sparsity"].ok and "outside" in checks["sparsity"].reason
    assert not checks["loss"].ok and "not a number" in checks["loss"].reason  # NaN was recorded as null
    assert not checks["gone"].ok and checks["gone"].reason == "not recorded"
    assert not checks["flag"].ok  # a bool is not a measured figure
    assert nbrun.check_figures({"sparsity": 0.505}, {"sparsity": {"value": 0.5, "tol": 0.01}})[0].ok


def test_load_spec_rejects_bad_files(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="notebooks"):
        nbrun.load_spec(path)
    path.write_text(json.dumps({"notebooks": {"a": {"parameters": {}, "baseline": {}}}}))
    with pytest.raises(ValueError, match="unknown keys"):
        nbrun.load_spec(path)
    path.write_text(json.dumps({"notebooks": {"a": {"baselines": {"acc": {"mn": 1}}}}}))
    with pytest.raises(ValueError, match="a.acc"):
        nbrun.load_spec(path)


# ---- the runner on tiny notebooks --------------------------------------------------------------------------------
def _notebook(path, body: str, parameters: str | None = "metrics_path = None\nn = 1"):
    cells = [new_markdown_cell("# tiny")]
    if parameters is not None:
        cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    cells.append(new_code_cell(body))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _spec(**entries):
    return {"common": {}, "notebooks": entries}


@pytest.mark.slow
def test_runner_records_checks_and_reports(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    good = _notebook(src / "good.ipynb", "import labkit\nlabkit.record('n2', n * 2)\nlabkit.record('x', 0.5)")
    spec = _spec(good={"parameters": {"n": 21}, "baselines": {"n2": {"value": 42, "tol": 0},
                                                              "x": {"min": 0.6}}})
    out = tmp_path / "build"
    run = nbrun.run_notebook(good, spec, out_dir=out)
    assert run.figures == {"n2": 42, "x": 0.5}  # papermill injected n=21 and the metrics path
    assert run.status == "off-baseline" and [c.ok for c in run.checks] == [True, False]
    assert run.output == out / "good.ipynb" and run.output.is_file()
    assert not (src / "good.metrics.json").exists() and (out / "good.metrics.json").is_file()
    text = nbrun.report([run])
    assert "good" in text and "off-baseline" in text and "FAIL: outside [0.6, inf]" in text
    assert "0 of 1 notebooks ok" in text

    spec["notebooks"]["good"]["baselines"]["x"] = {"max": 0.5}
    assert nbrun.run_notebook(good, spec, out_dir=out).status == "ok"


@pytest.mark.slow
def test_runner_reports_cell_errors_and_missing_pieces(tmp_path):
    broken = _notebook(tmp_path / "broken.ipynb", "import labkit\nlabkit.record('a', 1)\n1 / 0")
    bare = _notebook(tmp_path / "bare.ipynb", "pass", parameters=None)
    orphan = _notebook(tmp_path / "orphan.ipynb", "pass")
    spec = _spec(broken={"parameters": {}, "baselines": {"a": {"min": 0}}},
                 bare={"parameters": {}, "baselines": {}})
    runs = {r.name: r for r in (nbrun.run_notebook(p, spec, out_dir=tmp_path / "out")
                                for p in (broken, bare, orphan))}
    assert runs["broken"].status == "error" and "ZeroDivisionError" in runs["broken"].error
    assert runs["broken"].figures == {"a": 1}  # what was recorded before the error is kept
    assert runs["bare"].status == "no-parameters"
    assert runs["orphan"].status == "no-baseline"
    # baselines may come from a second file (full-size parameters with the CI baselines)
    base = _spec(orphan={"baselines": {}})
    assert nbrun.run_notebook(orphan, spec, out_dir=tmp_path / "out", baselines=base).status == "ok"


@pytest.mark.slow
def test_cli_notebooks_runs_prints_and_exits(tmp_path, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "a.ipynb", "import labkit\nlabkit.record('v', n)")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(_spec(a={"parameters": {"n": 3}, "baselines": {"v": {"min": 1, "max": 5}}})))
    argv = ["notebooks", "--dir", str(folder), "--params", str(params), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "a " in out and " ok" in out and "1 of 1 notebooks ok" in out
    params.write_text(json.dumps(_spec(a={"parameters": {"n": 9}, "baselines": {"v": {"min": 1, "max": 5}}})))
    assert cli.main(argv) == 1
    assert "FAIL" in capsys.readouterr().out
    # executed copies never replace the notebooks themselves
    assert cli.main(argv[:-1] + [str(folder)]) == 2
    assert "own folder" in capsys.readouterr().err


def test_strip_and_update_references(tmp_path):
    cells = [new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"), new_code_cell("print(2)")]
    src = tmp_path / "n.ipynb"
    nbformat.write(new_notebook(cells=cells), src)
    done = nbformat.read(src, as_version=4)
    for cell, text in zip(done.cells, ("1\n", "2\n")):
        cell.outputs = [new_output("stream", name="stdout", text=text)]
        cell.execution_count = 3
    executed = tmp_path / "done.ipynb"
    nbformat.write(done, executed)
    assert nbrun.update_references(executed, src) == 1
    nb = nbformat.read(src, as_version=4)
    assert nb.cells[0].outputs[0]["text"] == "1\n" and nb.cells[1].outputs == []
    assert [c.execution_count for c in nb.cells] == [1, None]  # nbval compares only cells with a count
    assert nbrun.checked_cells(nb) == [0]
