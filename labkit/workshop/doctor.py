"""`labkit doctor`: a pre-flight check for a class machine, one line per check and a verdict.

    checks = run_checks(quick=True)        # skip the ~10 s smoke run
    print(verdict(checks))                 # "ready", "ready, with warnings" or "not ready"

A check's status is "ok", "info" (a fact, nothing to do), "warn" (the lessons run, but something will look
different or be slow), "fail" (a lesson will not run) or "skip". A warning or a failure names its fix. The
checks read the machine and never download anything; the smoke run trains a tiny model for one epoch without
recording it, and generates the synthetic data cache when it is missing (the first run of every lesson would).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

OK, INFO, WARN, FAIL, SKIP = "ok", "info", "warn", "fail", "skip"
READY, READY_WARNINGS, NOT_READY = "ready", "ready, with warnings", "not ready"
WARN_FREE_BYTES, FAIL_FREE_BYTES = 2_000_000_000, 200_000_000  # 2 GB, 200 MB
# A tiny configuration: about 10 s on two CPU cores, most of it starting torch and loading the data cache.
SMOKE = dict(train_size=512, test_size=128, epochs=1, batch_size=64, amp="auto")
WIDGET_PACKAGES = ("ipykernel", "ipywidgets", "anywidget", "plotly", "jupyterlab")
# JupyterLab front-end extensions the lab needs: (name, status when missing, what breaks without it)
LAB_EXTENSIONS = (
    ("@jupyter-widgets/jupyterlab-manager", FAIL, "the lab panel's widgets do not show"),
    ("anywidget", FAIL, "live charts (plotly FigureWidget) do not show"),
    ("jupyterlab-plotly", WARN, "static plotly figures may show as text"),
)
CHECKOUT = Path(__file__).resolve().parent.parent.parent
REINSTALL = f"`{sys.executable} -m pip install -r requirements.lock` (or `make lab` in a fresh checkout)"


@dataclass
class Check:
    name: str
    status: str  # ok, info, warn, fail, skip
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable figures (for --json)
    seconds: float = 0.0

    def line(self) -> str:
        """One line: STATUS name detail, and the fix where there is one."""
        text = f"{self.status.upper():<5} {self.name:<10} {self.detail}"
        return text + (f" -> fix: {self.fix}" if self.fix else "")


def verdict(checks: list[Check]) -> str:
    if any(c.status == FAIL for c in checks):
        return NOT_READY
    if any(c.status == WARN for c in checks):
        return READY_WARNINGS
    return READY


def verdict_line(checks: list[Check], seconds: float | None = None) -> str:
    said = verdict(checks)
    parts = [f"{len(checks)} checks"]
    for status, word in ((FAIL, "failed"), (WARN, "warned")):
        names = [c.name for c in checks if c.status == status]
        if names:
            parts.append(f"{len(names)} {word}: {', '.join(names)}")
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return f"verdict: {said} ({'; '.join(parts)})"


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


# ---- the checks ------------------------------------------------------------------------------------------------
def check_device(device: str = "auto") -> Check:
    import torch

    from .. import lessons
    from ..devices import resolve_device

    dev = resolve_device(device)
    data = {"device_type": dev.type, "machine": lessons.machine(device), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        count = torch.cuda.device_count()
        data.update(gpu_memory_bytes=props.total_memory, gpu_count=count,
                    compute_capability=f"{props.major}.{props.minor}")
        detail = (f"GPU {props.name} (CUDA {torch.version.cuda}, {props.total_memory / 2**30:.0f} GiB, compute "
                  f"capability {props.major}.{props.minor})" + (f", {count} GPUs visible" if count > 1 else ""))
        return Check("device", OK, detail, data=data)
    if dev.type == "mps":
        return Check("device", OK, f"{data['machine']} (MPS)", data=data)
    detail = (f"CPU {data['machine']}, torch uses {data['torch_threads']} threads; no GPU: "
              "lessons run on the CPU (smaller, slower)")
    if Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi"):
        fix = ("this torch is a CPU-only build: install the CUDA build of the pinned torch" if torch.version.cuda
               is None else "torch cannot see the GPU: check the NVIDIA driver (`nvidia-smi`) and CUDA_VISIBLE_DEVICES")
        return Check("device", WARN, detail.replace("no GPU", "a GPU is installed but unused"), fix, data)
    return Check("device", OK, detail, data=data)


def check_load() -> Check:
    """Other programs busy on this machine make every throughput a lesson measures read low and vary."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return Check("load", INFO, "the load average cannot be read here")
    cores = os.cpu_count() or 1
    data = {"load_1min": round(load, 2), "cores": cores}
    if load > cores:
        return Check("load", WARN, f"busy: load average {load:.1f} over the last minute on {cores} cores, so other "
                                   "programs compete and the lessons' throughputs will read low and vary",
                     "close other heavy programs (training runs, other notebooks' kernels; `top` shows them) "
                     "before class", data)
    return Check("load", OK, f"load average {load:.1f} on {cores} cores", data=data)


