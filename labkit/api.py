"""labkit's front door: run a configuration, list stored runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .config import RunConfig
from .events import Listener
from .lab.progress import ProgressBar
from .result import RunResult
from .signals import stop_on_signals
from .store import Store
from .dist.launch import trainer_for


def run(config: RunConfig | dict | None = None, *, store: Store | str | Path | None = None,
        progress: bool = True, listeners: Iterable[Listener] = (), **overrides: Any) -> RunResult:
    """Train one configuration and return its RunResult; the run is recorded in the store.

    `run(batch_size=512)` and `run(RunConfig(batch_size=512))` are the same. A bad setting raises ValueError
    before anything trains. A run that fails (out of memory, a NaN loss) returns with status "failed" and
    its error; one interrupted (Ctrl-C, SIGINT or SIGTERM) is recorded as "stopped" with the signal named, and
    the KeyboardInterrupt (`labkit.signals.Interrupted` for a signal) goes on.
    `store=False` records nothing; `save=True` keeps the trained weights (labkit.load_model(result.run_id)). `nproc=2` trains in 2 processes started with torchrun (labkit.dist)."""
    config = RunConfig.of(config).replace(**overrides)
    if config.save and store is False:
        raise ValueError("save=True with store=False: a checkpoint is filed under its run's id in the store; "
                         "record the run (leave store out) or drop save.")
    trainer = trainer_for(config, listeners=_listeners(store, progress, listeners))
    with stop_on_signals():  # SIGTERM too ends the run as "stopped", and the store says so
        return trainer.run()


def _listeners(store, progress: bool, extra: Iterable[Listener]) -> list[Listener]:
    found: list[Listener] = []
    if store is not False:
        found.append(Store.of(store).recorder())
    if progress:
        found.append(ProgressBar())
    return found + list(extra)


def runs(store: Store | str | Path | None = None, status: str | None = None, last: int | None = None,
         kind: str | None = "train") -> pd.DataFrame:
    """The stored runs as a DataFrame (one row each: status, summary figures, configuration). `kind`: training
    runs by default; "find_lr" or "find_batch_size" for the finders' records, None for all."""
    return Store.of(store).runs(status=status, last=last, kind=kind)
