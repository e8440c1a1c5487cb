"""Mixed precision: autocast to bf16 or fp16, and a GradScaler for fp16 only.

bf16 has fp32's exponent range, so its gradients do not underflow and it needs no loss scaling. fp16 does:
the scaler multiplies the loss before backward and skips a step whose gradients overflowed (inf/NaN),
halving the scale; skipped steps while the scale settles are normal.
"""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, amp: str):
    """The context the forward pass and loss run in."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[amp])


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler that is active for fp16 and a pass-through otherwise, so the training step reads the same."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


def scale_of(scaler: torch.amp.GradScaler) -> float | None:
    """The current loss scale, or None when no scaling is done (reading it synchronises the device)."""
    return scaler.get_scale() if scaler.is_enabled() else None
