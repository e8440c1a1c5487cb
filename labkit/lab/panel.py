"""The lab panel: a control for each knob that declares one, Run and Stop, a status line and live charts.

    lab = labkit.Lab(labkit.RunConfig(train_size=5000, epochs=3))
    lab            # display it in a notebook, press Run, then move the controls while it trains

With "live" on, moving a control changes the running run (through `LiveRun.set`: checked at once, applied at
the next step boundary, and shown as a new segment); with it off, or with no run training, the controls set up
the next run. Knobs that cannot change mid-run (epochs, compile) say "(next run)". Widget callbacks only call `LiveRun.set`, `start` and `stop`:
the model is touched by the training thread alone.

The status shows up to three lines: progress and speed (step, epoch, img/s, AMP, the segment), then the model: train and
test accuracy with the generalisation gap, forward FLOPs per image (they drop after channel pruning), MFU where
the device's peak FLOP/s is known (none on a CPU), and peak memory (GPU tensors, or the process's RSS on a CPU);
a third line says whether the steps wait for data, and what to try. "find lr" and "find batch size" measure
before (or during) a run and offer their suggestions as buttons (labkit.lab.finder_tools).
"""
from __future__ import annotations

import html
import math
import time
from typing import Any

import ipywidgets as widgets

from .. import devices
from ..config import KNOB, KNOBS, RunConfig
from ..live import LiveRun
from ..store import Store
from ..measure import data_share
from ..techniques import TECHNIQUES, data_loading, optimizers
from ..techniques.base import Knob
from ..train import mfu
from .dashboard import Dashboard
from .finder_tools import FinderTools

_STATUS_INTERVAL_S = 0.25  # the status line is redrawn at most 4 times a second


def _knob_groups() -> list[list[Knob]]:
    """The knobs that have a control, in rows of at most two: the core knobs, then the techniques' in registry
    order (a technique's knobs stay together; the AMP buttons take a row of their own)."""
    technique_names = {k.name for t in TECHNIQUES for k in t.knobs}
    core = [k for k in KNOBS if k.control and k.name not in technique_names]
    rows: list[list[Knob]] = [core]
    for group in ([k for k in t.knobs if k.control] for t in TECHNIQUES):
        if not group:
            continue
        wide = any(k.control.kind == "buttons" for k in group + rows[-1])
        if len(rows[-1]) + len(group) <= 2 and not wide:
            rows[-1] = rows[-1] + group
        else:
            rows.append(group)
    return [row for row in rows if row]


def _si(n: float) -> str:
    """4.12e6 -> '4.12 M', 512 -> '512 ' (a unit follows)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1)):
        if abs(n) >= scale or not unit:
            v = n / scale
            return f"{v:.{2 if abs(v) < 10 else 1 if abs(v) < 100 else 0}f} {unit}"


def _accuracy_text(train: float, test: float) -> str:
    """'train 71.4% / test 64.2% (gap 7.2 pts)': the gap is the shown figures' difference, so they add up."""
    train_pct, test_pct = f"{train * 100:.1f}", f"{test * 100:.1f}"
    return f"train {train_pct}% / test {test_pct}% (gap {float(train_pct) - float(test_pct):.1f} pts)"


def _memory_text(peak_bytes: int, device) -> str:
    """Peak memory, named for what devices.peak_memory_bytes measures on this device."""
    mib = f"{peak_bytes / 2**20:,.0f} MiB"
    if device.type == "cuda":
        return f"peak GPU mem {mib} (tensors)"
    if device.type == "mps":
        return f"mem {mib} (MPS driver)"
    return f"peak mem {mib} (process RSS)"


def _read_value(value: Any) -> Any:
    # A slider's 0.30000000000000004 reads 0.3; significant digits, so an lr of 7.3e-4 stays 7.3e-4.
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _read(widget: widgets.Widget) -> Any:
    return _read_value(widget.value)


