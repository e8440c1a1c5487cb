"""What a technique declares, once: its knobs (fields, allowed values, live or not, panel control) and the
functions the training step calls at its named points. Nothing here imports torch: `labkit --help` reads the
declarations without it.

The named points, in the order the trainer calls them (see labkit.train):
    start(config)                      -> knob values in force at the start (e.g. pruning scheduled for later)
    setup(model, knobs, ctx)           the raw model, once built (e.g. to channels_last, pruned at step 0)
    wrap(model, knobs)                 -> the model that trains (e.g. torch.compile); the raw model is kept
    batch(x, y, knobs, ctx)            -> (x, y): a normalised float batch before the forward pass
    loss(logits, y, x, knobs, ctx)     -> the training loss in place of cross-entropy (e.g. a teacher's soft
                                          targets), or None; called inside the step's autocast
    param_groups(model, knobs, ctx)    -> the optimizer's parameter groups (e.g. a smaller lr for pre-trained
                                          layers, frozen ones left out), or None; each time the optimizer is built
    due(progress, config, knobs)       -> knob changes due now (e.g. scheduled pruning)
    observe(loss, knobs, ctx)          -> knob changes, after each logged point (e.g. plateau lowers the lr)
    check_change(old, new)             -> None, or why a mid-run change is refused
    change(model, old, new, ctx)       -> what to rebuild after a live change: {"optimizer", "scaler", "flops"}
                                          (None: nothing)
A technique provides only the points it needs; the trainer calls each point for every technique that has it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

POINTS = ("start", "setup", "wrap", "batch", "loss", "param_groups", "due", "observe", "check_change", "change", "check")

@dataclass(frozen=True)
class Allowed:
    """The values a knob accepts: a check, the sentence that names them, and how to read one from text."""
    check: Callable[[Any], bool]
    text: str
    parse: type = str  # str, int, float or bool: how the CLI reads the flag
    optional: bool = False  # None is allowed
    options: tuple = ()  # the choices, for one_of
    low: float | None = None
    high: float | None = None


def one_of(*options: str) -> Allowed:
    return Allowed(lambda v: v in options, "one of " + ", ".join(repr(o) for o in options), options=options)


def integer(low: int, high: int | None = None, optional: bool = False) -> Allowed:
    def check(v: Any) -> bool:
        if v is None:
            return optional
        return isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
    text = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "") + (" or None" if optional else "")
    return Allowed(check, text, int, optional, low=low, high=high)


def number(low: float, high: float, high_open: bool = False, optional: bool = False) -> Allowed:
    def check(v: Any) -> bool:
        if v is None:
            return optional
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return low <= v and (v < high if high_open else v <= high)
    text = f"a number in [{low}, {high}{')' if high_open else ']'}" + (" or None" if optional else "")
    return Allowed(check, text, float, optional, low=low, high=high)


def int_or_text(text: str) -> int | str:
    """How the CLI reads a knob that takes a number or a word (a run id or a path; a block count or 'backbone')."""
    return int(text) if text.isdigit() else text


def run_or_path() -> Allowed:
    """A stored run's id (an integer) or the path of a weights file; None for none."""
    def check(v: Any) -> bool:
        if v is None:
            return True
        return (isinstance(v, int) and not isinstance(v, bool) and v >= 1) or (isinstance(v, str) and bool(v))
    return Allowed(check, "None, a run id (an integer >= 1) or a weights file's path", int_or_text, optional=True)


def boolean() -> Allowed:
    return Allowed(lambda v: isinstance(v, bool), "True or False", bool, options=(False, True))


@dataclass(frozen=True)
class Control:
    """How the panel shows a knob: kind is 'dropdown', 'toggle', 'slider', 'select' (a slider over `options`),
    'float' or 'int' (a box); `format` is the slider's readout, `step` its step."""
    kind: str
    options: tuple = ()
    step: float | None = None
    format: str | None = None


@dataclass(frozen=True)
class Knob:
    """One RunConfig field. `live`: what a change does mid-run ("next batch", ...); empty: it cannot change
    during a run. `control`: its place in the panel (None: not shown). `column`: shown as a column by
    `labkit runs` and a line of the plots' hover text."""
    name: str
    default: Any
    help: str
    allowed: Allowed
    live: str = ""
    control: Control | None = None
    column: bool = False

    def dataclass_field(self) -> tuple[str, Any, Any]:
        return self.name, Any, field(default=self.default, metadata={"knob": self})


@dataclass(frozen=True)
class Technique:
    """A technique: its knobs and what it provides at the step's named points (see the module doc)."""
    name: str
    summary: str  # what it does, and its honest cost, in a sentence
    knobs: tuple[Knob, ...]
    start: Callable | None = None
    setup: Callable | None = None
    wrap: Callable | None = None
    batch: Callable | None = None
    loss: Callable | None = None
    param_groups: Callable | None = None
    due: Callable | None = None
    observe: Callable | None = None
    check_change: Callable | None = None
    change: Callable | None = None
    check: Callable | None = None  # (config) -> None, or why this combination of values cannot run

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def changed(self, old: Any, new: Any) -> bool:
        return any(getattr(old, n) != getattr(new, n) for n in self.names)


@dataclass
class Context:
    """What the named points may use besides the model and the knobs."""
    device: Any  # torch.device
    num_classes: int
    example_input: Any  # a zero image batch of one, on the device
    gen: Any  # the run's torch.Generator (data order and augmentation)
    state: dict = field(default_factory=dict)  # what a technique remembers during the run, under its name
    info: dict = field(default_factory=dict)  # what a technique's set-up found, recorded with the run's info
