"""Live charts of a run: a training-loop listener that feeds plotly FigureWidgets.

It is called in the training thread, so it must cost the loop almost nothing: each event only appends a few
floats to capped buffers; the figures are redrawn at most every `min_interval_s` (and at knob changes, epoch
ends and the run's end), inside `batch_update()` (one message per redraw), from 1-D float numpy arrays (sent as
binary). Each redraw resends whole traces (plotly has no append), so histories are capped at `max_points` by
dropping every other old point: a run of 100,000 steps redraws as fast as one of 1,000.

The figures are the static ones of `labkit.lab.plots`, made live.
"""
from __future__ import annotations

import math
import time

import ipywidgets as widgets
import plotly.graph_objects as go

from . import plots
from ..store import Store


class _Series:
    """(x, y) points, at most `cap`: past it, every other point is dropped, always keeping the newest."""

    def __init__(self, cap: int):
        self.cap = cap
        self.x: list[float] = []
        self.y: list[float] = []

    def add(self, x: float, y: float | None) -> None:
        self.x.append(x)
        self.y.append(math.nan if y is None else float(y))
        if len(self.x) > self.cap:
            keep = slice((len(self.x) - 1) % 2, None, 2)  # the indices of the newest point's parity
            self.x, self.y = self.x[keep], self.y[keep]

    def arrays(self):
        return plots.floats(self.x), plots.floats(self.y)


class Dashboard:
    """Live loss/accuracy, throughput (with labelled knob changes), per-segment and stored-runs charts.

    Use it as a listener of a run (`LiveRun(config, listeners=[dashboard])`) and display `dashboard.widget`."""

    def __init__(self, store: Store | None = None, max_points: int = 2000, min_interval_s: float = 0.25):
        self.store = store
        self.max_points = max_points
        self.min_interval_s = min_interval_s
        self.loss_fig = go.FigureWidget(plots.loss_accuracy_figure())
        self.throughput_fig = go.FigureWidget(plots.throughput_figure())
        self.segments_fig = go.FigureWidget(plots.segments_figure())
        self.compare_fig = go.FigureWidget(plots.comparison_figure(self._store()))
        for name in ("loss", "throughput", "segments", "compare"):  # hooks for the browser test and styling
            getattr(self, f"{name}_fig").add_class(f"labkit-{name}")
        self.widget = widgets.VBox([self.throughput_fig, self.segments_fig, self.loss_fig, self.compare_fig])
        self.redraws = 0
        self.reset()

    def _store(self) -> Store:
        if self.store is None:
            self.store = Store()
        return self.store

    def reset(self) -> None:
        """Forget the last run (called before a new one starts); the charts empty at the next redraw."""
        self.loss = _Series(self.max_points)
        self.throughput = _Series(self.max_points)
        self.accuracy = _Series(self.max_points)
        self.changes: list[tuple[float, str, float]] = []  # (time, label, height)
        self.segments: list[dict] = []  # label, timed images and seconds, first and last step
        self._last_step = 0
        self._last_throughput = 0.0
        self._last_redraw = -math.inf
        self._dirty = {"loss", "throughput", "changes", "segments"}  # the next redraw clears the last run

    # ---- the listener (training thread) --------------------------------------------------------------------
    def __call__(self, event) -> None:
        kind = event.kind
        if kind == "logged":
            self._logged(event)
            self._redraw(force=False)
        elif kind == "segment_started":
            self.segments.append({"label": event.label, "images": 0.0, "seconds": 0.0, "start_step": event.step,
                                  "end_step": event.step})
            if event.changes:
                self.changes.append((event.time_s, event.label, self._last_throughput))
                self._dirty.add("changes")
            self._dirty.add("segments")
            self._redraw(force=False)
        elif kind == "epoch_ended":
            self.accuracy.add(event.time_s, event.test_accuracy)
            self._dirty.add("loss")
            self._redraw(force=True)
        elif kind == "run_started":
            self.reset()
            self._redraw(force=True)
        elif kind == "run_ended":
            self._redraw(force=True)
            self.refresh_comparison(highlight=getattr(event.result, "run_id", None))

    def _logged(self, e) -> None:
        # The same tally as the trainer: the interval's images over its seconds (see plots.segment_throughput).
        images = (e.step - self._last_step) * e.batch_size
        self._last_step = e.step
        if self.segments:
            self.segments[-1]["end_step"] = e.step
        if e.throughput and self.segments:
            seg = self.segments[-1]
            seg["images"] += images
            seg["seconds"] += images / e.throughput
            self._last_throughput = e.throughput
            self._dirty.add("segments")
        self.loss.add(e.time_s, e.loss)
        self.throughput.add(e.time_s, e.throughput)
        self._dirty.update(("loss", "throughput"))

    # ---- drawing -------------------------------------------------------------------------------------------
    def _redraw(self, force: bool) -> None:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_redraw < self.min_interval_s):
            return
        self._last_redraw = now
        dirty, self._dirty = self._dirty, set()
        self.redraws += 1
        if "loss" in dirty:
            with self.loss_fig.batch_update():
                self.loss_fig.data[0].x, self.loss_fig.data[0].y = self.loss.arrays()
                self.loss_fig.data[1].x, self.loss_fig.data[1].y = self.accuracy.arrays()
        if dirty & {"throughput", "changes"}:
            with self.throughput_fig.batch_update():
                self.throughput_fig.data[0].x, self.throughput_fig.data[0].y = self.throughput.arrays()
                if "changes" in dirty:
                    marks = self.throughput_fig.data[1]
                    marks.x = plots.floats([t for t, _, _ in self.changes])
                    marks.y = plots.floats([h for _, _, h in self.changes])
                    marks.text = [label for _, label, _ in self.changes]
        if "segments" in dirty:
            with self.segments_fig.batch_update():
                bars = self.segments_fig.data[0]
                bars.x = [f"#{i} {s['label']}" for i, s in enumerate(self.segments)]
                bars.y = plots.floats(self.segment_throughput())
                bars.customdata = [[s["start_step"], s["end_step"]] for s in self.segments]

    def refresh_comparison(self, highlight: int | None = None) -> None:
        """Redraw the stored-runs chart from the store (at each run's end, with that run starred)."""
        fresh = plots.comparison_figure(self._store(), highlight=highlight)
        with self.compare_fig.batch_update():
            for live, new in zip(self.compare_fig.data, fresh.data):
                live.update(x=new.x, y=new.y, hovertext=new.hovertext)

    def segment_throughput(self) -> list[float | None]:
        """Each segment's throughput as the charts show it (for checks and the status line)."""
        return [s["images"] / s["seconds"] if s["seconds"] else None for s in self.segments]
