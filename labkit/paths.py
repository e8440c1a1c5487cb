"""Where labkit keeps data and results: `LABKIT_DATA`, else `data/` of the checkout, else ~/.cache/labkit."""
from __future__ import annotations

import os
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
