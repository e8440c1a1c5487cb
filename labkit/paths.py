"""Where labkit keeps data and results: `LABKIT_DATA`, else `data/` of the checkout, else ~/.cache/labkit."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


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


def write_atomically(path: str | os.PathLike, content: str | Callable[[IO[bytes]], None]) -> Path:
    """Write `content` (text, or a function that writes to a binary file) to `path` through a temporary file
    renamed into place: a reader never sees half a file. The file gets the permissions open() would give it (0666
    less the umask), not a temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        try:
            if isinstance(content, str):
                tmp.write(content.encode("utf-8"))
            else:
                content(tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)  # a failed write leaves nothing behind
            raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp.name, 0o666 & ~umask)
    os.replace(tmp.name, path)
    return path
