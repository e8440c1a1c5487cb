"""Gradient accumulation: `grad_accum` micro-batches of `batch_size` make one optimizer step, so the effective
batch is batch_size x grad_accum while memory holds one micro-batch's activations.

Each micro-batch's loss is divided by grad_accum before backward, so the summed gradients are those of the mean
loss over the effective batch: with a model whose layers do not mix the images of a batch (norm="group" rather
than BatchNorm, which normalises each micro-batch by its own statistics), 4 micro-batches of 32 take the same
step as one batch of 128. The lr is not rescaled: use the lr you would use for the effective batch. The
schedule follows images seen, so it is unchanged; an epoch's last images that do not fill a whole optimizer
step are left out, as a DataLoader's drop_last does.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterator

from .base import Control, Knob, Technique, integer


def micro_batches(batches: Iterator, grad_accum: int) -> list | None:
    """The next optimizer step's micro-batches, or None when the epoch has fewer than grad_accum left."""
    group = list(islice(batches, grad_accum))
    return group if len(group) == grad_accum else None


TECHNIQUE = Technique(
    name="grad_accum",
    summary="several micro-batches per optimizer step: a large effective batch in the memory of a small one, at "
            "the small batch's throughput; it saves memory, never time",
    knobs=(Knob("grad_accum", 1, "micro-batches per optimizer step (effective batch = batch_size x grad_accum)",
                integer(1, 1024), live="next step: the effective batch changes; the lr is not rescaled", control=Control("int"), column=True),),
)
