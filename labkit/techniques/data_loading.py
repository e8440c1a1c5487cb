"""Data loading for a streamed dataset (loader="dataloader", as image folders are by default): torch DataLoader's
knobs. Worker processes read, decode and resize images in parallel with training, pinned (page-locked) memory
lets the copy to a GPU overlap compute, and each worker prepares `prefetch_factor` batches ahead.

They only help a run whose steps wait for data: RunResult.data_share says how much (the lab's status line and
`labkit run` print a verdict), and no number of workers beats the CPU cores there are to run them. The
device-resident loader (loader="device") pays the decoding once, before training, and then waits for nothing.
How workers start (`start_method`): in a Jupyter kernel on Linux, from a fork server, never as a fork of the
kernel, whose threads (ZMQ's, a live run's) may hold locks a forked child would wait on forever; in a script on
Linux, by fork (the fork server would re-run a script that lacks `if __name__ == "__main__":`); elsewhere by spawn,
the platform's default (and there a script needs that guard)."""
from __future__ import annotations

import sys
from typing import Any

from .base import Control, Knob, Technique, boolean, integer

WORKER_TIMEOUT_S = 120  # a batch not ready in this long means a worker hung: the run fails and says so


def streams(config) -> bool:
    """Whether the training data goes through a DataLoader (loader "auto" streams only image folders)."""
    return config.loader == "dataloader" or (config.loader == "auto" and config.dataset.startswith("imagefolder:"))


def loader(config) -> str:
    """The pipeline that trains: "dataloader" or "device" (loader "auto" resolved by `streams`)."""
    return "dataloader" if streams(config) else "device"


def _check(config) -> str | None:
    if config.num_workers > 0 and not streams(config):
        return (f"num_workers={config.num_workers} has no effect: dataset={config.dataset!r} with "
                f"loader={config.loader!r} is held on the device and never streamed; use loader='dataloader' "
                "to stream it through worker processes, or num_workers=0.")
    if config.num_workers == 0 and (config.prefetch_factor is not None or config.persistent_workers):
        given = "prefetch_factor" if config.prefetch_factor is not None else "persistent_workers"
        return f"{given} needs worker processes: set num_workers >= 1, or leave {given} at its default."
    return None


def verdict(share: float | None, config, device) -> str:
    """labkit.measure.input_verdict for a run of `config` on `device`: whether its steps wait for data, and what
    to try (the RunResult's and the panel's sentence)."""
    from .. import devices, measure

    return measure.input_verdict(share, streams(config), config.num_workers, devices.cpu_cores(),
                                 device.type == "cpu")


def start_method() -> str:
    """How DataLoader workers start here (see the module doc)."""
    if not sys.platform.startswith("linux"):
        return "spawn"
    interactive = not hasattr(sys.modules.get("__main__"), "__file__")  # Jupyter, IPython, the REPL
    return "forkserver" if interactive else "fork"


def loader_options(config, device) -> dict[str, Any]:
    """The DataLoader arguments for `config`'s knobs on `device`."""
    options: dict[str, Any] = {"num_workers": config.num_workers,
                               "pin_memory": config.pin_memory and device.type == "cuda"}
    if config.num_workers > 0:
        import multiprocessing

        method = start_method()
        context = multiprocessing.get_context(method)
        if method == "forkserver":  # workers fork from a server that has imported torch once: they start fast
            context.set_forkserver_preload(["torch", "torchvision", "labkit.data"])
        options.update(multiprocessing_context=context, timeout=WORKER_TIMEOUT_S,
                       persistent_workers=config.persistent_workers)
        if config.prefetch_factor is not None:
            options["prefetch_factor"] = config.prefetch_factor
    return options


TECHNIQUE = Technique(
    name="data_loading",
    summary="worker processes that decode batches in parallel with training, pinned memory, prefetching: they "
            "help only an input-bound run (see data_share), and not beyond the CPU cores there are",
    knobs=(
        Knob("num_workers", 0, "DataLoader worker processes for a streamed dataset (0: the training process "
             "decodes each batch itself, between steps)", integer(0, 256), control=Control("int"), column=True),
        Knob("pin_memory", True, "pin (page-lock) streamed batches so the copy to a GPU overlaps compute (no "
             "effect on a CPU)", boolean()),
        Knob("prefetch_factor", None, "batches each worker prepares ahead (None: torch's default, 2)",
             integer(1, 1024, optional=True)),
        Knob("persistent_workers", False, "keep the workers between epochs instead of starting new ones",
             boolean()),
    ),
    check=_check,
)
