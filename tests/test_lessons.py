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
