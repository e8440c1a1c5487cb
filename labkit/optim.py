"""Optimizers and the learning-rate schedule.

torch.optim provides SGD, Nesterov, Adam, AdamW and RMSprop; pytorch-optimizer provides LAMB and Lion.
The schedule is a plain function of the step, so it survives an optimizer being rebuilt mid-run.
"""
from __future__ import annotations

import torch
from pytorch_optimizer import Lamb, Lion

# Peak learning rates that train the default CNN well at batch size 256 (the lessons measure them).
DEFAULT_LR = {
    "sgd": 0.05,
    "nesterov": 0.05,
    "adam": 2e-3,
    "adamw": 2e-3,
    "rmsprop": 5e-4,
    "lamb": 1e-2,
    "lion": 2e-4,
}


def default_lr(name: str) -> float:
    return DEFAULT_LR[name]


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov",
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay)
    if name == "lion":
        return Lion(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r} is not allowed: use one of {sorted(DEFAULT_LR)}.")


def lr_factor(progress: float, schedule: str, warmup: float) -> float:
    """Multiplier on the peak lr at `progress` (0 to 1, the share of training done): constant, or onecycle,
    a linear warm-up over the first `warmup` of training and a linear decay to zero after it.

    Progress counts images rather than steps, so the schedule stays right when the batch size changes mid-run."""
    if schedule == "constant":
        return 1.0
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
