"""labkit: a Jupyter-first lab for training efficiency (AMP, batch size, augmentation, pruning, optimizers)."""
from . import plots
from .api import run, runs
from .config import RunConfig
from .result import RunResult
from .store import Store
from .train import Controls, Trainer
from .live import LiveRun
from .lab import Lab
from .lessons import record

__all__ = ["RunConfig", "RunResult", "Store", "Trainer", "Controls", "run", "runs", "LiveRun", "Lab", "plots"]
__version__ = "0.1.0"
