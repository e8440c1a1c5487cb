"""The run configuration: plain values that are also papermill parameters, CLI flags and widget controls.

Every field is declared once here with its help text and its rule; `RunConfig.validate()` checks them all
before anything trains, and names the field, the value and what is allowed when one is wrong.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable

AMP_MODES = ("off", "bf16", "fp16", "auto")
AUGMENT_PRESETS = ("none", "flip", "flip-crop", "cutout", "mixup", "cutmix")
PRUNE_METHODS = ("unstructured", "channels")
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop", "lamb", "lion")
MODELS = ("cnn", "resnet18", "mobilenet_v3_small")
DATASETS = ("synthetic", "cifar10", "fashionmnist", "imagefolder:<path>")
SCHEDULES = ("constant", "onecycle")
LOADERS = ("auto", "device", "dataloader")

# The knobs a live run may change between two steps (see labkit.live).
LIVE_KNOBS = ("amp", "batch_size", "augment", "prune", "prune_method", "optimizer", "lr")


def _knob(default: Any, help: str, check: Callable[[Any], bool] | None = None, allowed: str = "") -> Any:
    return field(default=default, metadata={"help": help, "check": check, "allowed": allowed})


def _one_of(options: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


def _int_in(lo: int, hi: int | None = None) -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    return check, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")


def _number_in(lo: float, hi: float, hi_open: bool = False, optional: bool = False):
    def check(v: Any) -> bool:
        if v is None:
            return optional
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return lo <= v and (v < hi if hi_open else v <= hi)
    text = f"a number in [{lo}, {hi}{')' if hi_open else ']'}" + (" or None" if optional else "")
    return check, text


def _positive_int_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def _dataset_ok(v: Any) -> bool:
    return isinstance(v, str) and (v in DATASETS[:3] or (v.startswith("imagefolder:") and len(v) > 12))


def _device_ok(v: Any) -> bool:
    if v in ("auto", "cpu", "cuda", "mps"):
        return True
    return isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()


@dataclass
class RunConfig:
    """One training run, as plain values. Field names double as CLI flags and papermill parameters."""

    dataset: str = _knob("synthetic", "synthetic (generated, embedded), cifar10, fashionmnist or imagefolder:<path>",
                         _dataset_ok, "one of 'synthetic', 'cifar10', 'fashionmnist', 'imagefolder:<path>'")
    model: str = _knob("cnn", "cnn (small, fast; see width/depth), resnet18 or mobilenet_v3_small", *_one_of(MODELS))
    width: int = _knob(16, "cnn: channels of the first block (doubled per block)", *_int_in(4, 1024))
    depth: int = _knob(3, "cnn: number of conv blocks, each halves the resolution", *_int_in(1, 4))
    amp: str = _knob("off", "mixed precision: off (fp32), bf16, fp16 (with a GradScaler), or auto (the fastest one "
                     "the device runs natively)", *_one_of(AMP_MODES))
    batch_size: int = _knob(256, "images per training step", *_int_in(1, 65536))
    augment: str = _knob("flip-crop", "augmentation preset applied to whole batches on the device",
                         *_one_of(AUGMENT_PRESETS))
    prune: float = _knob(0.0, "fraction of prunable weights (unstructured) or channels (channels) to remove",
                         *_number_in(0.0, 0.95))
    prune_method: str = _knob("unstructured", "unstructured (masks) or channels (structured, removes channels)",
                              *_one_of(PRUNE_METHODS))
    prune_at: float = _knob(0.5, "fraction of the training steps after which pruning is applied (0: before training)",
                            *_number_in(0.0, 1.0, hi_open=True))
    optimizer: str = _knob("nesterov", "sgd, nesterov, adam, adamw, rmsprop, lamb or lion", *_one_of(OPTIMIZERS))
    lr: float | None = _knob(None, "peak learning rate (None: the optimizer's default, see labkit.optim)",
                             *_number_in(1e-8, 10.0, optional=True))
    weight_decay: float = _knob(5e-4, "weight decay", *_number_in(0.0, 1.0))
    momentum: float = _knob(0.9, "momentum for sgd, nesterov and rmsprop", *_number_in(0.0, 1.0, hi_open=True))
    schedule: str = _knob("onecycle", "learning-rate schedule: constant, or onecycle (warm-up then linear decay)",
                          *_one_of(SCHEDULES))
    warmup: float = _knob(0.2, "onecycle: fraction of the steps spent warming up", *_number_in(0.0, 1.0, hi_open=True))
    epochs: int = _knob(2, "passes over the training set", *_int_in(1, 10000))
    max_steps: int | None = _knob(None, "stop after this many steps (None: epochs decide)", _positive_int_or_none,
                                  "an integer >= 1 or None")
    train_size: int | None = _knob(None, "training images (None: the whole split; else a fixed subset)",
                                   _positive_int_or_none, "an integer >= 1 or None")
    test_size: int | None = _knob(None, "test images (None: the whole split; else a fixed subset)",
                                  _positive_int_or_none, "an integer >= 1 or None")
    seed: int = _knob(0, "seed for the initial weights, data order and augmentation", *_int_in(0))
    device: str = _knob("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", _device_ok,
                        "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    loader: str = _knob("auto", "device (uint8 data resident on the device), dataloader, or auto",
                        *_one_of(LOADERS))
    log_every: int = _knob(10, "steps between two logged points; each one synchronises the device once",
                           *_int_in(1))
    timing_warmup: int = _knob(5, "steps at the start of each segment left out of throughput", *_int_in(0))

    def validate(self) -> "RunConfig":
        """Check every field; raise ValueError naming the field, its value and what is allowed."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check = f.metadata["check"]
            if check is not None and not check(value):
                raise ValueError(f"{f.name}={value!r} is not allowed: use {f.metadata['allowed']}.")
        if self.dataset.startswith("imagefolder:"):
            path = self.dataset.split(":", 1)[1]
            if not os.path.isdir(path):
                raise ValueError(f"dataset={self.dataset!r}: the folder {path!r} does not exist; "
                                 "point imagefolder: at a folder with one sub-folder per class "
                                 "(or train/ and test/ folders holding those).")
        if self.train_size is not None and self.batch_size > self.train_size:
            raise ValueError(f"batch_size={self.batch_size} is larger than train_size={self.train_size}: "
                             "lower batch_size or raise train_size.")
        return self

    def replace(self, **changes: Any) -> "RunConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown run setting(s) {sorted(unknown)}: use one of {field_names()}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        unknown = set(values) - set(field_names())
        if unknown:
            raise ValueError(f"unknown run setting(s) {sorted(unknown)}: use one of {field_names()}.")
        return cls(**values)

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults (a short name for a run)."""
        default = RunConfig()
        return {k: v for k, v in self.to_dict().items() if getattr(default, k) != v}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def field_help() -> dict[str, tuple[Any, str, str]]:
    """name -> (default, help, allowed), for the CLI and the README's table."""
    return {f.name: (f.default, f.metadata["help"], f.metadata["allowed"]) for f in dataclasses.fields(RunConfig)}
