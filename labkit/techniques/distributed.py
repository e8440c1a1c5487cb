"""Distributed data parallel: `nproc` processes train one model, each on its share of every batch.

labkit starts them with PyTorch's launcher, torchrun (labkit.dist); each process wraps the model that trains in
`DistributedDataParallel`, which all-reduces (averages) the gradients during backward, bucket by bucket as
they become ready, so communication overlaps the rest of backward. Every process then takes the same optimizer
step and the weights stay identical.

`batch_size` keeps its meaning: the global batch, split equally across the processes (it must divide by
`nproc`). The lr rule is therefore "no change": a 2-process run with batch_size=256 takes the steps a
1-process run with batch_size=256 takes, up to the order of floating-point sums. (Raise batch_size with nproc
and the usual large-batch rules apply: see lesson 02.) BatchNorm normalises each process's share by its own
statistics, as a smaller batch would; norm="group" does not depend on the batch.

Live changes reach every process at the same step. Changes that alter the parameters DDP registered (pruning,
memory format) are refused on a distributed run: DDP would keep reducing the old ones.
"""
from __future__ import annotations

import contextlib

from ._lazy import lazy_import
from .base import Control, Knob, Technique, integer

torch = lazy_import("torch")

# Live knobs that would change the parameters (or their layout) under DDP's registered gradient buckets.
PARAMETER_KNOBS = ("prune", "channels_last")


def world_size() -> int:
    """Processes in this run's process group (labkit.dist.worker initialises it); 1 without one. With several
    machines it can exceed nproc, which counts one machine's (nproc=1 on each of 2 machines is 2)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def wrap(model):
    """The model that trains: itself in one process, else wrapped in DistributedDataParallel."""
    if world_size() == 1:
        return model
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unsplittable(batch_size: int, processes: int, across: str) -> str | None:
    """Why `batch_size` cannot be the global batch of `processes` (named by `across`), or None."""
    if batch_size % processes == 0:
        return None
    return (f"batch_size={batch_size} does not split across {across}: use a multiple of {processes} (e.g. "
            f"{max(processes, batch_size // processes * processes)}); batch_size is the global batch, split equally.")


def ddp_of(model):
    """The DistributedDataParallel module inside the model that trains (compiled or not), else None."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper keeps the module it compiled
    return model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None


def gradient_sync(ddp, last_micro_batch: bool):
    """With gradient accumulation, all-reduce only on the last micro-batch: the others add up locally
    (DDP's no_sync). Without DDP (`ddp` None): nothing to do."""
    return ddp.no_sync() if ddp is not None and not last_micro_batch else contextlib.nullcontext()


def allreduce_s_per_step(ddp) -> float | None:
    """DDP's own measurement of the gradient all-reduce, seconds per step (averaged over the steps it
    samples; it overlaps backward, so it is not all added to the step); None without DDP."""
    if ddp is None:
        return None
    try:  # a private but stable accessor (DDP's usage logging: it samples steps 1-10, then every 100th)
        ns = ddp._get_ddp_logging_data().get("avg_backward_comm_time")
    except (AttributeError, RuntimeError):
        return None
    return ns / 1e9 if ns else None  # nothing sampled yet


def _check(config) -> str | None:
    n = config.nproc
    if n == 1:
        return None
    split = unsplittable(config.batch_size, n, f"nproc={n} processes")
    if split:
        return split
    if config.prune > 0 and config.prune_at > 0:
        return (f"prune={config.prune} at prune_at={config.prune_at} with nproc={n}: pruning mid-run changes the "
                "parameters DistributedDataParallel reduces; use prune_at=0 (prune before training) or nproc=1.")
    if config.device.startswith("cuda:") or config.device == "mps":
        return (f"device={config.device!r} with nproc={n}: each process takes its own device (GPU k for process "
                "k on each machine); use device='cuda', 'cpu' or 'auto'.")
    return None


def _check_change(old, new) -> str | None:
    if old.nproc == 1 and world_size() == 1:
        return None
    changed = [n for n in PARAMETER_KNOBS if getattr(old, n) != getattr(new, n)]
    if changed:
        return (f"{changed[0]}={getattr(new, changed[0])!r} cannot change on a distributed run (nproc="
                f"{old.nproc}): it changes the parameters DistributedDataParallel reduces on every process. "
                "Start a new run with it, or use nproc=1 to change it live.")
    return unsplittable(new.batch_size, old.nproc, f"the run's {old.nproc} processes")


TECHNIQUE = Technique(
    name="distributed",
    summary="data parallel over nproc processes (torchrun + DistributedDataParallel): near-linear on GPUs with "
            "fast links for models big enough to hide the gradient all-reduce; on one machine's CPU cores the "
            "processes share the cores a single process would have used, so expect little or nothing",
    knobs=(Knob("nproc", 1, "processes training together (DistributedDataParallel, launched with torchrun); "
                "batch_size is the global batch, split across them", integer(1, 1024),
                control=Control("int"), column=True),),
    wrap=lambda model, knobs: wrap(model),
    check=_check,
    check_change=_check_change,
)
