"""`labkit export -o alice.json`: one student's runs and lesson figures in one JSON file, for the class report.

    doc = export("alice.json", student="alice")       # the store's runs and data/lessons/*.metrics.json

The file holds (`FORMAT`, `VERSION`): the student, the machine (its name, hardware line, torch, device type,
which precisions are native), every run of the results store (configuration, status and summary figures), and
each lesson's figures (every `<lesson>.metrics.json` in the lessons folder and in any `metrics_dirs`: the facts
`lessons.begin` records, the claims, `prediction_<name>` answers and the measured figures). It is plain JSON:
NaN and infinities are null, times are ISO 8601 strings in UTC.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any, Iterable

from ..paths import write_atomically

FORMAT = "labkit-export"
VERSION = 1
METRICS_SUFFIX = ".metrics.json"


def plain(value: Any) -> Any:
    """A JSON-ready copy (lessons.plain; a value of an unexpected type becomes its text)."""
    from ..lessons import plain as json_ready

    return json_ready(value, strict=False)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def default_student() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (some containers): fall back
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def machine_facts(device: str = "auto") -> dict[str, Any]:
    import torch

    from .. import __version__, lessons
    from ..devices import AMP_DTYPE_NAMES, precisions, resolve_device

    dev = resolve_device(device)
    modes = precisions(dev)
    return {"name": lessons.machine(device), "hardware": lessons.hardware(device), "device_type": dev.type,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "host": socket.gethostname(), "cpu_count": os.cpu_count(),
            "labkit": __version__,
            "precisions": {AMP_DTYPE_NAMES[m]: {"available": p.available, "native": p.native, "note": p.note}
                           for m, p in modes.items()}}


def _int_knobs() -> set[str]:
    from ..config import KNOBS

    return {k.name for k in KNOBS if k.allowed.parse is int}


def stored_runs(store: Any = None) -> tuple[list[dict[str, Any]], str]:
    """The runs of a store (a Store, a path, or None for the default) as JSON-ready dicts, and where they came
    from. A path that does not exist has no runs (and is not created)."""
    from ..paths import default_db
    from ..store import Store

    if isinstance(store, Store):
        db = store
    else:
        path = Path(store) if store is not None else default_db()
        if not path.is_file():
            return [], str(path)
        db = Store(path)
    table = db.runs()
    whole = _int_knobs() | {"id", "steps", "micro_steps", "params", "dense_params", "skipped_steps",
                            "peak_memory_bytes", "flops_per_image", "dense_flops_per_image"}
    rows = []
    for record in table.to_dict("records"):
        row = plain(record)
        for key in whole:  # a column with a missing value is float in pandas: give the integers back
            if isinstance(row.get(key), float) and row[key].is_integer():
                row[key] = int(row[key])
        rows.append(row)
    return rows, str(db.path)


def lesson_files(folders: Iterable[str | os.PathLike]) -> list[Path]:
    files = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            files += sorted(p for p in folder.glob(f"*{METRICS_SUFFIX}") if p.is_file())
    return files


def read_lesson(path: Path) -> dict[str, Any]:
    """One lesson's entry: its name, file, when it was last written, and its figures (claims included)."""
    try:
        figures = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"export: {path} is not a readable metrics file ({exc}); move it away or fix it") from None
    if not isinstance(figures, dict):
        raise ValueError(f"export: {path} holds {type(figures).__name__}, not a lesson's figures (a JSON object)")
    name = figures.get("lesson") if isinstance(figures.get("lesson"), str) else path.name[:-len(METRICS_SUFFIX)]
    modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
    return {"lesson": name, "file": str(path), "modified": modified, "figures": plain(figures)}


def collect(store: Any = None, lessons_dir: str | os.PathLike | None = None, student: str | None = None,
            metrics_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """The export as a dict (what `export` writes). Raises ValueError when there is nothing to export."""
    from .. import lessons

    folders = [Path(lessons_dir) if lessons_dir is not None else lessons.lesson_dir(), *map(Path, metrics_dirs)]
    runs, db = stored_runs(store)
    entries = [read_lesson(p) for p in lesson_files(folders)]
    if not runs and not entries:
        raise ValueError(f"export: nothing to export: no runs in {db} and no *{METRICS_SUFFIX} in "
                         f"{', '.join(map(str, folders))}; run a lesson (or `labkit run`) first, or point --db / "
                         "--metrics at where they are")
    return {"format": FORMAT, "version": VERSION, "created": now(), "student": student or default_student(),
            "machine": machine_facts(), "store": db, "runs": runs, "lessons": entries}


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def export(path: str | os.PathLike, store: Any = None, lessons_dir: str | os.PathLike | None = None,
           student: str | None = None, metrics_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """Write one student's export to `path` (JSON) and return it. `store`: a Store or a path (default: the
    results store); `lessons_dir`: where lessons run in Jupyter keep their figures (default
    `lessons.lesson_dir()`); `metrics_dirs`: more folders of `<lesson>.metrics.json` (e.g. build/notebooks)."""
    doc = collect(store, lessons_dir, student, metrics_dirs)
    write_atomically(path, json.dumps(doc, indent=1, allow_nan=False))
    return doc


def summary(doc: dict[str, Any], path: str | os.PathLike) -> str:
    """What `labkit export` prints."""
    completed = sum(r.get("status") == "completed" for r in doc["runs"])
    names = sorted({e["lesson"] for e in doc["lessons"]})
    claims = sum(len(e["figures"].get("claims") or []) for e in doc["lessons"])
    return (f"wrote {path}: student {doc['student']!r} on {doc['machine']['name']}; {_count(len(doc['runs']), 'run')} "
            f"({completed} completed) from {doc['store']}; {_count(len(names), 'lesson')}"
            + (f" ({', '.join(names)}; {_count(claims, 'claim')})" if names else "")
            + "\nsend it to your instructor: `labkit report *.json -o class.html` merges the class's files")


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read an export, or say (naming the file) why it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a labkit export: not JSON ({exc}); make one with "
                         "`labkit export -o FILE.json`") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a labkit export (no \"format\": \"{FORMAT}\"); make one with "
                         "`labkit export -o FILE.json`")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise ValueError(f"{path} is a labkit export of version {doc.get('version')!r}; this labkit reads up to "
                         f"version {VERSION}: update labkit")
    for key, kind in (("student", str), ("machine", dict), ("runs", list), ("lessons", list)):
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"{path} is not a complete labkit export: {key!r} is missing or not a {kind.__name__}")
    return doc

