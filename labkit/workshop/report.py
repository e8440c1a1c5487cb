"""`labkit report *.json -o class.html`: the class's exports merged into one self-contained HTML page.

    build(["alice.json", "bob.json"], "class.html")

The page shows (a) who ran on what: student, machine, device, native precisions, runs, lessons done; (b) every
run on one chart, throughput (log) against test accuracy, coloured by student, with each machine's Pareto
frontier; (c) per lesson, each claim judged on each student's machine (`lessons.teach.judge`), the measured value
in the cell; (d) the students' predictions beside what their machine measured. plotly.js is inlined once: the
page opens without a network. Every text from an export is escaped.
"""
from __future__ import annotations

import datetime as dt
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..paths import write_atomically
from .export import load

VERDICT_CLASS = {"holds": "holds", "does not hold here": "fails", "not applicable here": "na",
                 "not measured": "unmeasured"}
HOVER_KNOBS = ("train_size",)  # besides the knobs that declare themselves columns (config.COLUMNS)
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } .muted { color: #777; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
td.holds { background: #d4edda; } td.fails { background: #f8d7da; } td.na { background: #e2e3e5; }
td.unmeasured { background: #fff3cd; } td.absent { color: #aaa; }
.legend span { display: inline-block; padding: 0.1em 0.5em; margin-right: 0.4em; border: 1px solid #ddd; }
"""


@dataclass
class Entry:
    """One export, as the report shows it."""
    label: str  # unique: the student, with the machine (and a number) added where names repeat
    student: str
    machine: dict[str, Any]
    runs: list[dict[str, Any]]
    lessons: dict[str, dict[str, Any]] = field(default_factory=dict)  # lesson -> figures (its latest file)
    file: str = ""

    @property
    def machine_name(self) -> str:
        return str(self.machine.get("name") or "unknown machine")


def _entries(files: list[Path]) -> list[Entry]:
    entries = []
    for path in files:
        doc = load(path)
        lessons: dict[str, tuple[str, dict]] = {}
        for item in doc["lessons"]:
            if not isinstance(item, dict) or not isinstance(item.get("figures"), dict):
                raise ValueError(f"{path} is not a complete labkit export: a lesson entry has no figures")
            name = str(item.get("lesson") or "lesson")
            stamp = str(item.get("modified") or "")
            if name not in lessons or stamp >= lessons[name][0]:  # a lesson found twice: its latest figures
                lessons[name] = (stamp, item["figures"])
        entries.append(Entry("", str(doc["student"]), doc["machine"], [r for r in doc["runs"] if isinstance(r, dict)],
                             {k: v for k, (_, v) in sorted(lessons.items())}, str(path)))
    # labels: the student; with the machine where a student sent several files; numbered if still equal
    for e in entries:
        e.label = e.student
    for e in entries:
        if sum(x.student == e.student for x in entries) > 1:
            e.label = f"{e.student} ({e.machine_name})"
    seen: dict[str, int] = {}
    for e in entries:
        if sum(x.label == e.label for x in entries) > 1:
            seen[e.label] = seen.get(e.label, 0) + 1
            e.label = f"{e.label} #{seen[e.label]}"
    return entries


# ---- formatting --------------------------------------------------------------------------------------------------
def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A figure as short text (not escaped)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else "-"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table from already-escaped cells; a cell given as ('td class', html) gets that class."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):
                cells.append(f'<td class="{cell[0]}"{cell[2] if len(cell) > 2 else ""}>{cell[1]}</td>')
            else:
                cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


def _native(machine: dict[str, Any]) -> str:
    modes = machine.get("precisions") or {}
    native = [m for m, p in modes.items() if isinstance(p, dict) and p.get("native")]
    emulated = [m for m, p in modes.items() if isinstance(p, dict) and p.get("available") and not p.get("native")]
    return ", ".join(native) + (f" (emulated: {', '.join(emulated)})" if emulated else "") if modes else "-"


# ---- (a) who ran on what -----------------------------------------------------------------------------------------
def who_table(entries: list[Entry]) -> str:
    rows = []
    for e in entries:
        completed = sum(r.get("status") == "completed" for r in e.runs)
        hardware = e.machine.get("hardware") or ""
        rows.append([esc(e.label), f'<span title="{esc(hardware)}">{esc(e.machine_name)}</span>',
                     esc(e.machine.get("device_type") or "-"), esc(_native(e.machine)),
                     ("num", f"{completed} of {len(e.runs)}"), ("num", str(len(e.lessons))),
                     esc(", ".join(e.lessons) or "-")])
    return _table(["student", "machine", "device", "native precisions", "runs completed", "lessons",
                   "lessons done"], rows)


# ---- (b) every run on one chart ------------------------------------------------------------------------------------
def _hover(e: Entry, run: dict[str, Any]) -> str:
    from ..config import COLUMNS

    head = (f"<b>{esc(e.label)}</b> · {esc(e.machine_name)}<br>run {esc(run.get('id'))}: "
            f"{run['throughput']:,.0f} img/s, {run['accuracy']:.1%} ({esc(run.get('precision') or '-')})")
    knobs = [f"{k}={esc(fmt(run[k]))}" for k in (*COLUMNS, *HOVER_KNOBS) if run.get(k) is not None]
    return "<br>".join([head, ", ".join(knobs[:6]), ", ".join(knobs[6:])])


def runs_figure(entries: list[Entry]):
    """Throughput (log) against test accuracy: one colour per student, a dashed frontier per machine."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    from ..lab.plots import pareto_front

    palette = qualitative.Plotly + qualitative.D3 + qualitative.Set2
    fig = go.Figure()
    by_machine: dict[str, list[tuple[float, float]]] = {}
    colour_of_machine: dict[str, str] = {}
    for i, e in enumerate(entries):
        colour = palette[i % len(palette)]
        runs = [r for r in e.runs if (_number(r.get("throughput")) or 0) > 0 and _number(r.get("accuracy")) is not None]
        if not runs:
            continue
        fig.add_trace(go.Scatter(
            name=esc(e.label), x=[r["throughput"] for r in runs], y=[r["accuracy"] for r in runs], mode="markers",
            marker=dict(size=9, opacity=0.8, color=colour), hovertext=[_hover(e, r) for r in runs],
            hoverinfo="text", legendgroup=esc(e.label)))
        by_machine.setdefault(e.machine_name, []).extend((r["throughput"], r["accuracy"]) for r in runs)
        colour_of_machine.setdefault(e.machine_name, colour)
    for machine, points in by_machine.items():
        front = [points[i] for i in pareto_front([p[0] for p in points], [p[1] for p in points])]
        fig.add_trace(go.Scatter(
            name=f"frontier · {esc(machine)}", x=[p[0] for p in front], y=[p[1] for p in front],
            mode="lines", line=dict(dash="dash", width=1.5, color=colour_of_machine[machine]), hoverinfo="text",
            hovertext=f"Pareto frontier of {esc(machine)}", legendgroup="frontiers"))
    fig.update_layout(
        template="plotly_white", height=520, margin=dict(l=60, r=20, t=60, b=50),
        title="Every run: throughput vs test accuracy (dashed: the Pareto frontier of each machine)",
        xaxis=dict(title="throughput (images/s, log scale)", type="log"),
        yaxis=dict(title="test accuracy", tickformat=".0%"), legend=dict(title="student"))
    return fig


# ---- (c) claims across the class's machines ----------------------------------------------------------------------
def claims_section(entries: list[Entry]) -> str:
    from ..lessons.teach import judge

    lessons = sorted({name for e in entries for name in e.lessons})
    parts = []
    for lesson in lessons:
        ran = [e for e in entries if lesson in e.lessons]
        verdicts: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        about: dict[tuple[str, str, str], dict[str, Any]] = {}
        for e in ran:
            try:
                rows = judge(e.lessons[lesson])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{e.file}: lesson {lesson!r} has claims labkit cannot read ({exc})") from None
            for row in rows:
                key = (row["claim"], row["figure"], row["band"])
                verdicts.setdefault(key, {})[e.label] = row
                about.setdefault(key, row)
        not_run = [e.label for e in entries if lesson not in e.lessons]
        parts.append(f"<h3>{esc(lesson)}</h3>")
        if not verdicts:
            parts.append(f'<p class="muted">no claims recorded ({len(ran)} ran it)</p>')
        else:
            header = ["claim", "figure (band)"] + [f"{esc(e.label)}<br><span class=\"muted\">{esc(e.machine_name)}"
                                                   "</span>" for e in ran] + ["holds on"]
            rows = []
            for key, cells in verdicts.items():
                text, figure, band = key
                info = about[key]
                row: list[Any] = [esc(text) + (f'<br><span class="muted">applies where: {esc(info["applies where"])}'
                                               f"{'; ' + esc(info['source']) if info.get('source') else ''}</span>"),
                                  f"{esc(figure)} ({esc(band)})"]
                for e in ran:
                    cell = cells.get(e.label)
                    if cell is None:
                        row.append(("absent", "not recorded"))
                    else:
                        row.append((VERDICT_CLASS.get(cell["verdict"], "unmeasured"),
                                    f"{esc(cell['verdict'])}<br>{esc(fmt(cell['measured']))}",
                                    f' title="{esc(e.machine.get("hardware") or e.machine_name)}"'))
                holds = sum(c["verdict"] == "holds" for c in cells.values())
                judged = sum(c["verdict"] in ("holds", "does not hold here") for c in cells.values())
                row.append(("num", f"{holds} of {judged} machines" if judged else "-"))
                rows.append(row)
            parts.append(_table(header, rows, "claims"))
        if not_run:
            parts.append(f'<p class="muted">not run by: {esc(", ".join(not_run))}</p>')
    if not parts:
        return '<p class="muted">no lesson figures in these exports: students export after running lessons</p>'
    legend = ('<p class="legend"><span style="background:#d4edda">holds</span>'
              '<span style="background:#f8d7da">does not hold here</span>'
              '<span style="background:#e2e3e5">not applicable here</span>'
              '<span style="background:#fff3cd">not measured</span> (the measured value under each verdict)</p>')
    return legend + "".join(parts)


# ---- (d) predictions against measurements ----------------------------------------------------------------------
PREFIX = "prediction_"


def predictions(entries: list[Entry]) -> list[dict[str, Any]]:
    """One row per recorded prediction: lesson, name, student, machine, predicted, measured, ratio or right."""
    rows = []
    for e in entries:
        for lesson, figures in e.lessons.items():
            for key, answer in figures.items():
                if not key.startswith(PREFIX) or answer is None:
                    continue
                name = key[len(PREFIX):]
                measured = figures.get(name)
                a, m = _number(answer), _number(measured)
                if a is not None and m is not None:
                    said = f"{a / m:.2g}x the measurement" if m != 0 else "-"
                    ratio = a / m if m != 0 and a / m > 0 else None
                elif measured is not None and not isinstance(answer, (int, float)):
                    said, ratio = ("right" if str(answer) == str(measured) else "not on this machine"), None
                else:
                    said, ratio = "not measured", None
                rows.append({"lesson": lesson, "name": name, "label": e.label, "machine": e.machine_name,
                             "predicted": answer, "measured": measured, "said": said, "ratio": ratio})
    return rows


def predictions_figure(rows: list[dict[str, Any]]):
    """Each numeric prediction as predicted / measured on a log axis, one box of points per prediction."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for (lesson, name) in dict.fromkeys((r["lesson"], r["name"]) for r in rows if r["ratio"] is not None):
        mine = [r for r in rows if (r["lesson"], r["name"]) == (lesson, name) and r["ratio"] is not None]
        # a box from five answers up; below that only the points (a box of two says nothing)
        many = len(mine) >= 5
        fig.add_trace(go.Box(
            name=esc(f"{lesson}: {name}"), y=[r["ratio"] for r in mine], boxpoints="all", jitter=0.4, pointpos=0,
            line=dict(width=1.5 if many else 0), fillcolor=None if many else "rgba(0,0,0,0)",
            marker=dict(size=9, opacity=0.8), hoverinfo="text",
            hovertext=[f"{esc(r['label'])} ({esc(r['machine'])})<br>predicted {esc(fmt(r['predicted']))}, "
                       f"measured {esc(fmt(r['measured']))}" for r in mine]))
    fig.add_hline(y=1, line_dash="dot", annotation_text="exactly right", annotation_position="top left")
    fig.update_layout(template="plotly_white", height=420, margin=dict(l=60, r=20, t=60, b=80), showlegend=False,
                      title="Predictions against each student's own measurement (1 = exactly right)",
                      yaxis=dict(title="predicted / measured (log scale)", type="log"))
    return fig


# ---- the page ----------------------------------------------------------------------------------------------------
class _Charts:
    """Figures as HTML: plotly.js inlined with the first one only, so the page needs no network."""

    def __init__(self):
        self.count = 0

    def html(self, fig) -> str:
        self.count += 1
        return fig.to_html(full_html=False, include_plotlyjs=self.count == 1, div_id=f"chart-{self.count}",
                           config={"displaylogo": False, "responsive": True})


def render(entries: list[Entry]) -> str:
    charts = _Charts()
    students = sorted({e.student for e in entries})
    machines = sorted({e.machine_name for e in entries})
    n_runs = sum(len(e.runs) for e in entries)
    plotted = sum((_number(r.get("throughput")) or 0) > 0 and _number(r.get("accuracy")) is not None
                  for e in entries for r in e.runs)
    created = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    parts = [
        f"<h1>Class report</h1><p class=\"muted\">{len(entries)} exports · {len(students)} students · "
        f"{len(machines)} machines · {n_runs} runs · made {esc(created)} by <code>labkit report</code></p>",
        "<h2>Who ran on what</h2>", who_table(entries),
        "<h2>Every run</h2>",
        charts.html(runs_figure(entries)) if plotted else
        '<p class="muted">no run with both a throughput and a test accuracy in these exports</p>',
        "<h2>Claims, machine by machine</h2>",
        "<p>Each lesson's claims judged on what each student's machine measured: a claim that holds on one "
        "machine may not on another.</p>",
        claims_section(entries),
        "<h2>Predictions and measurements</h2>",
    ]
    rows = predictions(entries)
    if not rows:
        parts.append('<p class="muted">no predictions recorded (a lesson records one when a student answers '
                     "<code>predict</code> before the measurement is revealed)</p>")
    else:
        if any(r["ratio"] is not None for r in rows):
            parts.append(charts.html(predictions_figure(rows)))
        parts.append(_table(["lesson", "prediction", "student", "machine", "predicted", "measured", ""],
                            [[esc(r["lesson"]), esc(r["name"]), esc(r["label"]), esc(r["machine"]),
                              ("num", esc(fmt(r["predicted"]))), ("num", esc(fmt(r["measured"]))), esc(r["said"])]
                             for r in rows]))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>labkit class report</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>\n{body}\n</body></html>\n")


def build(files: Iterable[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Merge the exports `files` into one self-contained HTML page at `out`; returns its path. Raises ValueError
    for no files, and for a file that is not a labkit export (naming it)."""
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("report: no exports given; each student makes one with `labkit export -o NAME.json`")
    page = render(_entries(files))
    out = write_atomically(out, page)
    return out
