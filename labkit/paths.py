"""Where labkit keeps data and results: `LABKIT_DATA`, else `data/` of the checkout, else ~/.cache/labkit."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def data_dir() -> Path:
    if os.environ.get("LABKIT_DATA"):
        return Path(os.environ["LABKIT_DATA"])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.home() / ".cache" / "labkit"


def default_db() -> Path:
    """The results store: `LABKIT_DB`, else labkit.db in the data folder."""
    return Path(os.environ["LABKIT_DB"]) if os.environ.get("LABKIT_DB") else data_dir() / "labkit.db"


def write_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file renamed into place: a reader never sees half a file. The
    file gets the permissions open() would give it (0666 less the umask), not a temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False,
                                     encoding="utf-8") as tmp:
        tmp.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp.name, 0o666 & ~umask)
    os.replace(tmp.name, path)
    return path
