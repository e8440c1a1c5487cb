"""What makes a lesson teach: a prediction that is closed by the measurement, and claims checked on this hardware.

    lessons.predict("bf16_speedup", "bf16 / fp32 throughput here?", number=True)   # asked before measuring
    ...                                                                             # the measurement
    lessons.reveal("bf16_speedup", 0.09, "bf16 is emulated on this CPU: every op converts to fp32 and back")

    lessons.claims(Claim("bf16 trains >= 1.3x faster than fp32", "bf16_speedup", at_least=1.3,
                         when="bf16_native", where="bf16 is native here"))
    lessons.claims_table()          # holds / does not hold here / not applicable here / not measured

In Jupyter `predict` shows the question with buttons (choices) or a box (a number); an `answer=` given in code
counts too. Headless (papermill, CI) nobody answers: the reveal still prints the measurement and its meaning.
Claims are data: a recorded figure, a band, and a recorded true/false figure saying whether the claim applies on
this machine. They are recorded with the lesson's figures (key "claims"), so `labkit notebooks` and the class
report judge them from the metrics file alone; a claim never fails a run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from . import recorded, record

CLAIMS_KEY = "claims"


# ---- predictions -----------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """A question asked before a measurement. The answer is read when revealed: from the widget in Jupyter,
    else the `answer` given in code (None: not answered)."""
    name: str
    question: str
    choices: tuple[str, ...] | None = None
    answer: Any = None
    widget: Any = None  # the input (buttons or a text box), in a Jupyter kernel
    box: Any = None  # the question with its input, as shown

    def value(self) -> Any:
        if self.widget is not None and self.answer is None:
            raw = self.widget.value
            if self.choices is None:  # a number typed into a text box
                raw = raw.strip()
                if not raw:
                    return None
                try:
                    return float(raw.rstrip("x%"))
                except ValueError:
                    return raw  # kept as typed: reveal says it is not a number
            return raw
        return self.answer

    def _repr_mimebundle_(self, **kwargs):
        if self.box is None:
            return {"text/plain": f"Predict: {self.question}"}
        return self.box._repr_mimebundle_(**kwargs)


_predictions: dict[str, Prediction] = {}


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def predict(name: str, question: str, choices: Sequence[str] | None = None, *, number: bool = False,
            answer: Any = None) -> Prediction:
    """Ask `question` before measuring `name`: pick one of `choices`, or type a number (`number=True`).

    In a Jupyter kernel the question shows as buttons or a text box (put the call last in its cell); `answer`
    answers it in code instead. `reveal(name, measured)` later puts the answer beside the measurement."""
    if (choices is None) == (not number):
        raise ValueError(f"predict({name!r}): give choices=[...] or number=True (one of them)")
    if choices is not None:
        choices = tuple(str(c) for c in choices)
        if len(choices) < 2:
            raise ValueError(f"predict({name!r}): give at least two choices, not {list(choices)}")
        if answer is not None and str(answer) not in choices:
            raise ValueError(f"predict({name!r}): answer={answer!r} is not one of the choices {list(choices)}")
    prediction = Prediction(name, question, choices, answer)
    if answer is None and _in_kernel():
        import ipywidgets as widgets

        label = widgets.HTML(f"<b>Predict:</b> {question}")
        box = (widgets.ToggleButtons(options=choices, value=None, style={"button_width": "auto"})
               if choices is not None else widgets.Text(placeholder="your guess, e.g. 1.5", layout={"width": "16em"}))
        prediction.widget, prediction.box = box, widgets.VBox([label, box])
    _predictions[name] = prediction
    return prediction


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class _Printed(str):
    """Text already printed: as the last line of a cell it is not shown a second time."""

    def _ipython_display_(self) -> None:
        pass


def reveal(name: str, measured: Any, explain: str = "", *, unit: str = "", close: float = 0.25) -> str:
    """Print the prediction for `name` beside the `measured` value and a one-line `explain`; returns the text.

    A number is "close" within `close` (relative); a choice is right when it equals `measured`. The answer is
    recorded as `prediction_<name>` with the lesson's figures (for the class report)."""
    prediction = _predictions.get(name)
    answer = prediction.value() if prediction is not None else None
    shown = f"{_fmt(measured)}{unit}"
    if measured is None:
        verdict = f"you said {_fmt(answer)}{unit} · not measured here" if answer is not None else "not measured here"
    elif answer is None:
        verdict = f"no prediction recorded · measured here: {shown}"
    elif prediction.choices is not None:
        verdict = (f"you said {answer} · measured here: {shown} · "
                   + ("right" if str(answer) == str(measured) else "not on this machine"))
    elif not isinstance(answer, (int, float)):
        verdict = f"your answer {answer!r} is not a number · measured here: {shown}"
    else:
        verdict = f"you said {_fmt(answer)}{unit} · measured here: {shown} · {_closeness(answer, measured, close)}"
    if answer is not None:
        record(f"prediction_{name}", answer)
    question = prediction.question if prediction is not None else name
    text = f"{question}\n  {verdict}" + (f"\n  why: {explain}" if explain else "")
    print(text)
    return _Printed(text)