def check_precisions(device: str = "auto") -> Check:
    from ..devices import AMP_DTYPE_NAMES, precisions, resolve_device

    dev = resolve_device(device)
    modes = precisions(dev)
    data = {AMP_DTYPE_NAMES[m]: {"available": p.available, "native": p.native, "note": p.note}
            for m, p in modes.items()}
    native = [AMP_DTYPE_NAMES[m] for m, p in modes.items() if p.native]
    emulated = [AMP_DTYPE_NAMES[m] for m, p in modes.items() if p.available and not p.native]
    detail = f"native: {', '.join(native)}" + (f"; emulated: {', '.join(emulated)}" if emulated else "")
    bf16 = modes["bf16"]
    if not bf16.native:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        fix = (f"ONEDNN_MAX_CPU_ISA={cap} hides the CPU's bf16 units: unset it" if dev.type == "cpu" and cap else
               "nothing to repair: the mixed-precision lesson will show bf16 slower than fp32 here and says why; "
               "for the speed-up use an Ampere or newer GPU, or a CPU with AMX-BF16 or AVX512-BF16")
        return Check("precision", WARN, f"{detail} (bf16: {bf16.note})", fix, data)
    if dev.type != "cpu" and not modes["fp16"].native:  # on a CPU fp16 is always emulated: nothing to say
        return Check("precision", WARN, f"{detail} (fp16: {modes['fp16'].note})",
                     "nothing to repair: fp16 will not be faster than fp32 on this GPU", data)
    return Check("precision", OK, detail, data=data)


def synthetic_cache() -> Path:
    from ..data import synthetic
    from ..paths import data_dir

    return data_dir() / f"synthetic-v{synthetic.VERSION}.pt"


def check_data(smoke_follows: bool) -> Check:
    cache = synthetic_cache()
    if cache.is_file():
        size = cache.stat().st_size
        return Check("data", OK, f"synthetic data cached ({_gb(size)}, {cache})",
                     data={"cache": str(cache), "cached": True, "bytes": size})
    data = {"cache": str(cache), "cached": False}
    if smoke_follows:
        return Check("data", INFO, f"synthetic data not cached yet in {cache.parent}: the smoke run below "
                                   "generates it (about 10 s, once)", data=data)
    return Check("data", WARN, f"synthetic data not cached yet in {cache.parent}: every lesson's first run "
                               "waits about 10 s to generate it",
                 "run `labkit doctor` without --quick once (its smoke run generates the cache)", data)


CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")


def check_cifar10() -> Check:
    from ..paths import data_dir

    folder = data_dir() / "cifar-10-batches-py"
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    data = {"folder": str(folder), "present": not missing}
    if not missing:
        return Check("cifar10", INFO, f"CIFAR-10 present in {folder} (dataset='cifar10' works offline)", data=data)
    return Check("cifar10", INFO, f"CIFAR-10 not in {folder} (optional: the lessons use the generated data; "
                                  "dataset='cifar10' downloads it, 170 MB, on first use)", data=data)


