"""labkit: a Jupyter-first lab for training efficiency (AMP, batch size, augmentation, pruning, optimizers)."""
from . import plots
from .api import run, runs
from .config import RunConfig
from .lab import Lab
from .lessons import record
from .live import LiveRun
from .result import RunResult
from .store import Store
from .train import Controls, Trainer

__all__ = ["RunConfig", "RunResult", "Store", "Trainer", "Controls", "LiveRun", "Lab", "plots", "run", "runs",
           "record"]
__version__ = "0.1.0"
