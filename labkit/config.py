"""The run configuration: plain values that are also papermill parameters, CLI flags and widget controls.

`RunConfig` is a flat dataclass built from declarations: the core knobs below (what to train, on what, for how
long) and each registered technique's knobs (labkit.techniques). Every field carries its Knob: help text,
allowed values, whether it may change mid-run, its panel control. `RunConfig.validate()` checks them all
before anything trains, and names the field, the value and what is allowed when one is wrong.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from .techniques import AT
from .techniques import knobs as technique_knobs
from .techniques.base import Allowed, Control, Knob, boolean, integer, one_of

MODELS = ("cnn", "resnet18", "mobilenet_v3_small")
NORMS = ("batch", "group")
DATASETS = ("synthetic", "synthetic-b", "cifar10", "fashionmnist", "imagefolder:<path>")
LOADERS = ("auto", "device", "dataloader")


def _dataset_ok(v: Any) -> bool:
    return isinstance(v, str) and (v in DATASETS[:-1] or (v.startswith("imagefolder:") and len(v) > 12))


def _device_ok(v: Any) -> bool:
    if v in ("auto", "cpu", "cuda", "mps"):
        return True
    return isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()


# What to train, on what data and device: the knobs that are not a technique.
_MODEL_KNOBS = (
    Knob("dataset", "synthetic", "synthetic (generated, embedded; synthetic-b: 5 other classes, a second task for "
         "transfer learning), cifar10, fashionmnist or imagefolder:<path>",
         Allowed(_dataset_ok, "one of " + ", ".join(repr(d) for d in DATASETS)), column=True),
    Knob("model", "cnn", "cnn (small, fast; see width/depth), resnet18 or mobilenet_v3_small", one_of(*MODELS),
         column=True),
    Knob("width", 16, "cnn: channels of the first block (doubled per block)", integer(4, 1024)),
    Knob("depth", 3, "cnn: number of conv blocks, each halves the resolution", integer(1, 4)),
    Knob("norm", "batch", "normalisation layers: batch (BatchNorm) or group (GroupNorm, independent of the batch)",
         one_of(*NORMS)),
    Knob("batch_size", 256, "images per training step (per micro-batch with grad_accum)", integer(1, 65536),
         live="next batch: the epoch goes on from where it was; the schedule follows images, not steps", control=Control("select", tuple(2 ** k for k in range(3, 13))), column=True),
)
_RUN_KNOBS = (
    Knob("epochs", 2, "passes over the training set", integer(1, 10000), control=Control("int"), column=True),
    Knob("max_steps", None, "stop after this many optimizer steps (None: epochs decide)", integer(1, optional=True)),
    Knob("train_size", None, "training images (None: the whole split; else a fixed subset)",
         integer(1, optional=True)),
    Knob("test_size", None, "test images (None: the whole split; else a fixed subset)", integer(1, optional=True)),
    Knob("save", False, "keep the trained weights: a checkpoint file beside the store, for labkit.load_model, "
         "quantize, and other runs' teacher or init", boolean(), control=Control("toggle")),
    Knob("seed", 0, "seed for the initial weights, data order and augmentation", integer(0)),
    Knob("device", "auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
         Allowed(_device_ok, "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")),
    Knob("loader", "auto", "device (uint8 data resident on the device), dataloader, or auto", one_of(*LOADERS)),
    Knob("log_every", 10, "steps between two logged points; each one synchronises the device once", integer(1)),
    Knob("timing_warmup", 5, "steps at the start of each segment left out of throughput", integer(0)),
)
KNOBS: tuple[Knob, ...] = (*_MODEL_KNOBS, *technique_knobs(), *_RUN_KNOBS)
KNOB = {k.name: k for k in KNOBS}
# The knobs a live run may change between two steps (see labkit.live).
LIVE_KNOBS = tuple(k.name for k in KNOBS if k.live)
# Shown as columns by `labkit runs` and as lines of the plots' hover text.
COLUMNS = tuple(k.name for k in KNOBS if k.column)


class _Methods:
    def __post_init__(self) -> None:
        for knob in KNOBS:  # a list from JSON or papermill where the knob holds a tuple (schedule's milestones)
            if isinstance(knob.default, tuple) and isinstance(getattr(self, knob.name), list):
                setattr(self, knob.name, tuple(getattr(self, knob.name)))

    def check_values(self) -> "RunConfig":
        """Check each field alone; raise ValueError naming the field, its value and what is allowed."""
        for knob in KNOBS:
            value = getattr(self, knob.name)
            if not knob.allowed.check(value):
                raise ValueError(f"{knob.name}={value!r} is not allowed: use {knob.allowed.text}.")
        return self

    def validate(self) -> "RunConfig":
        """Check every field, then the combinations (each technique's `check` among them)."""
        self.check_values()
        if self.dataset.startswith("imagefolder:"):
            path = self.dataset.split(":", 1)[1]
            if not os.path.isdir(path):
                raise ValueError(f"dataset={self.dataset!r}: the folder {path!r} does not exist; "
                                 "point imagefolder: at a folder with one sub-folder per class "
                                 "(or train/ and test/ folders holding those).")
        if self.train_size is not None and self.batch_size * self.grad_accum > self.train_size:
            step = f"batch_size={self.batch_size}" + (f" x grad_accum={self.grad_accum}" if self.grad_accum > 1 else "")
            raise ValueError(f"{step} is larger than train_size={self.train_size}: no step would fit in an epoch; "
                             "lower batch_size" + (" or grad_accum" if self.grad_accum > 1 else "")
                             + ", or raise train_size.")
        for technique in AT["check"]:
            problem = technique.check(self)
            if problem:
                raise ValueError(problem)
        return self

    @classmethod
    def of(cls, config: "RunConfig | dict | None") -> "RunConfig":
        """The configuration itself, one from a dict of fields, or the defaults for None."""
        if config is None:
            return cls()
        return cls.from_dict(config) if isinstance(config, dict) else config

    def replace(self, **changes: Any) -> "RunConfig":
        _refuse_unknown(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        _refuse_unknown(values)
        return cls(**values)

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults (a short name for a run)."""
        return {k.name: getattr(self, k.name) for k in KNOBS if getattr(self, k.name) != k.default}


RunConfig = dataclasses.make_dataclass("RunConfig", [k.dataclass_field() for k in KNOBS], bases=(_Methods,))
RunConfig.__module__ = __name__
RunConfig.__doc__ = ("One training run, as plain values. Field names double as CLI flags and papermill "
                     "parameters; `labkit.config.KNOB[name]` holds each one's help, allowed values and rules.")


def _refuse_unknown(values: dict[str, Any]) -> None:
    unknown = set(values) - set(KNOB)
    if unknown:
        raise ValueError(f"unknown run setting(s) {sorted(unknown)}: use one of {field_names()}.")


def field_names() -> list[str]:
    return [k.name for k in KNOBS]


def knob_table() -> str:
    """The README's table of knobs, in Markdown, made from the declarations (`labkit knobs` prints it)."""
    rows = ["| field | default | allowed | mid-run change | meaning |", "| --- | --- | --- | --- | --- |"]
    for k in KNOBS:
        cells = [f"`{k.name}`", f"`{k.default!r}`", k.allowed.text, k.live or "no", k.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
