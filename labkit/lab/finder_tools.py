"""The lab panel's finders: "find lr" and "find batch size" buttons, a chart drawn as the finder measures, and a
button per suggestion that moves the panel's control (so a live run takes it at its next step, as any change).

While a run trains, the finder runs inside it (`LiveRun.find_lr`: the training thread does it between two steps
and the run goes on where it was); otherwise it runs in a background thread on the panel's configuration, and
the panel refuses to start a run until it is done. Either way it is recorded in the panel's store.
"""
from __future__ import annotations

import html
import threading
import time
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from .. import finders
from ..train import settle

_REDRAW_S = 0.25


class FinderTools:
    def __init__(self, lab):
        self.lab = lab
        self.lr_button = widgets.Button(description="find lr", icon="search",
                                        tooltip="LR range test: ~100 steps with a growing lr, then suggestions")
        self.batch_button = widgets.Button(description="find batch size", icon="search",
                                           tooltip="throughput and memory by batch size; the fastest with a margin")
        self.lr_button.add_class("labkit-find-lr")
        self.batch_button.add_class("labkit-find-batch-size")
        self.lr_button.on_click(lambda _: self.find_lr())
        self.batch_button.on_click(lambda _: self.find_batch_size())
        self.message = widgets.HTML("")
        self.choices = widgets.HBox([])
        self.figure = go.FigureWidget(layout=dict(template="plotly_white", height=260,
                                                  margin=dict(l=60, r=20, t=30, b=40)))
        self.chart = widgets.Box([self.figure], layout=widgets.Layout(display="none"))  # shown at the first find
        self.buttons = widgets.HBox([self.lr_button, self.batch_button])
        self.widget = widgets.VBox([self.message, self.choices, self.chart])
        self.future: Future | None = None
        self._what = "lr"  # the finder measuring: "lr" or "batch"
        self._points: list[dict] = []
        self._last_draw = 0.0

    @property
    def busy(self) -> bool:
        return self.future is not None and not self.future.done()

    # ---- starting ------------------------------------------------------------------------------------------
    def find_lr(self, **options) -> Future | None:
        """What "find lr" does; `options` go to labkit.finders.lr_range_test (start_lr, end_lr, steps ...).
        Returns a Future of the finding, done once the panel shows it (None if refused)."""
        return self._start("lr", options)

    def find_batch_size(self, **options) -> Future | None:
        """What "find batch size" does; `options` go to labkit.finders.batch_size_search."""
        return self._start("batch", options)

    def _start(self, what: str, options: dict) -> Future | None:
        if self.busy:
            self.lab._show_error("a finder is already measuring: wait for it to finish.")
            return None
        self._points, self._what, self.choices.children = [], what, ()
        self._prepare_figure(what)
        options = {**options, "on_point": self._on_point}
        lab = self.lab
        try:
            if lab.training:
                self.message.value = "<i>measuring inside the run, between two steps...</i>"
                call = lab.run.find_lr if what == "lr" else lab.run.find_batch_size
                future = call(wait=False, **options)
            else:
                self.message.value = "<i>measuring on the panel's configuration...</i>"
                call = finders.find_lr if what == "lr" else finders.find_batch_size
                future = _in_thread(lambda: call(lab.config, store=lab.store, progress=False, **options))
        except (ValueError, RuntimeError) as exc:
            lab._show_error(str(exc))
            self.message.value = ""
            return None
        lab._show_error("")
        self.future = shown = Future()  # done once the panel shows the finding, not just when it is measured
        shown.set_running_or_notify_cancel()
        future.add_done_callback(lambda measured: self._done(measured, shown))
        return shown

    # ---- drawing (in the finder's thread) ------------------------------------------------------------------
    def _prepare_figure(self, what: str) -> None:
        with self.figure.batch_update():
            self.figure.data = ()
            if what == "lr":
                self.figure.add_scatter(x=[], y=[], mode="lines", name="smoothed loss")
                self.figure.layout.xaxis = dict(type="log", title="learning rate")
                self.figure.layout.yaxis = dict(title="training loss")
                self.figure.layout.title = "LR range test"
            else:
                self.figure.add_scatter(x=[], y=[], mode="lines+markers", name="img/s")
                self.figure.layout.xaxis = dict(type="log", title="batch size")
                self.figure.layout.yaxis = dict(title="images/s", rangemode="tozero")
                self.figure.layout.title = "Throughput by batch size"
        self.chart.layout.display = ""

    def _on_point(self, row: dict) -> None:
        self._points.append(row)
        now = time.monotonic()
        if now - self._last_draw >= _REDRAW_S:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        points = list(self._points)
        if not points:
            return
        trace = self.figure.data[0]
        with self.figure.batch_update():
            if self._what == "lr":
                trace.x, trace.y = [p["lr"] for p in points], [p["smoothed"] for p in points]
            else:
                fitted = [p for p in points if p["fits"]]
                trace.x, trace.y = [p["batch_size"] for p in fitted], [p["throughput"] for p in fitted]

    def _done(self, measured: Future, shown: Future) -> None:
        try:
            self._show(measured)
        finally:
            exc = measured.exception()
            shown.set_exception(exc) if exc is not None else shown.set_result(measured.result())

    def _show(self, future: Future) -> None:
        self._draw()
        exc = future.exception()
        if exc is not None:
            self.message.value = ""
            self.lab._show_error(f"the finder failed: {exc}")
            return
        finding = future.result()
        if isinstance(finding, finders.LRFinding):
            full = finding.figure()  # raw and smoothed loss, every suggestion marked
            with self.figure.batch_update():
                self.figure.data = ()
                for trace in full.data:
                    self.figure.add_trace(trace)
                self.figure.layout.yaxis.range = full.layout.yaxis.range
            self.message.value = "<code>" + html.escape(str(finding)).replace("\n", "<br>") + "</code>"
            self.choices.children = [self._choice(f"use {s.name} {s.lr:.2g}", "lr", float(f"{s.lr:.3g}"), s.rule)
                                     for s in finding.suggestions]
        else:
            self.message.value = "<code>" + html.escape(finding.reason) + "</code>"
            if finding.recommended is not None:
                self.choices.children = [self._choice(f"use batch size {finding.recommended}", "batch_size",
                                                      finding.recommended, finding.reason)]

    def _choice(self, label: str, knob: str, value: Any, why: str) -> widgets.Button:
        button = widgets.Button(description=label, tooltip=why, layout=widgets.Layout(width="auto"))
        button.add_class("labkit-use-" + knob.replace("_", "-"))
        button.on_click(lambda _: self.lab.set_control(knob, value))
        return button


def _in_thread(call) -> Future:
    """Run `call` in a daemon thread; its result or exception arrives in the Future."""
    future: Future = Future()
    threading.Thread(target=settle, args=(future, call), name="labkit-finder", daemon=True).start()
    return future
