"""Re-run the lesson notebooks headlessly and check what they record against baselines (`labkit notebooks`).

The parameters file (tests/notebook_ci.json is the CI one) is JSON:

    {"common": {"device": "cuda"},                      # optional: injected into every notebook
     "notebooks": {
        "01_mixed_precision": {                        # the notebook's file name without .ipynb
            "parameters": {"train_size": 1024, "amps": ["off", "bf16"]},
            "baselines": {"accuracy_off": {"min": 0.1, "max": 1.0},
                          "sparsity": {"value": 0.5, "tol": 0.01}}}}}

A baseline is a band: `min` and/or `max`, or `value` with `tol` (value - tol to value + tol). A figure named
in the baselines must be recorded, be a finite number and lie in its band. Each notebook writes its figures
(labkit.record) to `<out>/<name>.metrics.json`; papermill injects `metrics_path` with that path. Executed
copies go to the output folder (build/notebooks by default, which git ignores), never into notebooks/.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import teach

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: labkit/lessons/runner.py -> .
DEFAULT_NOTEBOOKS = ROOT / "notebooks"
DEFAULT_PARAMS = ROOT / "tests" / "notebook_ci.json"
DEFAULT_OUT = ROOT / "build" / "notebooks"


@dataclass
class Check:
    """One recorded figure against its baseline band."""
    name: str
    value: Any
    band: dict[str, float]
    ok: bool
    reason: str = ""

    def band_text(self) -> str:
        lo, hi = band_limits(self.band)
        return f"[{_num(lo)}, {_num(hi)}]"


@dataclass
class NotebookRun:
    name: str
    status: str  # "ok" | "error" (a cell failed) | "off-baseline" | "no-baseline" | "no-parameters" | "missing"
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    output: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---- the parameters file and baselines -------------------------------------------------------------------------
def load_spec(path: str | Path) -> dict[str, Any]:
    """The parameters file as {"common": {...}, "notebooks": {name: {"parameters": {}, "baselines": {}}}}."""
    spec = json.loads(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("notebooks"), dict):
        raise ValueError(f"{path}: expected a JSON object with a \"notebooks\" object (see labkit/lessons/runner.py)")
    for name, entry in spec["notebooks"].items():
        unknown = set(entry) - {"parameters", "baselines", "nbval_parameters", "about"}
        if unknown:
            raise ValueError(f"{path}: notebook {name!r} has unknown keys {sorted(unknown)}; use parameters, "
                             "baselines, nbval_parameters, about")
        for figure, band in entry.get("baselines", {}).items():
            band_limits(band, where=f"{path}: {name}.{figure}")
    spec.setdefault("common", {})
    return spec


def band_limits(band: dict[str, float], where: str = "baseline") -> tuple[float, float]:
    """(low, high) of a band given as min/max or value/tol."""
    if not isinstance(band, dict):
        raise ValueError(f"{where}: a band is an object with min/max or value/tol, not {band!r}")
    unknown = set(band) - {"min", "max", "value", "tol", "about"}
    if unknown:
        raise ValueError(f"{where}: unknown band keys {sorted(unknown)}; use min/max or value/tol")
    if "value" in band:
        if "tol" not in band or "min" in band or "max" in band:
            raise ValueError(f"{where}: give value with tol, without min/max")
        return band["value"] - band["tol"], band["value"] + band["tol"]
    if "min" not in band and "max" not in band:
        raise ValueError(f"{where}: a band needs min, max, or value and tol")
    return band.get("min", -math.inf), band.get("max", math.inf)


def check_figures(figures: dict[str, Any], baselines: dict[str, dict]) -> list[Check]:
    """Each baseline against the recorded figures: missing, non-numeric, non-finite or out-of-band fail."""
    checks = []
    for name, band in baselines.items():
        lo, hi = band_limits(band, where=name)
        if name not in figures:
            checks.append(Check(name, None, band, False, "not recorded"))
            continue
        value = figures[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            checks.append(Check(name, value, band, False, "not a number (NaN and inf are recorded as null)"))
        elif not math.isfinite(value):
            checks.append(Check(name, value, band, False, "not finite"))
        elif not lo <= value <= hi:
            checks.append(Check(name, value, band, False, f"outside [{_num(lo)}, {_num(hi)}]"))
        else:
            checks.append(Check(name, value, band, True))
    return checks


# ---- notebooks -------------------------------------------------------------------------------------------------
def notebook_paths(folder: str | Path = DEFAULT_NOTEBOOKS) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))


def parameters_cell(nb) -> int | None:
    """Index of the cell tagged `parameters`, or None."""
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def checked_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and CHECK_MARK in c.source]


def execute(path: Path, output: Path, parameters: dict[str, Any], kernel_name: str = "python3",
            timeout: float | None = None) -> tuple[float, str | None]:
    """Run one notebook with papermill; returns (seconds, error or None). The executed copy goes to `output`."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    try:
        # store_widget_state=False: the state of every FigureWidget carries its own copy of plotly.js (about
        # 5 MB each); executed copies keep the figures' static outputs and stay small enough to share.
        papermill.execute_notebook(str(path), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(path.parent), progress_bar=False, log_output=False,
                                   execution_timeout=timeout, store_widget_state=False)
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # noqa: BLE001 - a kernel that died, a timeout: reported per notebook
        error = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - start, error