def _closeness(answer: float, measured: Any, close: float) -> str:
    if not isinstance(measured, (int, float)) or not math.isfinite(measured):
        return "no measurement to compare"
    if measured == 0 or answer == 0:
        return "close" if answer == measured else "off"
    ratio = answer / measured
    if abs(ratio - 1) <= close:
        return "close"
    if ratio <= 0:
        return "opposite sign"
    return f"{ratio:.2g}x too high" if ratio > 1 else f"{1 / ratio:.2g}x too low"


# ---- claims ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """A statement a lesson makes, as data: `figure` (a recorded number) lies in [at_least, at_most] wherever
    the recorded true/false figure `when` is true (always, when None); `where` says that condition in words."""
    text: str
    figure: str
    at_least: float | None = None
    at_most: float | None = None
    when: str | None = None
    where: str = ""
    source: str = ""

    def __post_init__(self):
        if self.at_least is None and self.at_most is None:
            raise ValueError(f"claim {self.text!r}: give at_least, at_most or both")

    def judge(self, figures: dict[str, Any]) -> tuple[str, Any]:
        """(verdict, measured value): "holds", "does not hold here", "not applicable here" or "not measured"."""
        if self.when is not None:
            applies = figures.get(self.when)
            if applies is None:
                return "not measured", None
            if not applies:
                return "not applicable here", figures.get(self.figure)
        value = figures.get(self.figure)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "not measured", value
        low = -math.inf if self.at_least is None else self.at_least
        high = math.inf if self.at_most is None else self.at_most
        return ("holds" if low <= value <= high else "does not hold here"), value

    def band(self) -> str:
        if self.at_most is None:
            return f">= {self.at_least:g}"
        if self.at_least is None:
            return f"<= {self.at_most:g}"
        return f"{self.at_least:g} to {self.at_most:g}"


def claims(*declared: Claim) -> list[Claim]:
    """Declare the lesson's claims: recorded with its figures, judged by `claims_table` and `labkit notebooks`."""
    for c in declared:
        if not isinstance(c, Claim):
            raise TypeError(f"claims: expected Claim objects, not {type(c).__name__}")
    record(CLAIMS_KEY, [asdict(c) for c in declared])
    return list(declared)


def claims_in(figures: dict[str, Any]) -> list[Claim]:
    """The claims recorded in a lesson's figures (a metrics file's contents)."""
    return [Claim(**c) for c in figures.get(CLAIMS_KEY) or []]


def judge(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each recorded claim with its verdict on the figures beside it: rows of claim, band, verdict, measured."""
    rows = []
    for c in claims_in(figures):
        verdict, value = c.judge(figures)
        rows.append({"claim": c.text, "figure": c.figure, "band": c.band(), "verdict": verdict,
                     "measured": value, "applies where": c.where or "anywhere", "source": c.source})
    return rows


def claims_table(figures: dict[str, Any] | None = None):
    """The lesson's claims judged on what it measured (default: the figures recorded in this kernel)."""
    import pandas as pd

    return pd.DataFrame(judge(recorded() if figures is None else figures),
                        columns=["claim", "band", "verdict", "measured", "applies where", "source", "figure"])


def claims_text(rows: Iterable[dict[str, Any]]) -> str:
    """Rows of `judge` as aligned lines for a terminal."""
    lines = []
    for r in rows:
        value = r["measured"]
        shown = f"{value:.3g}" if isinstance(value, float) else "-" if value is None else str(value)
        lines.append(f"  {r['verdict']:<20} {r['figure']} = {shown} (claim {r['band']}): {r['claim']}")
    return "\n".join(lines)
