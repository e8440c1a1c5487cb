"""The lab panel: widgets for the five knobs (plus lr and epochs), Run and Stop, a status line and live charts.

    lab = labkit.Lab(labkit.RunConfig(train_size=5000, epochs=3))
    lab            # display it in a notebook, press Run, then move the controls while it trains

With "live" on, moving a control changes the running run (through `LiveRun.set`: checked at once, applied at
the next step boundary, and shown as a new segment); with it off, or with no run training, the controls set up
the next run. Epochs always apply to the next run. Widget callbacks only call `LiveRun.set`, `start` and `stop`:
the model is touched by the training thread alone.
"""
from __future__ import annotations

import html
import math
import time
from typing import Any

import ipywidgets as widgets

from . import devices, optim
from .config import AUGMENT_PRESETS, OPTIMIZERS, PRUNE_METHODS, RunConfig
from .dashboard import Dashboard
from .live import LiveRun
from .store import Store

BATCH_SIZES = tuple(2 ** k for k in range(3, 13))  # 8 .. 4096
_STATUS_INTERVAL_S = 0.25  # the status line is redrawn at most 4 times a second


class Lab:
    """A widget panel that starts live runs and changes their knobs while they train (see the module doc)."""

    def __init__(self, config: RunConfig | dict | None = None, store: Store | str | None = None, live: bool = True):
        config = RunConfig.from_dict(config) if isinstance(config, dict) else (config or RunConfig())
        self.base = config.validate()
        self.store = store if isinstance(store, Store) else Store(store)
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
        self.widget = widgets.VBox([self._controls_box, self.status, self.errors, self.dashboard.widget])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- controls ------------------------------------------------------------------------------------------
    def _build_controls(self, c: RunConfig, live: bool) -> None:
        wide = widgets.Layout(width="320px")
        style = {"description_width": "90px"}
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
        self.amp = devices.resolve_amp(c.amp, self.device)
        self._paint_amp()
        marked = [f"{m}: {p.note}" for m, p in self.precisions.items() if not p.native]
        self.amp_note = widgets.HTML("<small>" + html.escape("; ".join(marked)) + "</small>")
        sizes = sorted(set(BATCH_SIZES) | {c.batch_size})
        if c.train_size:
            sizes = [b for b in sizes if b <= c.train_size or b == c.batch_size]
        self.batch_size = widgets.SelectionSlider(options=sizes, value=c.batch_size, description="batch size",
                                                  continuous_update=False, layout=wide, style=style)
        self.batch_size.add_class("labkit-batch-size")
        self.augment = widgets.Dropdown(options=AUGMENT_PRESETS, value=c.augment, description="augment",
                                        layout=wide, style=style)
        self.prune = widgets.FloatSlider(value=c.prune, min=0.0, max=0.95, step=0.05, description="prune",
                                         continuous_update=False, readout_format=".0%", layout=wide, style=style)
        self.prune_method = widgets.Dropdown(options=PRUNE_METHODS, value=c.prune_method,
                                             layout=widgets.Layout(width="140px"))
        self.optimizer = widgets.Dropdown(options=OPTIMIZERS, value=c.optimizer, description="optimizer",
                                          layout=wide, style=style)
        self.lr = widgets.BoundedFloatText(value=c.lr if c.lr is not None else optim.default_lr(c.optimizer),
                                           min=1e-8, max=10.0, step=1e-4, description="lr", layout=wide, style=style)
        self.epochs = widgets.BoundedIntText(value=c.epochs, min=1, max=10000, description="epochs (next run)",
                                             layout=wide, style={"description_width": "120px"})
        self.run_button = widgets.Button(description="Run", button_style="success", icon="play").add_class("labkit-run")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop").add_class("labkit-stop")
        self.live = widgets.ToggleButton(value=live, description="live", icon="bolt",
                                         tooltip="on: controls change the running run; off: they set up the next run")
        self.live.add_class("labkit-live")
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        for name in ("batch_size", "augment", "prune", "prune_method", "optimizer", "lr"):
            getattr(self, name).observe(lambda change, n=name: self._on_control(n, change["new"]), names="value")
        self._controls_box = widgets.VBox([
            widgets.HBox([widgets.Label("AMP", layout=widgets.Layout(width="90px")), *self.amp_buttons.values(),
                          self.amp_note]),
            widgets.HBox([self.batch_size, self.augment]),
            widgets.HBox([self.prune, self.prune_method]),
            widgets.HBox([self.optimizer, self.lr]),
            widgets.HBox([self.epochs, self.run_button, self.stop_button, self.live]),
        ])

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
        return {"amp": self.amp, "batch_size": self.batch_size.value, "augment": self.augment.value,
                "prune": round(self.prune.value, 4), "prune_method": self.prune_method.value,
                "optimizer": self.optimizer.value, "lr": None if self._lr_auto else self.lr.value}

    @property
    def config(self) -> RunConfig:
        """The configuration the next run will use: the panel's controls over the Lab's base configuration."""
        return self.base.replace(**self._knob_values(), epochs=self.epochs.value)

    def _on_control(self, name: str, value: Any) -> bool:
        """A user moved a control: change the running run (live) or just the next run. False if refused."""
        if self._syncing:
            return True
        if name == "lr":
            self._lr_auto = False
        if name == "prune":
            value = round(value, 4)  # the slider's float steps (0.30000000000000004) read as the value shown
        if name == "optimizer" and self._lr_auto:
            self._set_quietly(self.lr, optim.default_lr(value))
        if not (self.live.value and self.training):
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
                self._set_quietly(getattr(self, name), self._accepted[name])
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
        control = getattr(self, knob)
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
        try:
            run = LiveRun(self.config, store=self.store, listeners=self.listeners)
            run.start()
        except (ValueError, RuntimeError) as exc:
            self._show_error(str(exc))
            return None
        self.run = run
        self._accepted = self._knob_values()
        self._last = {}
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
        kind = event.kind
        if kind == "run_started":
            self._last = {"info": event.info, "total_steps": event.total_steps}
        elif kind == "logged":
            self._last["logged"] = event
            if event.throughput:
                self._last["throughput"] = event.throughput
        elif kind == "epoch_ended":
            self._last["accuracy"] = event.test_accuracy
        elif kind == "segment_started":
            self._last["segment"] = f"#{event.segment} {event.label}"
        elif kind == "run_ended":
            self._last["ended"] = event.result
            if event.result.error:
                self._show_error(f"run {event.result.status}: {event.result.error}")
        now = time.monotonic()
        if kind in ("run_ended", "epoch_ended", "segment_started") or now - self._last_status >= _STATUS_INTERVAL_S:
            self._last_status = now
            self.status.value = self._status_text()

    def _status_text(self) -> str:
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
        if "throughput" in last:
            parts.append(f"{last['throughput']:,.0f} img/s")
        if "accuracy" in last:
            parts.append(f"test acc {last['accuracy']:.1%}")
        parts.append(f"amp {run.knobs.amp}" + ("" if self.precisions[run.knobs.amp].native else " (emulated)"))
        if logged is not None and logged.loss_scale is not None:
            parts.append(f"scale {logged.loss_scale:g} ({logged.skipped_steps} skipped steps)")
        if "segment" in last:
            parts.append(f"segment {last['segment']}")
        if run.rejected:
            parts.append(f"dropped change: {run.rejected[-1]}")
        return "<code>" + html.escape(" · ".join(parts)) + "</code>"

    def _show_error(self, message: str) -> None:
        self.errors.value = (f"<div style='color:#b00020;white-space:pre-wrap'>{html.escape(message)}</div>"
                             if message else "")
        self.last_error = message or None
