"""The set-up stays true: pins agree across files, CI runs the README's command, the README lists every knob."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from labkit.config import field_names, knob_table

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    return {Requirement(line).name.lower().replace("_", "-"): line.split("==")[1]
            for line in lines if "==" in line and not line.startswith("#")}


def test_environment_yml_pins_every_dependency_as_the_lock_does():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(d) for d in project["dependencies"] + project["optional-dependencies"]["test"]]
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    env = _pins([line.strip().lstrip("- ").strip() for line in (ROOT / "environment.yml").read_text().splitlines()])
    for req in wanted:
        name = req.name.lower()
        assert name in lock, f"{name} is not pinned in requirements.lock (run `make lock`)"
        assert req.specifier.contains(lock[name]), f"requirements.lock pins {name}=={lock[name]}, outside {req}"
        assert env.get(name) == lock[name], f"environment.yml pins {name}=={env.get(name)}, lock has {lock[name]}"


def test_ipykernel_is_recent_enough_for_output_from_threads():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    major, minor = (int(x) for x in lock["ipykernel"].split(".")[:2])
    assert (major, minor) >= (7, 1)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert block[0].startswith("make lab") and block[1].startswith("make test")
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set", "cd"))]
    assert ci == ["make test"]


def test_readme_knob_table_is_the_declarations():
    """Field by field: name, default, allowed values, mid-run behaviour and meaning, as `labkit knobs` prints."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- knobs:[^\n]*-->\n(.*?)\n<!-- /knobs -->", readme, re.S).group(1)
    assert block == knob_table(), "README's knob table is stale: paste the output of `labkit knobs`"
    assert [row.split("`")[1] for row in block.splitlines()[2:]] == field_names()


def test_import_and_help_stay_light():
    """`import labkit` and `labkit --help` load neither torch nor the widget and chart stacks (they load on use)."""
    heavy = ("torch", "plotly", "ipywidgets", "pandas", "nbformat")
    # The technique modules hold torch as a lazy module (importlib.util.LazyLoader): it only counts once loaded,
    # when its class is ModuleType again.
    probe = ("import sys, types, labkit; from labkit.cli import build_parser; build_parser().format_help(); "
             f"print([m for m in {heavy!r} if type(sys.modules.get(m)) is types.ModuleType])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    probe = "import labkit; print(labkit.RunConfig().amp, labkit.run.__module__, labkit.lessons.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["off", "labkit.api", "labkit.lessons"]  # every public name still resolves
