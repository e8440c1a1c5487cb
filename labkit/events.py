"""What the training loop tells its listeners. A listener is any callable taking one event.

The store, the progress bar and the lab's dashboard are listeners; the loop imports none of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class RunStarted:
    config: dict[str, Any]
    info: dict[str, Any]  # device, hardware, versions, model size before training
    total_steps: int
    kind: str = "run_started"


@dataclass
class Logged:
    """Every `log_every` steps (and at each segment and epoch end): the device was synchronised here."""
    step: int
    epoch: int
    segment: int
    time_s: float  # since the run started
    loss: float  # mean training loss over the steps since the last point
    lr: float
    batch_size: int
    throughput: float | None  # images/s over those steps; None while warming up after a change
    data_s: float  # time spent producing batches (indexing, augmentation; waiting for a DataLoader)
    compute_s: float  # time spent in forward, backward and the optimizer step
    loss_scale: float | None  # fp16's GradScaler scale, else None
    skipped_steps: int  # optimizer steps skipped by the GradScaler so far
    grad_accum: int = 1  # micro-batches per step: the step's images are batch_size x grad_accum
    kind: str = "logged"


@dataclass
class SegmentStarted:
    """A knob changed (or the run began): what follows is measured as a new segment."""
    segment: int
    step: int
    time_s: float
    knobs: dict[str, Any]
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (old, new)
    flops_per_image: int | None = None  # forward FLOPs of the model that trains from here (channel pruning cuts them)
    kind: str = "segment_started"

    @property
    def label(self) -> str:
        return ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in self.changes.items()) or "start"


@dataclass
class ChangeDropped:
    """A mid-run change accepted when requested but invalid by the time the loop got to it (an earlier change
    was applied in between, e.g. prune=0.3 requested, then prune=0.5 applied): the run goes on without it."""
    step: int
    time_s: float
    changes: dict[str, Any]
    reason: str
    kind: str = "change_dropped"


@dataclass
class EpochEnded:
    epoch: int
    step: int
    time_s: float
    segment: int
    train_loss: float
    test_accuracy: float
    train_accuracy: float  # on a fixed subset of the training images, without augmentation
    epoch_time_s: float
    kind: str = "epoch_ended"


@dataclass
class RunEnded:
    result: Any  # labkit.RunResult: status "completed", "stopped" or "failed", with the error
    checkpoint: dict | None = None  # save=True: what the checkpoint file holds (labkit.checkpoints.payload)
    kind: str = "run_ended"


Event = RunStarted | Logged | SegmentStarted | ChangeDropped | EpochEnded | RunEnded
Listener = Callable[[Event], None]


def to_message(event: Event) -> dict[str, Any]:
    """An event as plain values (JSON), for a distributed run's rank 0 to send to the kernel."""
    values = dict(vars(event))
    if event.kind == "run_ended":
        values["result"] = event.result.to_record()
        values.pop("checkpoint")  # tensors: rank 0's own Recorder has written them
    return values


def from_message(values: dict[str, Any]) -> Event:
    """The event `to_message` sent (tuples arrive as lists, which is how the listeners read them anyway)."""
    values = dict(values)
    cls = _KINDS[values.pop("kind")]
    if cls is RunEnded:
        from .result import RunResult

        values["result"] = RunResult.from_record(values["result"])
    if cls is SegmentStarted:
        values["changes"] = {k: tuple(v) for k, v in values["changes"].items()}
    return cls(**values)


_KINDS = {cls.kind: cls for cls in (RunStarted, Logged, SegmentStarted, ChangeDropped, EpochEnded, RunEnded)}
