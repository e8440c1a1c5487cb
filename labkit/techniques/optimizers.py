"""Optimizers: torch.optim's SGD, Nesterov, Adam, AdamW, RMSprop and Adafactor; pytorch-optimizer's LAMB and Lion.

Parameters come in groups; a group's `lr_scale` multiplies the peak lr (e.g. a smaller lr for pre-trained
layers), and `set_lr` keeps that ratio whatever the schedule does.
"""
from __future__ import annotations

from ._lazy import lazy_import
from .base import Control, Knob, Technique, number, one_of

torch = lazy_import("torch")

# Peak learning rates that train the default CNN well at batch size 256 (measured: see docs/benchmarks.md).
DEFAULT_LR = {
    "sgd": 0.05,
    "nesterov": 0.05,
    "adam": 2e-3,
    "adamw": 2e-3,
    "rmsprop": 5e-4,
    "lamb": 1e-2,
    "lion": 2e-4,
    "adafactor": 3e-2,  # relative to each weight's RMS (torch.optim.Adafactor); 1e-2 and 3e-3 learn far slower
}


def peak_lr(knobs) -> float:
    """The lr a schedule scales: the `lr` knob, or the optimizer's default when it is None."""
    return knobs.lr if knobs.lr is not None else default_lr(knobs.optimizer)


def default_lr(name: str) -> float:
    return DEFAULT_LR[name]


def build(name: str, groups: list[dict], lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """An optimizer over parameter groups (dicts with "params" and optionally "lr_scale")."""
    groups = [{**g, "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=name == "nesterov",
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adafactor":  # factored second moments: optimizer state of O(rows + columns) per matrix
        return torch.optim.Adafactor(groups, lr=lr, weight_decay=weight_decay)
    from pytorch_optimizer import Lamb, Lion

    if name == "lamb":
        return Lamb(groups, lr=lr, weight_decay=weight_decay)
    if name == "lion":
        return Lion(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r} is not allowed: use one of {sorted(DEFAULT_LR)}.")


def set_lr(optimizer, lr: float) -> None:
    """Set the peak-relative lr of every group: lr x the group's lr_scale."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def state_bytes(optimizer) -> int:
    """Bytes held in the optimizer's state (momentum, moments): what Adafactor saves against Adam."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


TECHNIQUE = Technique(
    name="optimizer",
    summary="the update rule: SGD/Nesterov (cheapest state), Adam/AdamW/RMSprop, LAMB and Lion (large batches), "
            "Adafactor (factored moments, least memory); each has a default peak lr measured on the default CNN",
    knobs=(
        Knob("optimizer", "nesterov", "the update rule; each has its own default lr (None below)",
             one_of(*DEFAULT_LR), live="next step: a new optimizer over the same parameters, its state "
             "(momentum, moments) starts empty", control=Control("dropdown"), column=True),
        Knob("lr", None, "peak learning rate (None: the optimizer's default, see labkit.techniques.optimizers)",
             number(1e-8, 10.0, optional=True), live="next step: the new peak; the schedule still scales it", control=Control("float", step=1e-4)),
        Knob("weight_decay", 5e-4, "weight decay", number(0.0, 1.0)),
        Knob("momentum", 0.9, "momentum for sgd, nesterov and rmsprop", number(0.0, 1.0, high_open=True)),
    ),
    # A new optimizer over the same parameters: its state (momentum, moments) starts empty. An lr change needs
    # nothing: the step sets the lr from the knobs every time.
    change=lambda model, old, new, ctx: {"optimizer"} if new.optimizer != old.optimizer else set(),
)
