"""The learning-rate schedule: a plain function of progress (the share of training images seen), so it survives
batch-size changes and optimizer rebuilds mid-run."""
from __future__ import annotations

from .base import Knob, Technique, number, one_of

SCHEDULES = ("constant", "onecycle")


def lr_factor(progress: float, schedule: str, warmup: float) -> float:
    """Multiplier on the peak lr at `progress` (0 to 1): constant, or onecycle, a linear warm-up over the first
    `warmup` of training and a linear decay to zero after it."""
    if schedule == "constant":
        return 1.0
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


TECHNIQUE = Technique(
    name="schedule",
    summary="how the lr moves over the run: constant, or onecycle (warm-up then linear decay to zero), which "
            "usually reaches a better accuracy in the same number of steps",
    knobs=(
        Knob("schedule", "onecycle", "learning-rate schedule: constant, or onecycle (warm-up then linear decay)",
             one_of(*SCHEDULES)),
        Knob("warmup", 0.2, "onecycle: fraction of the steps spent warming up", number(0.0, 1.0, high_open=True)),
    ),
)
