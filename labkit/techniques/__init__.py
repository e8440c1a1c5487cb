"""The techniques: one module each, registered here by one line.

Each module declares a `TECHNIQUE` (labkit.techniques.base.Technique): its knobs, which may change mid-run and
what a change does, how the panel shows them, and the functions the training step calls at its named points.
RunConfig's fields, validation and CLI flags, the panel's controls, the README's knob table, the columns of
`labkit runs` and the plots' hover text all come from these declarations.
"""
from __future__ import annotations

from . import (augment, channels_last, data_loading, distillation, distributed, grad_accum, optimizers, precision,
               pruning, schedule, torch_compile, transfer)
from .base import POINTS, Context, Knob, Technique

# The order is the order of the knobs in RunConfig and of the calls at each named point of the step.
TECHNIQUES: tuple[Technique, ...] = (
    precision.TECHNIQUE,
    grad_accum.TECHNIQUE,
    augment.TECHNIQUE,
    transfer.TECHNIQUE,  # before pruning and channels_last: the loaded weights are what they change
    distillation.TECHNIQUE,
    pruning.TECHNIQUE,
    optimizers.TECHNIQUE,
    schedule.TECHNIQUE,
    channels_last.TECHNIQUE,
    distributed.TECHNIQUE,  # before compile: the DDP module is what gets compiled
    torch_compile.TECHNIQUE,
    data_loading.TECHNIQUE,
)


# point -> the techniques that provide it, in registry order: what the trainer calls at that point.
AT: dict[str, tuple[Technique, ...]] = {p: tuple(t for t in TECHNIQUES if getattr(t, p)) for p in POINTS}


def knobs() -> list[Knob]:
    """Every technique's knobs, in registry order."""
    return [k for t in TECHNIQUES for k in t.knobs]


__all__ = ["AT", "TECHNIQUES", "Context", "Knob", "Technique", "knobs"]