def run_notebook(path: str | Path, spec: dict[str, Any], out_dir: str | Path = DEFAULT_OUT,
                 kernel_name: str = "python3", timeout: float | None = None,
                 baselines: dict[str, Any] | None = None) -> NotebookRun:
    """Run one notebook with its parameters from `spec` and check its figures against its baselines.

    The baselines are the notebook's entry in `spec`, else its entry in `baselines` (another spec, e.g. the CI
    file when `spec` holds full-size parameters only). A notebook in neither is reported as "no-baseline"."""
    import nbformat

    from . import read_metrics

    path = Path(path)
    name = path.stem
    out_dir = Path(out_dir)
    if out_dir.resolve() == path.parent.resolve():
        raise ValueError(f"out_dir={str(out_dir)!r} is the notebook's own folder: use a build folder.")
    nb = nbformat.read(path, as_version=4)
    if parameters_cell(nb) is None:
        return NotebookRun(name, "no-parameters", error="no cell is tagged 'parameters'")
    entry = spec["notebooks"].get(name, {})
    bands = entry.get("baselines")
    if bands is None and baselines is not None:
        bands = baselines["notebooks"].get(name, {}).get("baselines")
    if bands is None:
        return NotebookRun(name, "no-baseline", error="no baselines for it in the parameters file")
    metrics = (out_dir / f"{name}.metrics.json").resolve()
    metrics.unlink(missing_ok=True)
    parameters = {**spec.get("common", {}), **entry.get("parameters", {}), "metrics_path": str(metrics)}
    output = out_dir / path.name
    seconds, error = execute(path, output, parameters, kernel_name, timeout)
    figures = read_metrics(metrics)
    checks = check_figures(figures, bands)
    status = "error" if error else ("ok" if all(c.ok for c in checks) else "off-baseline")
    return NotebookRun(name, status, seconds, figures, checks, error, output)


def run_all(notebooks: Iterable[str | Path] | None = None, params: str | Path = DEFAULT_PARAMS,
            out_dir: str | Path = DEFAULT_OUT, kernel_name: str = "python3", timeout: float | None = None,
            baselines: str | Path | None = DEFAULT_PARAMS, echo=None) -> list[NotebookRun]:
    """Run notebooks (default: all in notebooks/) one after the other; see run_notebook."""
    spec = load_spec(params)
    paths = [Path(p) for p in notebooks] if notebooks is not None else notebook_paths()
    if any(Path(out_dir).resolve() == p.parent.resolve() for p in paths):
        raise ValueError(f"out_dir={str(out_dir)!r} is the notebooks' own folder: executed copies would replace "
                         "the lessons; use a build folder such as build/notebooks.")
    base = load_spec(baselines) if baselines is not None and Path(baselines).is_file() else None
    runs = []
    for path in paths:
        if not path.is_file():
            runs.append(NotebookRun(path.stem, "missing", error=f"{path} does not exist"))
            continue
        if echo:
            echo(f"running {path.name} ...")
        runs.append(run_notebook(path, spec, out_dir, kernel_name, timeout, base))
    return runs


