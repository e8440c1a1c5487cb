"""The lab in a real browser: JupyterLab on 127.0.0.1 driven by Debian's Chromium through Playwright.

Opens notebooks/00_lab.ipynb (a copy, with small parameters injected after its `parameters` cell as papermill
would), runs it, clicks Run, waits for throughput points, flips AMP and moves the batch-size slider while the
run trains, checks the new segments in the chart and the status line, clicks Stop and checks the stored status.
A screenshot goes to build/browser/ when it fails. Needs the apt package `chromium` (installed if missing, as
root) and the `playwright` Python package; never downloads a browser.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "labkit-browser-test"
# Small and long: the test stops the run itself.
PARAMETERS = dict(train_size=1000, test_size=200, epochs=50, batch_size=32, width=8, depth=2, log_every=2,
                  timing_warmup=2, device="cpu", autopilot=False)
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in view, not a hidden tab
# Start the notebook's kernel without asking (a slow start can otherwise raise "Select Kernel"), and no news toast.
SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}


def _ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Debian's chromium is missing and cannot be installed here (needs apt-get as root)")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "playwright"], check=True, capture_output=True)
        from playwright.sync_api import sync_playwright
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_copy(folder: Path) -> Path:
    """notebooks/00_lab.ipynb with the test's parameters injected after the `parameters` cell, outputs cleared."""
    nb = json.loads((ROOT / "notebooks" / "00_lab.ipynb").read_text())
    at = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "# injected by the browser test\n" + "\n".join(f"{k} = {v!r}" for k, v in PARAMETERS.items())
    nb["cells"].insert(at + 1, {"cell_type": "code", "metadata": {}, "source": source, "outputs": [],
                                "execution_count": None, "id": "browser-test-parameters"})
    path = folder / "00_lab.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on a free port over a temporary copy of the notebook; yields (url, store path)."""
    _ensure_chromium()
    work = tmp_path / "notebooks"
    work.mkdir()
    _notebook_copy(work)
    db = tmp_path / "labkit.db"
    port = _free_port()
    settings = tmp_path / "lab-settings"
    for plugin, values in SETTINGS.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**os.environ, "LABKIT_DB": str(db), "LABKIT_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "PYTHONPATH": str(ROOT)}
    bin_dir = Path(sys.executable).parent
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [str(bin_dir / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={TOKEN}", "--allow-root", f"--ServerApp.root_dir={work}",
         "--ServerApp.open_browser=False", "--LabApp.news_url=None", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not start:\n" + (tmp_path / "jupyter.log").read_text())
                time.sleep(0.5)
        yield f"{base}/lab/tree/00_lab.ipynb?reset&token={TOKEN}", db
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started (its own session)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _accept_dialog(page) -> None:
    """A slow kernel start can make JupyterLab ask "Select Kernel": take the proposed one."""
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count() and accept.first.is_visible():
        accept.first.click()
        page.wait_for_timeout(3000)  # let the kernel change begin before looking again


def _run_notebook(page, panel, ready, timeout_s: float) -> None:
    """Run all cells until `ready` shows. Run All again if no cell has started 20 s after the last try (a
    request made while the kernel was still starting can be dropped)."""
    deadline = time.monotonic() + timeout_s
    prompts = panel.locator(".jp-InputArea-prompt")
    tried = -1e9
    while not ready.first.is_visible():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ready} did not appear within {timeout_s:.0f} s")
        _accept_dialog(page)
        started = any(("*" in t or any(ch.isdigit() for ch in t)) for t in prompts.all_inner_texts())
        if not started and time.monotonic() - tried > 20:
            _run_all(page)
            tried = time.monotonic()
        page.wait_for_timeout(250)


def _wait_visible(page, locator, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not locator.first.is_visible():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{locator} did not appear within {timeout_s:.0f} s")
        _accept_dialog(page)
        page.wait_for_timeout(250)


def test_the_lab_in_a_real_browser(jupyter_lab):
    url, db = jupyter_lab
    from labkit.store import Store

    screenshot = ROOT / "build" / "browser" / "test_the_lab_in_a_real_browser.png"
    with _playwright()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(url, timeout=90_000)
            panel = page.locator(PANEL)
            # The notebook's own indicator reads "idle" before any kernel exists: wait for the kernel's name too.
            kernel_idle = page.locator(".jp-StatusBar-TextItem", has_text="ipykernel) | Idle")
            _wait_visible(page, kernel_idle, 120)
            run_button = panel.locator("button.labkit-run")
            _run_notebook(page, panel, run_button, 150)  # the kernel's start, imports and the panel's first render
            _wait_visible(page, kernel_idle, 60)
            status = panel.locator(".labkit-status")
            assert "ready" in status.inner_text()

            run_button.click()
            points = panel.locator(".labkit-throughput .scatterlayer .trace:first-child path.point")
            page.wait_for_function(
                "sel => document.querySelectorAll(sel).length >= 3",
                arg=f"{PANEL} .labkit-throughput .scatterlayer .trace:first-child path.point", timeout=120_000)
            assert points.count() >= 3
            before = status.inner_text()
            assert "running" in before and "amp off" in before

            panel.locator("button.labkit-amp-bf16").click()
            page.wait_for_function(
                "([sel, text]) => [...document.querySelectorAll(sel)].some(t => t.textContent.includes(text))",
                arg=[f"{PANEL} .labkit-throughput text", "amp: off -> bf16"], timeout=60_000)
            handle = panel.locator(".labkit-batch-size .noUi-handle")
            handle.focus()
            handle.press("ArrowRight")  # 32 -> 64, the next power of two
            page.wait_for_function(
                "([sel, text]) => [...document.querySelectorAll(sel)].some(t => t.textContent.includes(text))",
                arg=[f"{PANEL} .labkit-throughput text", "batch_size: 32 -> 64"], timeout=60_000)
            bars = panel.locator(".labkit-segments .barlayer path")
            page.wait_for_function("sel => document.querySelectorAll(sel).length >= 3",
                                   arg=f"{PANEL} .labkit-segments .barlayer .point", timeout=60_000)
            page.wait_for_function("([sel, text]) => document.querySelector(sel).innerText.includes(text)",
                                   arg=[f"{PANEL} .labkit-status", "segment #2"], timeout=60_000)
            during = status.inner_text()
            assert during != before and "amp bf16" in during and "batch_size: 32 -> 64" in during
            assert bars.count() >= 1

            panel.locator("button.labkit-stop").click()
            page.wait_for_function("([sel, text]) => document.querySelector(sel).innerText.includes(text)",
                                   arg=[f"{PANEL} .labkit-status", "stopped"], timeout=60_000)
            runs = Store(db).runs()
            assert list(runs["status"]) == ["stopped"]
            events = Store(db).events(int(runs["id"].iloc[0]))
            assert list(events["label"].dropna()) == ["start", "amp: off -> bf16", "batch_size: 32 -> 64"]
        except BaseException:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            raise
        finally:
            browser.close()