def python3_kernelspec():
    """The `python3` kernelspec Jupyter would start (None when there is none)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return None


def check_kernel() -> Check:
    spec = python3_kernelspec()
    fix_here = (f"run `{sys.executable} -m ipykernel install --user --name python3` to point it at this "
                "environment (or `jupyter kernelspec remove python3` to drop the stray one)")
    if spec is None:
        return Check("kernel", FAIL, "no `python3` Jupyter kernel is installed",
                     f"run `make lab` once to install the kernel (ipykernel, in .venv), or {fix_here}")
    argv0 = spec.argv[0] if spec.argv else ""
    data = {"resource_dir": spec.resource_dir, "argv0": argv0, "python": sys.executable}
    jupyter = Path(sys.executable).parent / "jupyter"
    launched = (f"; start JupyterLab from this environment ({jupyter} lab, or `make lab`)"
                if jupyter.is_file() else "")
    if argv0 in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}", sys.executable):
        # jupyter_client starts a bare "python" as the interpreter running the Jupyter server
        return Check("kernel", OK, f"python3 kernel ({spec.resource_dir}) runs this Python ({sys.executable})",
                     data=data)
    # Another interpreter named by path: ask it which environment it is (and whether labkit imports there).
    try:
        proc = subprocess.run([argv0, "-c", "import sys, labkit; print(sys.prefix)"], capture_output=True,
                              text=True, timeout=20)
        prefix = proc.stdout.strip() if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        prefix = None
    if prefix is not None and os.path.realpath(prefix) == os.path.realpath(sys.prefix):
        return Check("kernel", OK, f"python3 kernel ({spec.resource_dir}) runs {argv0}, this environment",
                     data=data)
    said = ("cannot start or cannot import labkit" if prefix is None else f"is another environment ({prefix})")
    return Check("kernel", FAIL, f"python3 kernel ({spec.resource_dir}) runs {argv0}, which {said}: notebooks "
                                 f"would not run in this environment ({sys.prefix})", fix_here, data)


def _lock_pins() -> dict[str, str]:
    lock = CHECKOUT / "requirements.lock"
    if not lock.is_file():
        return {}
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.split(";")[0].strip()
    return pins


def check_widgets() -> Check:
    import importlib
    from importlib import metadata

    versions, broken = {}, []
    for name in WIDGET_PACKAGES:
        try:
            importlib.import_module(name)
            versions[name] = metadata.version(name)
        except Exception as exc:  # ImportError, or a package that breaks on import
            broken.append(f"{name} ({type(exc).__name__}: {exc})")
    shown = ", ".join(f"{k} {v}" for k, v in versions.items())
    if broken:
        return Check("widgets", FAIL, f"cannot import {'; '.join(broken)}" + (f" (have {shown})" if shown else ""),
                     f"reinstall the pinned packages: {REINSTALL}", {"versions": versions})
    pins = _lock_pins()
    off = [f"{k} {v} (lock: {pins[k]})" for k, v in versions.items() if k in pins and pins[k] != v]
    if off:
        return Check("widgets", WARN, f"{shown}; not the pinned versions: {', '.join(off)}",
                     f"install the pinned versions: {REINSTALL}", {"versions": versions})
    return Check("widgets", OK, shown, data={"versions": versions})


def check_lab_extensions() -> Check:
    from jupyter_core.paths import jupyter_path

    folders = [Path(p) for p in jupyter_path("labextensions")]
    found = {name: next((str(f / name) for f in folders if (f / name / "package.json").is_file()), None)
             for name, _, _ in LAB_EXTENSIONS}
    missing = [(name, status, why) for name, status, why in LAB_EXTENSIONS if found[name] is None]
    data = {"found": found, "searched": [str(f) for f in folders]}
    if not missing:
        return Check("extension", OK, f"JupyterLab extensions present: {', '.join(found)}", data=data)
    status = FAIL if any(s == FAIL for _, s, _ in missing) else WARN
    said = "; ".join(f"{name} missing ({why})" for name, _, why in missing)
    return Check("extension", status, said, f"reinstall the pinned packages (they ship the extensions): {REINSTALL}",
                 data)


def free_bytes(path: Path) -> int:
    """Free bytes on the disk holding `path` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk() -> Check:
    from ..paths import data_dir

    folder = data_dir()
    free = free_bytes(folder)
    data = {"folder": str(folder), "free_bytes": free}
    detail = f"{_gb(free)} free in {folder}"
    fix = (f"free disk space in {folder} (old builds, caches, checkpoints) or set LABKIT_DATA to a folder on a "
           "larger disk")
    if free < FAIL_FREE_BYTES:
        return Check("disk", FAIL, f"{detail}: under {_gb(FAIL_FREE_BYTES)}, the data cache and the results "
                                   "store may not fit", fix, data)
    if free < WARN_FREE_BYTES:
        return Check("disk", WARN, f"{detail}: under {_gb(WARN_FREE_BYTES)}, lessons may run out of room", fix, data)
    return Check("disk", OK, detail, data=data)


