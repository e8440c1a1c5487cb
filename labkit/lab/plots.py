"""Static plotly figures of runs, for reports and headless notebooks; the live dashboard starts from the same ones.

Each run figure takes a source: a RunResult, a LiveRun (what it has so far), or a stored run's id (read from
`store`, default the usual store). The comparison figure takes the store (or a runs DataFrame).

What the figures show: "throughput" is images/s over each logged interval after the segment's warm-up steps
(evaluation excluded); a segment's throughput is its timed images over its timed seconds. Time is seconds
since the run started.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..config import COLUMNS, LIVE_KNOBS
from ..result import RunResult
from ..store import Store

HISTORY_COLUMNS = ["step", "epoch", "segment", "time_s", "loss", "throughput", "batch_size"]
EPOCH_COLUMNS = ["epoch", "step", "time_s", "test_accuracy", "train_accuracy"]
SEGMENT_COLUMNS = ["segment", "label", "start_step", "end_step", "start_s", "throughput"]
_LAYOUT = dict(template="plotly_white", height=300, margin=dict(l=60, r=20, t=40, b=40),
               legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))


@dataclass
class RunFrames:
    """What the run figures need, whatever the source: logged points, epoch ends, and one row per segment."""
    history: pd.DataFrame
    epochs: pd.DataFrame
    segments: pd.DataFrame


def segment_label(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """'amp: off -> bf16, batch_size: 128 -> 256', as on SegmentStarted events; 'start' for the first."""
    if old is None:
        return "start"
    changes = [f"{k}: {old[k]} -> {new[k]}" for k in LIVE_KNOBS if k in new and old.get(k) != new[k]]
    return ", ".join(changes) or "start"


def segment_throughput(history: pd.DataFrame) -> dict[int, float]:
    """Each segment's timed images / timed seconds, from the logged points alone (as the trainer counts it).

    A logged point covers the steps since the previous point at its batch size; its seconds are its images
    over its throughput. Points without a throughput (warm-up) are not timed."""
    if history.empty:
        return {}
    h = history.sort_values("step", kind="stable")
    accum = h["grad_accum"].fillna(1) if "grad_accum" in h else 1  # runs stored before grad_accum: 1
    images = h["step"].diff().fillna(h["step"]) * h["batch_size"] * accum
    timed = h["throughput"].notna() & (h["throughput"] > 0)
    seconds = images[timed] / h["throughput"][timed].astype(float)
    tally = pd.DataFrame({"segment": h["segment"][timed], "images": images[timed], "seconds": seconds})
    sums = tally.groupby("segment")[["images", "seconds"]].sum()
    return {int(s): float(r.images / r.seconds) for s, r in sums.iterrows() if r.seconds > 0}


def run_frames(source: Any = None, store: Store | None = None) -> RunFrames:
    """Normalise a RunResult, a LiveRun, a stored run id (or None: empty) into RunFrames."""
    if source is None:
        return RunFrames(pd.DataFrame(columns=HISTORY_COLUMNS), pd.DataFrame(columns=EPOCH_COLUMNS),
                         pd.DataFrame(columns=SEGMENT_COLUMNS))
    if isinstance(source, (int, np.integer)):
        return _stored_frames(int(source), store or Store())
    if not isinstance(source, RunResult) and not hasattr(source, "segments"):
        raise TypeError(f"cannot plot {type(source).__name__}: pass a RunResult, a LiveRun or a stored run id.")
    segments = source.segments.copy()
    if not segments.empty:
        rows = segments.to_dict("records")
        segments["label"] = [segment_label(rows[i - 1] if i else None, r) for i, r in enumerate(rows)]
    return RunFrames(_with(source.history, HISTORY_COLUMNS), _with(source.epochs, EPOCH_COLUMNS),
                     _with(segments, SEGMENT_COLUMNS))


def _stored_frames(run_id: int, store: Store) -> RunFrames:
    history = _with(store.metrics(run_id, "logged"), HISTORY_COLUMNS)
    events = store.events(run_id)
    seg_events = events[events["kind"] == "segment"] if not events.empty else events
    by_segment = segment_throughput(history)
    rows = []
    for _, e in seg_events.iterrows():
        steps = history["step"][history["segment"] == e["segment"]]
        rows.append({"segment": int(e["segment"]), "label": e["label"], "start_step": int(e["step"]),
                     "end_step": int(steps.max()) if len(steps) else int(e["step"]), "start_s": float(e["time_s"]),
                     "throughput": by_segment.get(int(e["segment"])), **e["knobs"]})
    return RunFrames(history, _with(store.metrics(run_id, "epoch"), EPOCH_COLUMNS),
                     _with(pd.DataFrame(rows), SEGMENT_COLUMNS))


def _with(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.copy() if frame is not None else pd.DataFrame()
    for c in columns:
        if c not in frame.columns:
            frame[c] = pd.Series(dtype=float)
    return frame


def floats(values) -> np.ndarray:
    """1-D float64 numpy array (None -> NaN): plotly sends these as binary, not as JSON lists."""
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)


# ---- run figures ---------------------------------------------------------------------------------------------
def loss_accuracy_figure(source: Any = None, store: Store | None = None) -> go.Figure:
    """Training loss (left axis) and test accuracy at each epoch end (right axis) over time."""
    f = run_frames(source, store)
    fig = go.Figure([
        go.Scatter(name="training loss", x=floats(f.history["time_s"]), y=floats(f.history["loss"]), mode="lines"),
        go.Scatter(name="test accuracy", x=floats(f.epochs["time_s"]), y=floats(f.epochs["test_accuracy"]),
                   mode="lines+markers", yaxis="y2"),
    ])
    fig.update_layout(**_LAYOUT, title="Loss and test accuracy", xaxis_title="time (s)",
                      yaxis=dict(title="loss"),
                      yaxis2=dict(title="test accuracy", overlaying="y", side="right", range=[0, 1],
                                  tickformat=".0%", showgrid=False))
    return fig


def throughput_figure(source: Any = None, store: Store | None = None) -> go.Figure:
    """Throughput of each logged interval over time, with a labelled marker where a knob changed."""
    f = run_frames(source, store)
    changes = f.segments[f.segments["segment"] > 0] if not f.segments.empty else f.segments
    fig = go.Figure([
        go.Scatter(name="throughput", x=floats(f.history["time_s"]), y=floats(f.history["throughput"]),
                   mode="lines+markers", marker=dict(size=4)),
        go.Scatter(name="knob change", x=floats(changes["start_s"]),
                   y=change_heights(f.history, changes["start_s"]), text=list(changes["label"]),
                   mode="markers+text", textposition="top center",
                   marker=dict(symbol="triangle-down", size=12, color="#d62728"),
                   hovertemplate="%{text}<br>at %{x:.1f} s<extra></extra>"),
    ])
    fig.update_layout(**_LAYOUT, title="Throughput (images/s, timed steps)", xaxis_title="time (s)",
                      yaxis=dict(title="images/s", rangemode="tozero"))
    return fig


def change_heights(history: pd.DataFrame, times) -> np.ndarray:
    """Where to draw a change marker: at the last throughput measured before the change (0 if none yet)."""
    t, y = floats(history["time_s"]), floats(history["throughput"])
    known = ~np.isnan(y)
    t, y = t[known], y[known]
    out = []
    for at in floats(times):
        before = y[t <= at]
        out.append(before[-1] if len(before) else (y[0] if len(y) else 0.0))
    return np.asarray(out, dtype=float)


def segments_figure(source: Any = None, store: Store | None = None) -> go.Figure:
    """One bar per segment: its throughput, labelled with the change that started it."""
    f = run_frames(source, store)
    s = f.segments
    fig = go.Figure([go.Bar(name="segment throughput", x=segment_names(s), y=floats(s["throughput"]),
                            customdata=np.column_stack([floats(s["start_step"]), floats(s["end_step"])])
                            if len(s) else None,
                            hovertemplate="%{x}<br>%{y:,.0f} images/s<br>steps %{customdata[0]:.0f}"
                                          "-%{customdata[1]:.0f}<extra></extra>")])
    fig.update_layout(**_LAYOUT, title="Throughput per segment (images/s)", yaxis=dict(title="images/s"),
                      showlegend=False)
    return fig


def segment_names(segments: pd.DataFrame) -> list[str]:
    return [f"#{int(s)} {label}" for s, label in zip(segments["segment"], segments["label"])]


# ---- stored runs ---------------------------------------------------------------------------------------------
def pareto_front(throughput, accuracy) -> np.ndarray:
    """Indices of the runs no other run beats on both throughput and accuracy, by rising throughput."""
    t, a = floats(throughput), floats(accuracy)
    order = np.lexsort((-a, -t))  # fastest first; among equals, most accurate first
    front, best = [], -np.inf
    for i in order:
        if a[i] > best:
            front.append(i)
            best = a[i]
    return np.asarray(front[::-1], dtype=int)


def comparison_figure(store: Store | pd.DataFrame | None = None, highlight: int | None = None) -> go.Figure:
    """Stored runs, throughput against final test accuracy, with the Pareto frontier; hover shows the config.

    Only runs that have both figures (completed ones, and stopped ones that reached an epoch end) appear."""
    runs = store if isinstance(store, pd.DataFrame) else (store or Store()).runs()
    if not runs.empty:
        runs = runs[runs["throughput"].notna() & runs["accuracy"].notna()]
    if runs.empty:
        runs = pd.DataFrame(columns=["id", "status", "throughput", "accuracy"])
    hover = [_config_text(r) for r in runs.to_dict("records")]
    front = pareto_front(runs["throughput"], runs["accuracy"]) if len(runs) else np.zeros(0, dtype=int)
    mine = runs[runs["id"] == highlight] if highlight is not None else runs.iloc[0:0]
    fig = go.Figure([
        go.Scatter(name="stored runs", x=floats(runs["throughput"]), y=floats(runs["accuracy"]), mode="markers",
                   hovertext=hover, hoverinfo="text", marker=dict(size=9, opacity=0.7)),
        go.Scatter(name="Pareto frontier", x=floats(runs["throughput"].iloc[front]),
                   y=floats(runs["accuracy"].iloc[front]), mode="lines", line=dict(dash="dash"),
                   hoverinfo="skip"),
        go.Scatter(name="this run", x=floats(mine["throughput"]), y=floats(mine["accuracy"]), mode="markers",
                   marker=dict(size=14, symbol="star", color="#d62728"), hoverinfo="skip"),
    ])
    fig.update_layout(**_LAYOUT, title="Stored runs: throughput vs test accuracy",
                      xaxis_title="throughput (images/s)", yaxis=dict(title="test accuracy", tickformat=".0%"))
    return fig




def _config_text(run: dict[str, Any]) -> str:
    head = f"run {run.get('id')} ({run.get('status')}): {run.get('throughput', 0):,.0f} img/s, " \
           f"{run.get('accuracy', 0):.1%}"
    # The knobs that declare themselves columns (labkit.config.COLUMNS); a run stored before a knob existed
    # has no value for it and shows none.
    return "<br>".join([head] + [f"{k}={run[k]}" for k in COLUMNS if k in run and not _missing(run[k])])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def run_figures(source: Any, store: Store | None = None) -> list[go.Figure]:
    """The three run figures (loss and accuracy, throughput with changes, throughput per segment)."""
    return [loss_accuracy_figure(source, store), throughput_figure(source, store), segments_figure(source, store)]


# ---- tuning and ablation -------------------------------------------------------------------------------------
_UNITS = {"accuracy": ("test accuracy", ".0%"), "throughput": ("throughput (images/s)", ",.0f"),
          "time_to_accuracy": ("time to target accuracy (s)", ".1f"), "peak_memory": ("peak memory (MiB)", ",.0f")}


def _trial_text(row: dict[str, Any], objectives) -> str:
    from ..tuning import trial_knobs

    head = f"trial {row['trial']} ({row['state']})" + (f", run {int(row['run_id'])}" if not _missing(row.get("run_id"))
                                                        else "")
    knobs = trial_knobs(row, tuple(objectives))
    return "<br>".join([head, *[f"{k}={v}" for k, v in knobs.items() if not _missing(v)],
                        *([f"error: {row['error']}"] if row.get("error") else [])])


def tune_pareto_figure(trials: pd.DataFrame, objectives, front: set | None = None) -> go.Figure:
    """Trials by their first two objectives (one objective: against the trial number), the Pareto front drawn
    through the best ones; hover shows each trial's configuration. `customdata` holds the trial numbers."""
    from ..tuning import OBJECTIVES

    objectives = tuple(objectives)
    x_name, y_name = (objectives[1], objectives[0]) if len(objectives) > 1 else ("trial", objectives[0])
    done = trials[trials["state"] == "complete"]
    done = done[np.isfinite(floats(done[y_name])) & np.isfinite(floats(done[x_name]))]  # never reached: inf
    best = done[done["trial"].isin(front or set())].sort_values(x_name)
    fig = go.Figure([
        go.Scatter(name="trials", x=floats(done[x_name]), y=floats(done[y_name]), mode="markers",
                   marker=dict(size=9, opacity=0.7), customdata=list(done["trial"]),
                   hovertext=[_trial_text(r, objectives) for r in done.to_dict("records")], hoverinfo="text"),
        go.Scatter(name="Pareto front" if len(objectives) > 1 else "best", x=floats(best[x_name]),
                   y=floats(best[y_name]), mode="lines+markers" if len(objectives) == 2 else "markers",  # 3+: a
                   # projection, no frontier; the staircase bounds what the front dominates, turning at the trials
                   line=dict(dash="dash", shape="vh" if OBJECTIVES.get(x_name, ("",))[0] == "maximize" else "hv"),
                   marker=dict(size=13, symbol="star", color="#d62728"), customdata=list(best["trial"]),
                   hoverinfo="skip"),
    ])
    x_title, x_format = _UNITS.get(x_name, ("trial", "d"))
    y_title, y_format = _UNITS[y_name]
    fig.update_layout(**_LAYOUT, title="Trials: " + (" vs ".join(objectives[:2]) if len(objectives) > 1
                                                    else f"{objectives[0]} by trial") + " (click a point)",
                      xaxis=dict(title=x_title, tickformat=x_format), yaxis=dict(title=y_title, tickformat=y_format))
    return fig