def report(runs: list[NotebookRun]) -> str:
    """A table: each notebook's status and time, then its recorded figures against their baselines."""
    rows = [("notebook", "status", "time", "figure", "value", "baseline", "")]
    for run in runs:
        head = (run.name, run.status, f"{run.seconds:.1f} s" if run.seconds else "-")
        lines = []
        checked = {c.name for c in run.checks}
        for c in run.checks:
            lines.append((c.name, _num(c.value), c.band_text(), "ok" if c.ok else f"FAIL: {c.reason}"))
        for name, value in sorted(run.figures.items()):
            if name not in checked and name != teach.CLAIMS_KEY:
                lines.append((name, _num(value), "-", ""))
        if run.error:
            lines.append(("error", run.error[:100], "", ""))
        lines = lines or [("", "", "", "")]
        rows.append(head + lines[0])
        rows += [("", "", "") + line for line in lines[1:]]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    text = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    ok = sum(r.ok for r in runs)
    text.append(f"\n{ok} of {len(runs)} notebooks ok")
    claimed = [(r.name, teach.judge(r.figures)) for r in runs if teach.claims_in(r.figures)]
    if claimed:
        text.append("\nClaims on this machine (never a failure: they say what a class on it will see):")
        for name, rows in claimed:
            text.append(f"{name}\n{teach.claims_text(rows)}")
    return "\n".join(text)


def _num(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


# ---- committed notebooks: outputs only on checked cells ---------------------------------------------------------
def strip_outputs(nb, keep_checked: bool = True):
    """Clear outputs and execution counts, except on `# NBVAL_CHECK_OUTPUT` cells when kept: those keep their
    outputs and an execution count of 1 (nbval ignores the outputs of a cell without a count)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if keep_checked and CHECK_MARK in cell.source and cell.outputs:
            cell.execution_count = 1
        else:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    return nb


def update_references(executed: str | Path, source: str | Path) -> int:
    """Copy the outputs of the checked cells of an executed copy into the source notebook (matching cells by
    id, else by source text) and clear every other output. Returns the number of cells updated."""
    import nbformat

    run = nbformat.read(executed, as_version=4)
    nb = nbformat.read(source, as_version=4)
    by_id = {c.get("id"): c for c in run.cells}
    by_source = {c.source: c for c in run.cells}
    updated = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECK_MARK in cell.source:
            done = by_id.get(cell.get("id")) or by_source.get(cell.source)
            if done is None or done.source != cell.source:
                raise ValueError(f"{executed}: no executed cell matches {cell.source.splitlines()[0]!r}")
            cell.outputs = [o for o in done.outputs if o.get("output_type") != "display_data"
                            or "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
            updated += 1
    strip_outputs(nb, keep_checked=True)
    nbformat.write(nb, source)
    return updated


# ---- the command line: `labkit notebooks` ----------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NOTEBOOK",
                        help="notebooks to run (file paths, or names such as 01_mixed_precision; default: all)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help="parameters and baselines file (default: tests/notebook_ci.json, the CI sizes)")
    parser.add_argument("--baselines", default=str(DEFAULT_PARAMS),
                        help="baselines for notebooks that the parameters file gives none (default: the CI file)")
    parser.add_argument("--dir", default=str(DEFAULT_NOTEBOOKS), help="the notebooks folder")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where the executed copies and figures go")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell (default: none)")
    parser.add_argument("--update-references", action="store_true",
                        help="after a clean run, copy the outputs of '# NBVAL_CHECK_OUTPUT' cells back into "
                             "the notebooks (the references nbval compares against)")


def command(args) -> int:
    """`labkit notebooks`: run, print the table, exit 1 unless every notebook is ok."""
    folder = Path(args.dir)
    paths = None
    if args.names:
        paths = [Path(n) if n.endswith(".ipynb") else folder / f"{n}.ipynb" for n in args.names]
    else:
        paths = notebook_paths(folder)
    runs = run_all(paths, args.params, args.out, args.kernel, args.timeout, args.baselines, echo=print)
    print(report(runs))
    if args.update_references:
        for run, path in zip(runs, paths):
            if run.status in ("ok", "off-baseline") and run.output is not None:
                print(f"{path.name}: {update_references(run.output, path)} reference output(s) updated")
    return 0 if all(r.ok for r in runs) else 1
