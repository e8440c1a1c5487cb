"""The tuning panel: watch a study's frontier form, trial by trial, and take any trial into a live run.

    tl = labkit.TuneLab({"lr": (0.01, 1.0), "batch_size": [64, 128, 256]}, objectives=("accuracy", "throughput"),
                        trials=12, epochs=1, train_size=5000)
    tl             # display it, press Start; click a point on the chart, then "open in Lab"

Start runs `labkit.tune` in a background thread (one trial at a time; each a stored run); Stop ends the trial in
progress (told as failed, "stopped") and the study. As each trial ends, the table, the chart of trials with its
Pareto front (one objective: the objective by trial) and the best-so-far curves are redrawn. Clicking a point
shows that trial's configuration; "open in Lab" opens a `Lab` on it below, to train it live.
"""
from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from ..config import RunConfig
from ..tuning import TuneResult, Tuner, trial_line
from . import plots


class TuneLab:
    """A panel over one study (see the module doc). `options` are `labkit.tune`'s (objectives, sampler, trials,
    seed, store, ...) and fixed settings; the study is created when Start is pressed."""

    def __init__(self, space: dict[str, Any], config: RunConfig | dict | None = None, **options: Any):
        options.pop("progress", None)
        self.space, self.config, self.options = space, RunConfig.of(config), options
        checked = Tuner(space, self.config, **options)  # a bad setting is refused now; the study starts on Start
        self.objectives, self.space_names = checked.objectives, list(checked.space)
        self.tuner: Tuner | None = None
        self.result: TuneResult | None = None
        self.rows: list[dict[str, Any]] = []
        self.selected: int | None = None
        self.lab = None
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._drawing = threading.Lock()
        self.start_button = widgets.Button(description="Start", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.open_button = widgets.Button(description="open in Lab", icon="external-link", disabled=True)
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.open_button.on_click(lambda _: self.open_lab())
        self.status = widgets.HTML(self._status_text())
        self.table = widgets.HTML("")
        self.chosen = widgets.HTML("<i>click a trial on the chart to see its configuration</i>")
        empty = TuneResult.empty_trials(self.space_names, self.objectives)
        self.pareto_fig = go.FigureWidget(plots.tune_pareto_figure(empty, self.objectives))
        self.history_fig = go.FigureWidget(plots.tune_history_figure(empty, self.objectives))
        for trace in self.pareto_fig.data:
            trace.on_click(self._on_click)
        self.lab_box = widgets.VBox([])
        self.widget = widgets.VBox([
            widgets.HBox([self.start_button, self.stop_button]), self.status,
            widgets.HBox([self.pareto_fig, self.history_fig]),
            widgets.HBox([self.chosen, self.open_button]), self.table, self.lab_box])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- the study ------------------------------------------------------------------------------------------
    def start(self) -> "TuneLab":
        """Create the study and run its trials in a background thread."""
        if self.running:
            return self
        try:
            tuner = Tuner(self.space, self.config, **{**self.options, "progress": False, "quiet": True})
            tuner.study  # opened here: a study that cannot be continued is refused before anything runs
        except ValueError as exc:  # a setting the user can fix: shown in the panel, the kernel goes on
            self._error(str(exc))
            return self
        self.tuner, self.rows, self.result, self.last_error, self.selected = tuner, [], None, None, None
        self.chosen.value = "<i>click a trial on the chart to see its configuration</i>"
        self.tuner.listeners.append(self._on_trial)
        self._redraw()
        self._thread = threading.Thread(target=self._run, name="labkit-tune", daemon=True)
        self.start_button.disabled, self.stop_button.disabled, self.open_button.disabled = True, False, True
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.tuner.run()
        except Exception as exc:  # noqa: BLE001 - shown in the panel; the trials so far stay in the study
            self._error(f"{type(exc).__name__}: {exc}")
            self.result = TuneResult.load(self.tuner.study_name, self.tuner.storage_url, status="failed",
                                          study=self.tuner.study)
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True
            self.open_button.disabled = self.selected is None
            self._redraw()

    def stop(self) -> None:
        """End the trial in progress (told as failed, "stopped") and the study."""
        if self.tuner is not None:
            self.tuner.stop()

    def wait(self, timeout: float | None = None) -> TuneResult | None:
        """Block until the study ends (or `timeout` seconds); returns its result, None if still running."""
        if self._thread is not None:
            self._thread.join(timeout)
        return None if self.running else self.result

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_trial(self, row: dict[str, Any]) -> None:  # in the tuning thread, once per finished trial
        self.rows.append(row)
        self._redraw()

    # ---- what it shows --------------------------------------------------------------------------------------
    def _redraw(self) -> None:
        with self._drawing:  # the tuning thread and the notebook's may both redraw
            self._draw()

    def _draw(self) -> None:  # once a study has started
        result = self._result()
        trials, front = result.trials, set(result.best["trial"])
        for live, fresh in ((self.pareto_fig, plots.tune_pareto_figure(trials, self.objectives, front)),
                            (self.history_fig, plots.tune_history_figure(trials, self.objectives))):
            with live.batch_update():
                for trace, new in zip(live.data, fresh.data):
                    trace.x, trace.y = new.x, new.y
                    trace.customdata, trace.hovertext = new.customdata, new.hovertext
        shown = trials.tail(20).iloc[::-1].astype(object).map(_cell)  # newest first
        self.table.value = shown.to_html(index=False, classes="labkit-trials") if len(shown) else ""
        self.status.value = self._status_text()

    def _status_text(self) -> str:
        if self.last_error:
            return f"<span style='color:#b00'>{html.escape(self.last_error)}</span>"
        if self.tuner is None:
            return "press Start to begin the study"
        done = len(self.rows)
        state = self.result.status if self.result else "running"
        if self.result and self.result.errors:
            state += ": " + html.escape("; ".join(self.result.errors))
        last = html.escape(trial_line(self.rows[-1], self.tuner.objectives)) if self.rows else ""
        return (f"study <b>{html.escape(self.tuner.study_name)}</b> ({self.tuner.sampler_name}): {state}, "
                f"{done} of {self.tuner.planned or self.tuner.trials} trials" + (f"<br>last: {last}" if last else ""))

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.value = self._status_text()

    # ---- choosing a trial -----------------------------------------------------------------------------------
    def _on_click(self, trace, points, selector=None) -> None:
        if points.point_inds:
            self.select(int(trace.customdata[points.point_inds[0]]))

    def select(self, trial: int) -> RunConfig:
        """Show a trial's configuration (what clicking its point does); returns it."""
        config = self._result().config(trial)
        self.selected = trial
        changed = ", ".join(f"{k}={v!r}" for k, v in config.changed().items())
        self.chosen.value = f"trial {trial}: <code>{html.escape(changed)}</code>" + (
            " (open it in a Lab once the study has ended: two runs at once would spoil both measurements)"
            if self.running else "")
        self.open_button.disabled = self.running
        return config

    def open_lab(self):
        """A `Lab` on the selected trial's configuration, shown below the panel (and returned)."""
        from .panel import Lab

        if self.selected is None:
            raise ValueError("no trial selected: click a point on the chart, or call select(trial) first")
        self.lab = Lab(self._result().config(self.selected), store=self.tuner.store)
        self.lab_box.children = [widgets.HTML(f"<b>trial {self.selected} in the lab</b>"), self.lab.widget]
        return self.lab

    def _result(self) -> TuneResult:
        if self.tuner is None:
            raise ValueError("the study has not started: press Start first")
        return TuneResult.load(self.tuner.study_name, self.tuner.storage_url, study=self.tuner.study)

    def __repr__(self) -> str:
        return f"TuneLab(trials so far={len(self.rows)}, running={self.running})"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