def best_so_far(values, direction: str) -> np.ndarray:
    """The running best of a sequence (NaN for failed trials is skipped)."""
    out, best = [], np.nan
    for v in floats(values):
        if np.isfinite(v) and (np.isnan(best) or (v > best if direction == "maximize" else v < best)):
            best = v
        out.append(best)
    return np.asarray(out)


def tune_history_figure(trials: pd.DataFrame, objectives) -> go.Figure:
    """Each objective's best so far against the trial number (one panel row per objective); dots are the trials."""
    from plotly.subplots import make_subplots

    from ..tuning import OBJECTIVES

    objectives = tuple(objectives)
    fig = make_subplots(rows=len(objectives), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for i, o in enumerate(objectives, start=1):
        values = trials[o].where(trials["state"] == "complete")
        fig.add_scatter(name=f"{o} (trial)", x=list(trials["trial"]), y=floats(values), mode="markers",
                        marker=dict(size=7, opacity=0.5), row=i, col=1, showlegend=False)
        fig.add_scatter(name=f"best {o}", x=list(trials["trial"]), y=best_so_far(values, OBJECTIVES[o][0]),
                        mode="lines", line=dict(shape="hv"), row=i, col=1)
        fig.update_yaxes(title_text=_UNITS[o][0], tickformat=_UNITS[o][1], row=i, col=1)
    fig.update_xaxes(title_text="trial", row=len(objectives), col=1)
    fig.update_layout(**{**_LAYOUT, "height": 220 + 120 * len(objectives)}, title="Best so far, trial by trial")
    return fig


def importance_figure(importances: dict[str, float], objective: str) -> go.Figure:
    """Each knob's share of the objective's variation (Optuna's fANOVA importances), largest on top."""
    names = list(importances)[::-1]
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h"))
    fig.update_layout(**_LAYOUT, title=f"What explains {objective}" + ("" if names else ": too few trials yet"),
                      xaxis=dict(title="importance (share)", tickformat=".0%"))
    return fig


def ablation_figure(table: pd.DataFrame) -> go.Figure:
    """What each technique contributes (the full combination minus the combination without it), throughput in %
    and accuracy in points, with the spread over seeds as error bars."""
    from plotly.subplots import make_subplots

    rows = table[table["left_out"].notna()] if len(table) else table
    fig = make_subplots(rows=1, cols=2, subplot_titles=("throughput contribution (%)", "accuracy contribution (pts)"))
    for col, (figure, scale) in enumerate((("throughput", 100), ("accuracy", 100)), start=1):
        fig.add_bar(x=list(rows["left_out"]), y=floats(rows[f"{figure}_contribution"]) * scale,
                    error_y=dict(type="data", array=floats(rows[f"{figure}_contribution_std"]) * scale),
                    name=figure, showlegend=False, row=1, col=col)
    fig.update_layout(**{**_LAYOUT, "height": 340}, title="What each technique contributes (mean over seeds, +-1 std)")
    return fig


# ---- quantization --------------------------------------------------------------------------------------------
_VARIANT_COLORS = {"fp32": "#1f77b4", "bf16": "#ff7f0e", "int8": "#2ca02c"}


def quantization_figure(table: pd.DataFrame, title: str = "fp32, bf16 and int8 on the same test set",
                        large_batch: int | None = None) -> go.Figure:
    """labkit.quantize's variants side by side, one panel per figure: test accuracy (higher is better), size on
    disk, and latency at batch 1 and at the large batch (ms per batch; lower is better). A variant measured eager
    while others were compiled is labelled so: its latency is not comparable."""
    from plotly.subplots import make_subplots

    large = f"batch {large_batch}" if large_batch else "the large batch"
    panels = (("accuracy", "test accuracy (%)", 100.0), ("size_bytes", "size on disk (KiB)", 1 / 1024),
              ("latency_ms_b1", "latency at batch 1 (ms)", 1.0), ("latency_ms_large", f"latency at {large} (ms)", 1.0))
    eager_among_compiled = table["compiled"].any() and not table["compiled"].all()
    names = [f"{v} (eager)" if eager_among_compiled and not compiled else v
             for v, compiled in zip(table["variant"], table["compiled"])]
    colors = [_VARIANT_COLORS.get(v, "#7f7f7f") for v in table["variant"]]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[label for _, label, _ in panels])
    for col, (column, label, scale) in enumerate(panels, start=1):
        values = floats(table[column]) * scale
        fig.add_bar(x=names, y=values, marker_color=colors, text=[f"{v:.3g}" for v in values], textposition="auto",
                    name=label, showlegend=False, row=1, col=col)
    fig.update_layout(**{**_LAYOUT, "height": 340}, title=title)
    return fig
