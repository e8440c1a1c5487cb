"""Mixed precision: autocast to bf16 or fp16, and a GradScaler for fp16 only.

bf16 has fp32's exponent range, so its gradients do not underflow and it needs no loss scaling. fp16 does:
the scaler multiplies the loss before backward and skips a step whose gradients overflowed (inf/NaN),
halving the scale; skipped steps while the scale settles are normal. Which modes a device runs natively is
labkit.devices' business; "auto" is resolved there before a run starts.
"""
from __future__ import annotations

import contextlib

from ._lazy import lazy_import
from .base import Control, Knob, Technique, one_of

torch = lazy_import("torch")

AMP_MODES = ("off", "bf16", "fp16", "auto")


def dtype(amp: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast_context(device, amp: str):
    """The context the forward pass and loss run in."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype(amp))


def make_scaler(device, amp: str):
    """A GradScaler that is active for fp16 and a pass-through otherwise, so the training step reads the same."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


def scale_of(scaler) -> float | None:
    """The current loss scale, or None when no scaling is done (reading it synchronises the device)."""
    return scaler.get_scale() if scaler.is_enabled() else None


TECHNIQUE = Technique(
    name="precision",
    summary="autocast the forward pass to bf16 or fp16: faster where the device has the units (GPUs since "
            "Ampere, CPUs with AMX or AVX512-BF16), about 10x slower where it emulates them",
    knobs=(Knob("amp", "off", "mixed precision: off (fp32), bf16, fp16 (with a GradScaler), or auto (the fastest "
                "one the device runs natively)", one_of(*AMP_MODES), live="next step: autocast switches dtype; a GradScaler is made for fp16 and dropped "
                "otherwise",
                control=Control("buttons", AMP_MODES[:3]), column=True),),
    change=lambda model, old, new, ctx: {"scaler"},
)
