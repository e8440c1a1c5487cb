"""Memory format: channels_last (NHWC) stores each pixel's channels together, the layout tensor cores and
oneDNN's convolutions prefer; without it they may transpose every activation. The model's 4-D weights and
every batch change format; the values do not, so the run learns exactly the same function.

Live: the model is converted in place (its parameters stay the same objects, so the optimizer keeps its
state) and the next batch comes in the new format.
"""
from __future__ import annotations

from ._lazy import lazy_import
from .base import Control, Knob, Technique, boolean

torch = lazy_import("torch")


def memory_format(on: bool):
    return torch.channels_last if on else torch.contiguous_format


def convert_model(model, on: bool) -> None:
    model.to(memory_format=memory_format(on))


def convert_batch(x, on: bool):
    return x.contiguous(memory_format=memory_format(on)) if x.dim() == 4 else x


TECHNIQUE = Technique(
    name="channels_last",
    summary="NHWC memory format for convolutions: faster with tensor cores (fp16/bf16 on GPUs) and with oneDNN, "
            "but fp32 on a GPU or a small CPU model may gain nothing or lose a little",
    knobs=(Knob("channels_last", False, "channels_last (NHWC) memory format for the model and the batches",
                boolean(), live="next step: the weights convert in place (the optimizer keeps its state), "
                "batches follow", control=Control("toggle"), column=True),),
    setup=lambda model, knobs, ctx: convert_model(model, knobs.channels_last),
    batch=lambda x, y, knobs, ctx: (convert_batch(x, knobs.channels_last), y),
    change=lambda model, old, new, ctx: convert_model(model, new.channels_last),
)
