"""The lesson notebooks as a regression suite: each runs headless and what it teaches still holds.

Every notebook in notebooks/ is run by papermill (the kernel of this environment) with its CI parameters from
tests/notebook_ci.json, and the figures it records with `labkit.record` are checked against baselines. Then
nbval (lax mode) re-runs the notebooks and compares the cells marked `# NBVAL_CHECK_OUTPUT` with their
committed outputs, through the sanitizer tests/nbval_sanitize.cfg.

tests/notebook_ci.json, one entry per notebook, keyed by its file name without .ipynb:

    {"about": "...",
     "common": {},                                   # optional: parameters for every notebook
     "notebooks": {
       "01_mixed_precision": {
         "parameters": {"train_size": 1024, ...},    # papermill overrides; names must exist in the notebook's
                                                     # `parameters` cell; small enough for <= 90 s on 2 CPU cores
         "nbval_parameters": {...},                  # optional: extra overrides for the nbval run only
         "baselines": {                              # figures recorded with labkit.record(name, value)
           "accuracy_off": {"min": 0.1, "max": 1.0},         # a band: min and/or max
           "sparsity_masks_50": {"value": 0.5, "tol": 0.01}  # or value +- tol
         }}}}

A notebook with no `parameters` cell or no entry fails. A baseline figure that is not recorded, not a finite
number or outside its band fails. Throughput figures get broad bands only: timing on shared machines is noisy.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit.lessons import runner as nbrun

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
HANDS_ON = ["01_mixed_precision", "02_batch_size", "03_augmentation", "04_pruning", "05_optimizers",
            "06_compile_and_memory_format", "07_gradient_accumulation", "08_lr_schedules", "09_data_loading",
            "10_quantization", "11_distillation",
            "12_transfer_learning", "13_auto_tuning", "14_ablation", "15_distributed"]
CI_FILE = ROOT / "tests" / "notebook_ci.json"
SANITIZER = ROOT / "tests" / "nbval_sanitize.cfg"
# The 90 s budget holds on 2 dedicated cores; a shared or slower machine gets this much (seconds) per notebook.
TIME_LIMIT_S = float(os.environ.get("LABKIT_NOTEBOOK_TIME_LIMIT", "300"))


def _spec():
    return nbrun.load_spec(CI_FILE)


def _parameter_names(nb) -> set[str]:
    index = nbrun.parameters_cell(nb)
    tree = ast.parse(nb.cells[index].source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)}


def test_there_are_lessons():
    names = {p.stem for p in NOTEBOOKS}
    assert {"00_quickstart", "01_mixed_precision", "02_batch_size", "03_augmentation", "04_pruning",
            "05_optimizers"} <= names


def test_ci_file_has_no_entry_without_a_notebook():
    assert set(_spec()["notebooks"]) <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_ready_for_papermill(path):
    """A parameters cell, an entry with baselines, CI parameters it defines, metrics_path among them."""
    nb = nbformat.read(path, as_version=4)
    assert nbrun.parameters_cell(nb) is not None, f"{path.name}: no cell tagged 'parameters'"
    entry = _spec()["notebooks"].get(path.stem)
    assert entry is not None, f"{path.name}: no entry in {CI_FILE.name}"
    assert entry.get("baselines"), f"{path.name}: no baselines in {CI_FILE.name}"
    names = _parameter_names(nb)
    assert "metrics_path" in names
    unknown = (set(entry.get("parameters", {})) | set(entry.get("nbval_parameters", {}))
               | set(_spec()["common"])) - names
    assert not unknown, f"{path.name}: CI parameters {sorted(unknown)} are not in its parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_only_on_checked_cells(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if nbrun.CHECK_MARK not in cell.source:
                assert not cell.outputs, f"{path.name} cell {i}: outputs committed on an unchecked cell"
                assert cell.execution_count is None, f"{path.name} cell {i}: has an execution count"
            else:  # nbval skips the comparison for a cell without an execution count
                assert cell.outputs, f"{path.name} cell {i}: a checked cell without its reference output"
                assert cell.execution_count is not None, f"{path.name} cell {i}: a checked cell without a count"


def test_kernel_is_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("python3").argv
    # jupyter_client runs a bare "python" as sys.executable, the interpreter running these tests.
    assert argv[0] in ("python", "python3", sys.executable), argv


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_meets_baselines(path, tmp_path):
    run = nbrun.run_notebook(path, _spec(), out_dir=tmp_path)
    table = nbrun.report([run])
    assert run.error is None, table
    assert run.status == "ok", table
    assert run.seconds <= TIME_LIMIT_S, f"{path.name} took {run.seconds:.0f} s\n{table}"
    # the executed copy went to the output folder, never into notebooks/
    assert run.output == tmp_path / path.name and run.output.is_file()
    executed = nbformat.read(run.output, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # small enough to share: no widget state (each FigureWidget's carries plotly.js), no plotly.js per figure
    size = run.output.stat().st_size
    assert "widgets" not in executed.metadata and size <= 2 * 2**20, f"{path.name}: {size / 2**20:.1f} MB"
    # every loss a notebook records is finite (non-finite values are recorded as null)
    losses = {k: v for k, v in run.figures.items() if "loss" in k}
    assert all(isinstance(v, (int, float)) for v in losses.values()), losses


@pytest.mark.slow
def test_checked_outputs_with_nbval(tmp_path):
    """nbval in lax mode: cells marked # NBVAL_CHECK_OUTPUT must reproduce their committed outputs (each notebook
    run up to its last checked cell)."""
    spec = _spec()
    import papermill

    prepared = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        if not nbrun.checked_cells(nb):
            continue
        entry = spec["notebooks"].get(path.stem, {})
        parameters = {**spec["common"], **entry.get("parameters", {}), **entry.get("nbval_parameters", {})}
        out = tmp_path / path.name
        papermill.execute_notebook(str(path), str(out), parameters=parameters, prepare_only=True,
                                   kernel_name="python3")
        # Only the cells up to the last checked one can change a checked output (every cell runs to its end in
        # test_notebook_runs_and_meets_baselines): the rest would re-train for nothing.
        ready = nbformat.read(out, as_version=4)
        ready.cells = ready.cells[:max(nbrun.checked_cells(ready)) + 1]
        nbformat.write(ready, out)
        prepared.append(str(out))
    assert prepared, "no notebook has a # NBVAL_CHECK_OUTPUT cell"
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(tmp_path), "-p", "no:cacheprovider",
         "-p", "nbval", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZER), "-q", *prepared],
        cwd=ROOT / "notebooks", capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_ci_file_is_plain_json():
    json.loads(CI_FILE.read_text())  # no comments, no trailing commas: papermill and the CLI read it too


# ---- lessons that teach: exercises, their worked solutions, predictions and claims ------------------------------
def _code(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", HANDS_ON)
def test_lesson_teaches(name):
    """Each hands-on lesson asks predictions it reveals, declares claims, runs several seeds at full size, has a
    fill-in exercise with its check, and a worked solution that checks the same exercises strictly."""
    lesson = _code(nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4))
    predicted = set(re.findall(r'lessons\.predict\(\s*"(\w+)"', lesson))
    revealed = set(re.findall(r'lessons\.reveal\(\s*"(\w+)"', lesson))
    assert predicted and predicted == revealed, (predicted, revealed)
    assert "lessons.claims(" in lesson and "lessons.Claim(" in lesson
    assert f'lessons.begin("{name}"' in lesson
    exercises = set(re.findall(r'lessons\.check\(\s*"(\w+)"', lesson))
    assert exercises, f"{name}: no fill-in exercise (lessons.check)"
    assert "raise NotImplementedError" in lesson  # left for the student
    solution = ROOT / "notebooks" / "solutions" / f"{name}.ipynb"
    assert solution.is_file(), f"{name}: no worked solution in notebooks/solutions/"
    solved = _code(nbformat.read(solution, as_version=4))
    assert set(re.findall(r'lessons\.check\(\s*"(\w+)",\s*\w+,\s*strict=True\)', solved)) == exercises
    assert "NotImplementedError" not in solved
    params = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    names = _parameter_names(params)
    assert {"seeds", "dataset"} <= names, f"{name}: the parameters cell needs seeds and dataset"
    seeds = ast.literal_eval(next(line.split("=", 1)[1].split("#")[0] for line in
                                  params.cells[nbrun.parameters_cell(params)].source.splitlines()
                                  if line.startswith("seeds")))
    assert len(seeds) >= 3, f"{name}: full size compares accuracies over >= 3 seeds, not {seeds}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_worked_solutions_pass(path, tmp_path):
    """The worked solutions run headless and every strict check passes (a failing one raises in its cell)."""
    import papermill

    papermill.execute_notebook(str(path), str(tmp_path / path.name), kernel_name="python3", cwd=str(path.parent),
                               progress_bar=False, log_output=False, store_widget_state=False)
