"""The learning-rate schedule. constant, onecycle, cosine and step are plain functions of progress (the share of
training images seen), so they survive batch-size changes and optimizer rebuilds, and a schedule switched mid-run
goes on from the current progress. plateau watches the logged loss instead: when it stops improving for
`patience` logged points, the peak lr itself is lowered by `decay`, a knob change that starts a new segment (an
event in the store, a marker on the charts).

torch.optim.lr_scheduler has these rules as objects that step an optimizer; labkit keeps the lr a function of
progress and the knobs instead, so nothing has to be rebuilt when the optimizer or the batch size changes."""
from __future__ import annotations

import math
from typing import Any

from .base import Allowed, Control, Knob, Technique, integer, number, one_of
from .optimizers import peak_lr

SCHEDULES = ("constant", "onecycle", "cosine", "step", "plateau")


def lr_factor(progress: float, schedule: str, warmup: float = 0.2, milestones=(0.5, 0.75),
              decay: float = 0.1) -> float:
    """Multiplier on the peak lr at `progress` (0 to 1).
    constant and plateau: 1 (plateau lowers the peak itself, see `Plateau`);
    onecycle: a linear warm-up over the first `warmup` of training, then a linear decay to zero;
    cosine: the same warm-up, then half a cosine down to zero;
    step: times `decay` at each of the `milestones` (shares of training) passed."""
    if schedule in ("constant", "plateau"):
        return 1.0
    if schedule == "step":
        return decay ** sum(progress >= m for m in milestones)
    if progress < warmup:
        return max(progress / warmup, 0.01)
    after = min(1.0, (progress - warmup) / (1.0 - warmup))  # share of the decay done
    return max(0.0, 1.0 - after) if schedule == "onecycle" else 0.5 * (1.0 + math.cos(math.pi * after))


class Plateau:
    """ReduceLROnPlateau's rule on the logged losses: a loss below best x (1 - threshold) is an improvement;
    after `patience` logged points without one, it is time to lower the lr (and counting starts again)."""

    def __init__(self, patience: int, threshold: float = 1e-3):
        self.patience, self.threshold = patience, threshold
        self.best, self.waited = math.inf, 0

    def lower_now(self, loss: float) -> bool:
        if loss < self.best * (1.0 - self.threshold):
            self.best, self.waited = loss, 0
            return False
        self.waited += 1
        if self.waited < self.patience:
            return False
        self.waited = 0
        return True


def _observe(loss: float, knobs: Any, ctx: Any) -> dict[str, Any]:
    """After each logged point: plateau's verdict on the loss, as a change of the peak lr."""
    plateau = ctx.state.get("plateau")
    if knobs.schedule != "plateau":
        ctx.state.pop("plateau", None)  # switched away: a later switch back starts watching afresh
        return {}
    if plateau is None or plateau.patience != knobs.patience:
        plateau = ctx.state["plateau"] = Plateau(knobs.patience)
    if not plateau.lower_now(loss):
        return {}
    peak = peak_lr(knobs)
    return {"lr": max(float(f"{peak * knobs.decay:.6g}"), 1e-8)}  # 6 digits: 5e-4, not 5.000000000000001e-4


def _milestones_ok(v: Any) -> bool:
    return (isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(m, (int, float)) and not isinstance(m, bool)
            and 0 < m < 1 for m in v) and list(v) == sorted(v))


def _parse_milestones(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.replace(" ", "").split(","))


LIVE = "next step: the lr follows it from the current progress"

TECHNIQUE = Technique(
    name="schedule",
    summary="how the lr moves over the run: onecycle or cosine (warm-up, then down to zero) usually reach a "
            "better accuracy than a constant lr in the same steps; step decays at set shares of training; "
            "plateau lowers the lr when the loss stops improving (it cannot plan ahead, so it lags)",
    knobs=(
        Knob("schedule", "onecycle", "learning-rate schedule: constant, onecycle (warm-up, linear decay), cosine "
             "(warm-up, cosine decay), step (x decay at milestones) or plateau (x decay when the loss stalls)",
             one_of(*SCHEDULES), live=LIVE, control=Control("dropdown"), column=True),
        Knob("warmup", 0.2, "onecycle and cosine: share of training spent warming up",
             number(0.0, 1.0, high_open=True), live=LIVE, control=Control("slider", step=0.05)),
        Knob("milestones", (0.5, 0.75), "step: shares of training at which the lr is multiplied by decay "
             "(CLI: 0.5,0.75)", Allowed(_milestones_ok, "increasing shares of training in (0, 1), e.g. (0.5, 0.75)",
                                        parse=_parse_milestones), live=LIVE),
        Knob("decay", 0.1, "step and plateau: what each decay multiplies the lr by", number(0.0, 1.0, high_open=True),
             live=LIVE),
        Knob("patience", 5, "plateau: logged points without a better loss before the lr is lowered", integer(1),
             live="next logged point"),
    ),
    observe=_observe,
)