class Lab:
    """A widget panel that starts live runs and changes their knobs while they train (see the module doc)."""

    def __init__(self, config: RunConfig | dict | None = None, store: Store | str | None = None, live: bool = True):
        config = RunConfig.of(config)
        self.base = config.validate()
        self.store = Store.of(store)
        self.device = devices.resolve_device(self.base.device)
        self.run: LiveRun | None = None
        self.dashboard = Dashboard(self.store)
        self._syncing = False  # True while the panel sets a control itself: not a user's change
        self._lr_auto = config.lr is None  # follow the optimizer's default lr until the user sets one
        self._build_controls(config, live)
        self._accepted = self._knob_values()  # the last value of each knob that the run accepted
        self._last: dict[str, Any] = {}
        self._last_status = -math.inf
        self.last_error: str | None = None  # the message the panel shows in red, if any
        self.status = widgets.HTML(self._status_text()).add_class("labkit-status")
        self.errors = widgets.HTML("").add_class("labkit-errors")
        self.widget = widgets.VBox([self._controls_box, self.status, self.errors, self.finders.widget,
                                    self.dashboard.widget])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- controls ------------------------------------------------------------------------------------------
    def _build_controls(self, c: RunConfig, live: bool) -> None:
        """One control per knob that declares one (labkit.config.KNOBS), a row per technique; knobs that cannot
        change mid-run say "(next run)"."""
        self.controls: dict[str, widgets.Widget] = {}
        rows = []
        for group in _knob_groups():
            row = [self._control(knob, getattr(c, knob.name)) for knob in group]
            rows.append(widgets.HBox(row))
        self.run_button = widgets.Button(description="Run", button_style="success", icon="play").add_class("labkit-run")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop").add_class("labkit-stop")
        self.live = widgets.ToggleButton(value=live, description="live", icon="bolt",
                                         tooltip="on: controls change the running run; off: they set up the next run")
        self.live.add_class("labkit-live")
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.finders = FinderTools(self)
        rows.append(widgets.HBox([self.run_button, self.stop_button, self.live, self.finders.buttons]))
        self._controls_box = widgets.VBox(rows)

    def _control(self, knob: Knob, value: Any) -> widgets.Widget:
        kind, allowed = knob.control.kind, knob.allowed
        label = knob.name.replace("_", " ") + ("" if knob.live else " (next run)")
        style = {"description_width": "120px" if not knob.live else "90px"}
        wide = widgets.Layout(width="320px")
        if kind == "buttons":  # amp: one button per precision, marked when the device emulates it
            return self._amp_control(value)
        if kind == "dropdown":
            widget = widgets.Dropdown(options=allowed.options, value=value, description=label, layout=wide, style=style)
        elif kind == "select":
            sizes = sorted(set(knob.control.options) | {value})
            if self.base.train_size:
                sizes = [b for b in sizes if b <= self.base.train_size or b == value]
            widget = widgets.SelectionSlider(options=sizes, value=value, description=label, continuous_update=False,
                                             layout=wide, style=style)
        elif kind == "slider":
            widget = widgets.FloatSlider(value=value, min=allowed.low, max=allowed.high, step=knob.control.step,
                                         description=label, continuous_update=False,
                                         readout_format=knob.control.format or ".2f", layout=wide, style=style)
        elif kind == "toggle":
            widget = widgets.ToggleButton(value=value, description=label, icon="check", tooltip=knob.help)
        elif kind == "int":
            widget = widgets.BoundedIntText(value=value, min=allowed.low, max=allowed.high or 2**31 - 1,
                                            description=label, layout=wide, style=style)
        elif kind == "float":
            shown = value if value is not None else optimizers.default_lr(self.base.optimizer)
            widget = widgets.BoundedFloatText(value=shown, min=allowed.low, max=allowed.high, step=knob.control.step,
                                              description=label, layout=wide, style=style)
        else:
            raise ValueError(f"knob {knob.name!r} declares control kind {kind!r}: the panel knows 'buttons', "
                             "'dropdown', 'select', 'slider', 'toggle', 'int' and 'float'.")
        widget.add_class("labkit-" + knob.name.replace("_", "-"))
        widget.tooltip = knob.help
        widget.observe(lambda change, n=knob.name: self._on_control(n, change["new"]), names="value")
        self.controls[knob.name] = widget
        return widget

    def _amp_control(self, amp: str) -> widgets.Widget:
        # Every mode the device can run stays clickable; an emulated one is marked, and the note says why.
        self.precisions = devices.precisions(self.device)
        self.amp_buttons = {}
        for mode, p in self.precisions.items():
            button = widgets.Button(description=mode, disabled=not p.available, tooltip=f"{mode}: {p.note}",
                                    icon="" if p.native else "exclamation-triangle",
                                    layout=widgets.Layout(width="70px" if p.native else "90px"))
            button.add_class(f"labkit-amp-{mode}")
            if p.available and not p.native:
                button.add_class("labkit-amp-emulated")
            button.on_click(lambda _, m=mode: self._choose_amp(m))
            self.amp_buttons[mode] = button
        self.amp = devices.resolve_amp(amp, self.device)
        self._paint_amp()
        marked = [f"{m}: {p.note}" for m, p in self.precisions.items() if not p.native]
        self.amp_note = widgets.HTML("<small>" + html.escape("; ".join(marked)) + "</small>")
        return widgets.HBox([widgets.Label("AMP", layout=widgets.Layout(width="90px")), *self.amp_buttons.values(),
                             self.amp_note])

    def __getattr__(self, name: str) -> Any:
        """A knob's control by the knob's name: `lab.batch_size`, `lab.augment` ..."""
        controls = self.__dict__.get("controls", {})
        if name in controls:
            return controls[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _paint_amp(self) -> None:
        for mode, button in self.amp_buttons.items():
            button.button_style = "primary" if mode == self.amp else ""

    def _choose_amp(self, mode: str) -> None:
        if self.amp_buttons[mode].disabled:  # only reachable from Python: the browser cannot click it
            self._show_error(f"amp={mode!r} cannot run on {self.device}: {self.precisions[mode].note}")
            return
        if mode != self.amp:
            previous, self.amp = self.amp, mode
            self._paint_amp()
            if not self._on_control("amp", mode):
                self.amp = previous
                self._paint_amp()

    def _knob_values(self) -> dict[str, Any]:
        values = {name: _read(widget) for name, widget in self.controls.items()}
        values["amp"] = self.amp
        if self._lr_auto:
            values["lr"] = None
        return values

    @property
    def config(self) -> RunConfig:
        """The configuration the next run will use: the panel's controls over the Lab's base configuration."""
        return self.base.replace(**self._knob_values())

    def _on_control(self, name: str, value: Any) -> bool:
        """A user moved a control: change the running run (live) or just the next run. False if refused."""
        if self._syncing:
            return True
        if name == "lr":
            self._lr_auto = False
        value = _read_value(value)
        if name == "optimizer" and self._lr_auto:
            self._set_quietly(self.lr, optimizers.default_lr(value))
        if not (self.live.value and self.training and KNOB[name].live):
            self._show_error("")
            return True
        try:
            changes = {name: value}
            if name == "optimizer" and self._lr_auto:
                changes["lr"] = None
            self.run.set(**changes)
        except (ValueError, RuntimeError) as exc:
            self._show_error(str(exc))
            if name != "amp":
                self._set_quietly(self.controls[name], self._accepted[name])
            return False
        self._accepted[name] = value
        self._show_error("")
        return True

    def set_control(self, knob: str, value: Any) -> bool:
        """Do from Python what a user does with the mouse: click the AMP button, or move the knob's control.
        Returns False when the change was refused (the message is in `last_error`)."""
        if knob == "amp":
            value = devices.resolve_amp(value, self.device) if value == "auto" else value
            self.amp_buttons[value].click()
            return self.amp == value
        control = self.controls[knob]
        control.value = value
        return control.value == value

    def _set_quietly(self, control, value) -> None:
        self._syncing = True
        try:
            control.value = value
        finally:
            self._syncing = False

    # ---- runs ----------------------------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        return self.run is not None and self.run.running

    def start(self) -> LiveRun | None:
        """Start a run with the panel's configuration (what Run does). A refusal is shown in the panel."""
        if self.finders.busy and not self.training:
            self._show_error("a finder is measuring on this device: start the run when it is done.")
            return None
        try:
            run = LiveRun(self.config, store=self.store, listeners=self.listeners)
            run.start()
        except (ValueError, RuntimeError) as exc:
            self._show_error(str(exc))
            return None
        self.run = run  # the status figures start afresh at the run's RunStarted (which may already have come)
        self._accepted = self._knob_values()
        self._show_error("")
        return run

    @property
    def listeners(self) -> list:
        """What the panel attaches to each run it starts: the charts and the status line."""
        return [self.dashboard, self._on_event]

    def stop(self) -> None:
        """Stop the run at its next step boundary (what Stop does)."""
        if self.training:
            self.run.stop()

    def wait(self, timeout: float | None = None):
        return self.run.wait(timeout) if self.run is not None else None

    # ---- status (training thread) --------------------------------------------------------------------------
    def _on_event(self, event) -> None:
        kind, last = event.kind, self._last  # (RunStarted replaces it: each run's figures start afresh)
        if kind == "run_started":
            self._last = {"info": event.info, "total_steps": event.total_steps,
                          "dense_flops": event.info.get("dense_flops_per_image")}
        elif kind == "logged":
            last["logged"] = event
            if event.throughput:
                last["throughput"] = event.throughput
                last["data_share"] = data_share(event.data_s, event.compute_s)
        elif kind == "epoch_ended":
            last["accuracy"] = (event.train_accuracy, event.test_accuracy)
        elif kind == "segment_started":
            last["segment"] = f"#{event.segment} {event.label}"
            if "lr" in event.changes and "lr" in self.controls:  # e.g. plateau lowered it: the control follows
                self._lr_auto = False
                self._accepted["lr"] = event.changes["lr"][1]
                self._set_quietly(self.controls["lr"], event.changes["lr"][1])
            if event.flops_per_image is not None:  # channel pruning changes the model's FLOPs
                last["flops"] = event.flops_per_image
        elif kind == "run_ended":
            last["ended"] = event.result
            if event.result.error:
                self._show_error(f"run {event.result.status}: {event.result.error}")
        now = time.monotonic()
        if kind in ("run_ended", "epoch_ended", "segment_started") or now - self._last_status >= _STATUS_INTERVAL_S:
            self._last_status = now
            # A cheap read (no synchronisation), at most once per redraw; the end has its own. A distributed run's
            # memory is its processes', not this kernel's: it comes with the result.
            if kind != "run_ended" and self.run is not None and self.run.config.nproc == 1:
                self._last["memory"] = devices.peak_memory_bytes(self.device)
            self.status.value = self._status_text()

    def _status_text(self) -> str:
        """Two lines: the run's progress and speed, then what the model does (accuracy and the generalisation
        gap, forward FLOPs per image, MFU where the device's peak is known, peak memory). Once the run has ended,
        throughput, MFU and peak memory are the RunResult's (throughput over the whole run)."""
        last, run = self._last, self.run
        if run is None:
            return "<code>" + html.escape(f"{self.device} · ready: press Run") + "</code>"
        parts = [str(self.device)]
        ended = last.get("ended")
        parts.append(ended.status if ended else run.status)
        logged = last.get("logged")
        if logged is not None:
            parts.append(f"step {logged.step}/{last.get('total_steps', '?')}")
            parts.append(f"epoch {logged.epoch}/{run.config.epochs}")
        throughput, note = last.get("throughput"), ""
        flops, dense, memory = last.get("flops"), last.get("dense_flops"), last.get("memory")
        if ended is not None:
            if ended.throughput:
                throughput, note = ended.throughput, " (run mean)"
            flops = ended.flops_per_image or flops
            dense = ended.dense_flops_per_image or dense
            memory = ended.peak_memory_bytes or memory
        if throughput:
            parts.append(f"{throughput:,.0f} img/s{note}")
        parts.append(f"amp {run.knobs.amp}" + ("" if self.precisions[run.knobs.amp].native else " (emulated)"))
        if logged is not None and logged.loss_scale is not None:
            parts.append(f"scale {logged.loss_scale:g} ({logged.skipped_steps} skipped steps)")
        if "segment" in last:
            parts.append(f"segment {last['segment']}")
        if run.rejected:
            parts.append(f"dropped change: {run.rejected[-1]}")

        model = []
        if "accuracy" in last:
            model.append(_accuracy_text(*last["accuracy"]))
        if flops:
            model.append(f"fwd {_si(flops)}FLOPs/img" + (f" (dense {_si(dense).strip()})" if dense and dense != flops
                                                           else ""))
        # MFU only where the device's peak FLOP/s is known (a GPU in devices' table): none at all on a CPU.
        utilisation = ended.mfu if ended is not None else mfu(  # per device: the throughput is nproc devices'
            flops, throughput and throughput / run.config.nproc, self.device, run.knobs.amp)
        if utilisation is not None:
            model.append(f"MFU {utilisation:.1%}")
        if memory:
            model.append(_memory_text(memory, self.device))
        lines = [parts] + ([model] if model else [])
        # Does the run wait for data? (the verdict names what to try)
        verdict = (ended.input_verdict if ended is not None else
                   data_loading.verdict(last.get("data_share"), run.config, self.device))
        if verdict:
            lines.append(["input: " + verdict])
        return "<br>".join("<code>" + html.escape(" · ".join(line)) + "</code>" for line in lines)

    def _show_error(self, message: str) -> None:
        self.errors.value = (f"<div style='color:#b00020;white-space:pre-wrap'>{html.escape(message)}</div>"
                             if message else "")
        self.last_error = message or None