def check_store() -> Check:
    import sqlite3
    from contextlib import closing

    from ..paths import default_db
    from ..store import Store

    path = default_db()
    fix = f"make {path.parent} writable, or set LABKIT_DB to a file in a writable folder"
    try:
        store = Store(path)
        with closing(sqlite3.connect(store.path, timeout=10)) as db:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock: the store is writable now, not only readable
            count = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            db.rollback()
    except (OSError, sqlite3.Error) as exc:
        return Check("store", FAIL, f"cannot write the results store {path}: {exc}", fix, {"path": str(path)})
    return Check("store", OK, f"results store {path} is writable ({count} runs recorded)",
                 data={"path": str(path), "runs": count})


def check_smoke(device: str = "auto", **overrides: Any) -> Check:
    from ..api import run

    config = {**SMOKE, "device": device, **overrides}
    had_cache = synthetic_cache().is_file()
    started = time.perf_counter()
    result = run(store=False, progress=False, **config)
    seconds = time.perf_counter() - started
    loss = float(result.history["loss"].iloc[-1]) if len(result.history) else float("nan")
    data = {"status": result.status, "throughput": result.throughput, "loss": loss if math.isfinite(loss) else None,
            "accuracy": result.accuracy, "precision": result.precision, "seconds": seconds, "config": config}
    again = ("; see it in full with `labkit run --no-store --train-size 512 --test-size 128 --epochs 1 "
             "--batch-size 64`")
    if result.status != "completed":
        return Check("smoke run", FAIL, f"a tiny run ended {result.status}: {result.error}",
                     "read the error above" + again, data)
    if not math.isfinite(loss):
        return Check("smoke run", FAIL, f"a tiny run's loss is {loss}", "report it with this output" + again, data)
    if not result.throughput or result.throughput <= 0:
        return Check("smoke run", FAIL, "a tiny run measured no throughput", "report it with this output" + again,
                     data)
    made = "" if had_cache else " (and generated the data cache)"
    return Check("smoke run", OK, f"trained {config['train_size']} images in {result.time_s:.1f} s "
                                  f"({seconds:.1f} s with set-up): {result.throughput:,.0f} img/s "
                                  f"({result.precision}), loss {loss:.2f}{made}",
                 data=data)


def run_checks(quick: bool = False, device: str = "auto",
               on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in order; `quick` skips the smoke run. `on_check` is called as each one finishes.
    A check that raises is a failure naming the exception (the doctor itself never crashes on a sick machine)."""
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("load", check_load),  # first: the doctor's own work adds to it
        ("device", lambda: check_device(device)),
        ("precision", lambda: check_precisions(device)),
        ("data", lambda: check_data(smoke_follows=not quick)),
        ("cifar10", check_cifar10),
        ("kernel", check_kernel),
        ("widgets", check_widgets),
        ("extension", check_lab_extensions),
        ("disk", check_disk),
        ("store", check_store),
        ("smoke run", lambda: check_smoke(device)),
    ]
    checks = []
    for name, step in steps:
        started = time.perf_counter()
        if name == "smoke run" and quick:
            check = Check(name, SKIP, "skipped (--quick): run `labkit doctor` to train a tiny model for ~10 s")
        else:
            try:
                check = step()
            except Exception as exc:  # noqa: BLE001 - any error is this check's failure
                check = Check(name, FAIL, f"the check raised {type(exc).__name__}: {exc}",
                              "fix the error above (or report it with this output)")
        check.seconds = round(time.perf_counter() - started, 3)
        checks.append(check)
        if on_check is not None:
            on_check(check)
    return checks


def command(quick: bool = False, as_json: bool = False, device: str = "auto") -> int:
    """The CLI: print one line per check as it finishes and the verdict (or JSON); exit 1 when not ready."""
    started = time.perf_counter()
    checks = run_checks(quick=quick, device=device,
                        on_check=None if as_json else (lambda c: print(c.line(), flush=True)))
    seconds = time.perf_counter() - started
    if as_json:
        from .export import plain

        print(json.dumps(plain({"verdict": verdict(checks), "ready": verdict(checks) != NOT_READY,
                          "seconds": round(seconds, 2), "checks": [asdict(c) for c in checks]}),
                         indent=1, allow_nan=False))
    else:
        print(verdict_line(checks, seconds))
    return 1 if verdict(checks) == NOT_READY else 0
