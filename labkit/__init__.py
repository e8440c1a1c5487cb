"""labkit: a Jupyter-first lab for training efficiency (AMP, batch size, augmentation, pruning, optimizers)."""
from .api import run, runs
from .config import RunConfig
from .result import RunResult
from .store import Store
from .train import Controls, Trainer

__all__ = ["RunConfig", "RunResult", "Store", "Trainer", "Controls", "run", "runs"]
__version__ = "0.1.0"
