"""The workshop kit: `labkit doctor`, `labkit export`, `labkit report` (labkit/workshop/)."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import resource
import subprocess
import sys

import pytest

import labkit
from labkit import cli, lessons
from labkit.lessons.teach import Claim
from labkit.workshop import doctor, export, report

CHECK_NAMES = ["load", "device", "precision", "data", "cifar10", "kernel", "widgets", "extension", "disk", "store",
               "smoke run"]


def _doctor(capsys, *flags: str) -> tuple[int, list[str]]:
    code = cli.main(["doctor", *flags])
    return code, capsys.readouterr().out.strip().splitlines()


# ---- doctor ------------------------------------------------------------------------------------------------------
def test_doctor_quick_prints_one_line_per_check_and_a_verdict(capsys):
    code, lines = _doctor(capsys, "--quick")
    assert len(lines) == len(CHECK_NAMES) + 1, lines
    for line, name in zip(lines, CHECK_NAMES):
        status, rest = line.split(maxsplit=1)
        assert status in ("OK", "INFO", "WARN", "FAIL", "SKIP") and rest.startswith(name), line
        if status in ("WARN", "FAIL"):
            assert "-> fix: " in line, line  # a problem names its fix
    assert lines[-1].startswith("verdict: ready"), lines[-1]  # this machine is fit for class
    assert code == 0
    assert lines[-2].startswith("SKIP  smoke run")
    assert "python3 kernel" in lines[CHECK_NAMES.index("kernel")]


@pytest.mark.parametrize("free, verdict, code", [(100e6, "not ready", 1), (1e9, "ready, with warnings", 0)])
def test_doctor_low_disk_warns_or_fails_with_the_fix(capsys, monkeypatch, free, verdict, code):
    monkeypatch.setattr(doctor, "free_bytes", lambda path: int(free))
    got, lines = _doctor(capsys, "--quick")
    disk = next(line for line in lines if line.split()[1] == "disk")
    assert disk.startswith("FAIL" if code else "WARN"), disk
    assert "-> fix: free disk space in" in disk
    assert re.match(rf"verdict: {verdict} \(", lines[-1]), lines[-1]
    assert got == code


def test_doctor_fails_for_a_kernel_that_runs_another_python(capsys, monkeypatch, tmp_path):
    """A python3 kernelspec found first (JUPYTER_PATH) that starts some other interpreter: notebooks would not
    run in this environment."""
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(tmp_path / "elsewhere" / "python"), "-m",
                                                           "ipykernel_launcher", "-f", "{connection_file}"],
                                                  "display_name": "stray", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    code, lines = _doctor(capsys, "--quick")
    kernel = next(line for line in lines if line.split()[1] == "kernel")
    assert kernel.startswith("FAIL") and str(spec) in kernel, kernel
    assert f"-> fix: run `{sys.executable} -m ipykernel install --user --name python3`" in kernel
    assert lines[-1].startswith("verdict: not ready") and code == 1


@pytest.mark.parametrize("busy", [True, False])
def test_doctor_warns_when_other_programs_keep_the_cpu_busy(monkeypatch, busy):
    cores = os.cpu_count()
    monkeypatch.setattr(doctor.os, "getloadavg", lambda: (4.0 * cores if busy else 0.1, 0.0, 0.0))
    check = doctor.check_load()
    assert check.status == ("warn" if busy else "ok"), check
    assert ("close other heavy programs" in check.fix) == busy


def test_a_check_that_raises_is_a_failure_not_a_crash(monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_store", broken)
    checks = doctor.run_checks(quick=True)
    store = next(c for c in checks if c.name == "store")
    assert store.status == "fail" and "RuntimeError: boom" in store.detail and store.fix
    assert doctor.verdict(checks) == "not ready"


@pytest.mark.slow
def test_doctor_smoke_run_as_json(tmp_path):
    """The whole pre-flight as a user runs it, the ~10 s smoke run included, within its budget of 30 s."""
    env = {**os.environ, "LABKIT_DB": str(tmp_path / "doctor.db"), "PYTHONWARNINGS": "ignore"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "labkit", "doctor", "--json"], env=env, capture_output=True,
                          text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = json.loads(proc.stdout)
    checks = {c["name"]: c for c in out["checks"]}
    assert list(checks) == CHECK_NAMES
    smoke = checks["smoke run"]
    assert smoke["status"] == "ok", smoke
    assert smoke["data"]["status"] == "completed" and smoke["data"]["throughput"] > 0
    assert math.isfinite(smoke["data"]["loss"])
    assert "img/s" in smoke["detail"]
    assert out["verdict"].startswith("ready") and proc.returncode == 0, proc.stderr
    assert checks["store"]["data"]["runs"] == 0  # the smoke run is not recorded
    # Under 30 s on two idle cores (about 6 s here). The wall clock of a shared, loaded machine says little (the
    # same command took 60 s at a load of 14 on 2 cores), so the budget is checked on the CPU time it used.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 30, f"doctor used {cpu:.1f} s of CPU ({out['seconds']:.1f} s wall)"


# ---- export ------------------------------------------------------------------------------------------------------
CLAIMS = [Claim("bf16 trains >= 1.3x faster than fp32", "bf16_speedup", at_least=1.3, when="bf16_native",
                where="bf16 is native here"),
          Claim("pruning half the channels keeps accuracy within 5 points", "accuracy_drop", at_most=0.05)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """A store with two tiny real runs, a lessons folder (claims, a prediction, facts from lessons.begin-like
    records) and a metrics folder (a headless run's file, with a NaN written by hand): exported by the CLI."""
    tmp = tmp_path_factory.mktemp("export")
    db = tmp / "class.db"
    runs = [labkit.run(train_size=256, test_size=64, epochs=1, batch_size=bs, timing_warmup=1, log_every=2,
                       store=db, progress=False) for bs in (64, 32)]
    assert [r.status for r in runs] == ["completed", "completed"] and all(r.throughput for r in runs)
    lesson_dir, metrics_dir = tmp / "lessons", tmp / "build"
    mp = pytest.MonkeyPatch()
    mp.setenv(lessons.METRICS_ENV, str(lesson_dir / "01_mixed_precision.metrics.json"))
    for name, value in {"lesson": "01_mixed_precision", "machine": "test machine", "bf16_native": True,
                        "bf16_speedup": 1.1, "accuracy_drop": 0.01, "prediction_bf16_speedup": 2.0}.items():
        lessons.record(name, value)
    lessons.claims(*CLAIMS)
    mp.undo()
    metrics_dir.mkdir()
    (metrics_dir / "02_batch_size.metrics.json").write_text(
        json.dumps({"lesson": "02_batch_size", "speedup": float("nan"), "claims": [dataclasses.asdict(
            Claim("batch 256 is faster than 32", "speedup", at_least=1.0))]}))  # json.dumps writes NaN
    out = tmp / "alice.json"
    assert cli.main(["export", "-o", str(out), "--db", str(db), "--lessons", str(lesson_dir),
                     "--metrics", str(metrics_dir), "--student", "alice"]) == 0
    return out, runs


def test_export_holds_the_runs_the_machine_and_the_lessons(exported):
    out, runs = exported
    text = out.read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the export: not plain JSON"))
    assert doc["format"] == "labkit-export" and doc["version"] == export.VERSION and doc["student"] == "alice"
    assert doc["machine"]["name"] == lessons.machine() and doc["machine"]["device_type"] in ("cpu", "cuda", "mps")
    assert doc["machine"]["torch"] and "native" in doc["machine"]["hardware"]
    assert set(doc["machine"]["precisions"]) == {"fp32", "bf16", "fp16"}
    # both runs, with their configuration and their figures
    assert [r["id"] for r in doc["runs"]] == [r.run_id for r in runs]
    for stored, result in zip(doc["runs"], runs):
        assert stored["status"] == "completed" and stored["batch_size"] == result.config.batch_size
        assert isinstance(stored["batch_size"], int) and stored["train_size"] == 256
        assert stored["throughput"] == pytest.approx(result.throughput)
        assert stored["accuracy"] == pytest.approx(result.accuracy)
        assert stored["time_s"] > 0 and stored["precision"] == result.precision
        assert stored["flops_per_image"] == result.flops_per_image and stored["peak_memory_bytes"] > 0
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*\+00:00$", stored["started"])  # ISO, UTC
        assert stored["compile_s"] is None and stored["loss_scale"] is None  # NaN in the store's DataFrame
    # the lessons: the Jupyter one with its claims and prediction, the headless one with its NaN as null
    by_name = {e["lesson"]: e for e in doc["lessons"]}
    assert set(by_name) == {"01_mixed_precision", "02_batch_size"}
    mixed = by_name["01_mixed_precision"]["figures"]
    assert mixed["claims"] == [dataclasses.asdict(c) for c in CLAIMS]
    assert mixed["prediction_bf16_speedup"] == 2.0 and mixed["bf16_native"] is True
    assert by_name["02_batch_size"]["figures"]["speedup"] is None
    assert "NaN" not in text


def test_export_with_nothing_to_export_says_so(tmp_path, capsys):
    code = cli.main(["export", "-o", str(tmp_path / "x.json"), "--db", str(tmp_path / "none.db"),
                     "--lessons", str(tmp_path / "no-lessons")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to export" in err and str(tmp_path / "none.db") in err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "none.db").exists()  # no empty store made


# ---- report ------------------------------------------------------------------------------------------------------
MALICIOUS = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def class_page(exported, tmp_path_factory):
    """Three exports from one: alice (as made), bob on another machine where the bf16 claim holds, and a student
    with a hostile name on a machine where bf16 is not native (the claim does not apply there)."""
    out, _ = exported
    tmp = tmp_path_factory.mktemp("report")
    alice = json.loads(out.read_text())
    bob = copy.deepcopy(alice)
    bob["student"], bob["machine"]["name"] = "bob", "NVIDIA H100 80GB HBM3"
    for run in bob["runs"]:
        run["throughput"] *= 30
    mixed = next(e for e in bob["lessons"] if e["lesson"] == "01_mixed_precision")["figures"]
    mixed["bf16_speedup"], mixed["prediction_bf16_speedup"] = 2.4, 1.5
    mallory = copy.deepcopy(alice)
    mallory["student"], mallory["machine"]["name"] = MALICIOUS, "Old Laptop"
    next(e for e in mallory["lessons"] if e["lesson"] == "01_mixed_precision")["figures"]["bf16_native"] = False
    files = []
    for name, doc in (("alice", alice), ("bob", bob), ("mallory", mallory)):
        files.append(tmp / f"{name}.json")
        files[-1].write_text(json.dumps(doc))
    page = tmp / "class.html"
    assert cli.main(["report", *map(str, files), "-o", str(page)]) == 0
    return page


def test_report_is_one_self_contained_page_with_everyone_and_every_claim(class_page):
    text = class_page.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", text), "a script loaded from elsewhere"
    assert not re.search(r"<link[^>]*\bhref=", text)
    assert text.count("window.PlotlyConfig") == 1, "plotly.js inlined once"
    # who ran on what
    for who in ("alice", "bob", "NVIDIA H100 80GB HBM3", "Old Laptop"):
        assert who in text
    assert MALICIOUS not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    # each claim with each machine's verdict and value
    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr><td>([^<]+)<br>.*?</td>(.*?)</tr>", text)}
    bf16 = rows["bf16 trains &gt;= 1.3x faster than fp32"]
    assert re.findall(r'<td class="(\w+)"[^>]*>([^<]+)<br>([^<]+)</td>', bf16) == [
        ("fails", "does not hold here", "1.1"), ("holds", "holds", "2.4"), ("na", "not applicable here", "1.1")]
    assert "1 of 2 machines" in bf16
    pruning = rows["pruning half the channels keeps accuracy within 5 points"]
    assert pruning.count('class="holds"') == 3 and "3 of 3 machines" in pruning
    assert pruning != bf16
    assert "not measured" in rows["batch 256 is faster than 32"]  # its NaN became null: never "holds"
    # predictions beside measurements
    assert "0.62x the measurement" in text and "1.8x the measurement" in text


def test_report_refuses_what_is_not_an_export(tmp_path, capsys, class_page):
    stray = tmp_path / "notes.json"
    stray.write_text(json.dumps({"hello": 1}))
    assert cli.main(["report", str(stray), "-o", str(tmp_path / "c.html")]) == 2
    assert f"{stray} is not a labkit export" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        report.build([broken], tmp_path / "c.html")
    with pytest.raises(ValueError, match="no exports given"):
        report.build([], tmp_path / "c.html")
    assert not (tmp_path / "c.html").exists()


@pytest.mark.browser
def test_report_renders_its_charts_offline_in_chromium(class_page):
    from test_browser import CHROMIUM, CHROMIUM_ARGS, _ensure_chromium, _playwright

    _ensure_chromium()
    with _playwright()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            remote, errors = [], []
            page.route(re.compile(r"^https?://"), lambda route: (remote.append(route.request.url), route.abort()))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(class_page.as_uri())
            page.wait_for_selector(".plot-container .main-svg", timeout=30_000)
            assert page.locator(".plot-container").count() == 2  # runs and predictions
            assert page.locator("#chart-1 .scatterlayer .trace").count() == 3 + 3  # 3 students, 3 machines' frontiers
            assert page.locator("#chart-1 .scatterlayer .point").count() == 3 * 2  # everyone's runs
            assert page.locator("#chart-2 .boxlayer .point").count() == 3  # each prediction
            assert not remote and not errors, (remote, errors)
        finally:
            browser.close()
