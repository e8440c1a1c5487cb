"""Throughput bookkeeping: a run is a list of segments (one per knob setting), each timed in contiguous intervals
between logged points.

The trainer synchronises the device and reads the clocks; `Meter` only does the accounting, so it is tested
with made-up times. An interval counts towards throughput when it starts after its segment's first
`timing_warmup` steps; an interval closes at each logged point and the next one starts at that same instant,
so whatever happens between two steps (listeners included) is inside some interval. Evaluation lies outside:
the trainer closes the interval before it and starts a new one after it.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Iterable


class Meter:
    """Segments and the current interval. `segments` holds one dict per segment (the knobs, first and last step,
    start and end time, timed images and seconds, data and compute seconds, throughput)."""

    def __init__(self, timing_warmup: int, log_every: int):
        self.timing_warmup = timing_warmup
        self.log_every = log_every
        self.segments: list[dict[str, Any]] = []
        self.segment_steps = 0  # steps trained in the current segment
        self._start = 0.0  # when the current interval started (perf_counter seconds)
        self._start_step = 0  # segment_steps when it started
        self._images = 0  # images trained in it

    def start_segment(self, fields: dict[str, Any], step: int, time_s: float, now: float) -> int:
        """Open a segment (`fields`: its knobs and anything else to keep) and its first interval; returns its
        index."""
        self.segments.append({"segment": len(self.segments), **fields, "start_step": step, "end_step": step,
                              "start_s": time_s, "end_s": time_s, "timed_images": 0, "timed_s": 0.0,
                              "data_s": 0.0, "compute_s": 0.0, "throughput": None})
        self.segment_steps = 0
        self.restart(now)
        return len(self.segments) - 1

    def restart(self, now: float) -> None:
        """Start a new interval at `now`, dropping the open one (after a pause or an evaluation)."""
        self._start, self._start_step, self._images = now, self.segment_steps, 0

    def step(self, images: int) -> None:
        self.segment_steps += 1
        self._images += images

    def timed(self) -> bool:
        """Whether the open interval will count towards throughput (it started after the warm-up)."""
        return self._start_step >= self.timing_warmup

    def log_due(self) -> bool:
        """True at the step that ends the segment's warm-up, then every `log_every` steps."""
        warm, done = self.timing_warmup, self.segment_steps
        return done == warm or (done > warm and (done - warm) % self.log_every == 0)

    def close(self, now: float, step: int, time_s: float, data_s: float, compute_s: float) -> float | None:
        """Account the interval ending at `now` (with its data and compute seconds) to the current segment and
        start the next one at `now`. Returns the interval's throughput, or None when it was not timed."""
        seconds = now - self._start
        segment = self.segments[-1]
        segment.update(end_step=step, end_s=time_s)
        throughput = None
        if self.timed() and seconds > 0:
            segment["timed_images"] += self._images
            segment["timed_s"] += seconds
            segment["data_s"] += data_s
            segment["compute_s"] += compute_s
            segment["throughput"] = segment["timed_images"] / segment["timed_s"]
            throughput = self._images / seconds
        self.restart(now)
        return throughput

    def totals(self) -> dict[str, float | None]:
        """The whole run: timed images and seconds, data and compute seconds, throughput (None if nothing timed)."""
        total = {k: sum(s[k] for s in self.segments) for k in ("timed_images", "timed_s", "data_s", "compute_s")}
        total["throughput"] = total["timed_images"] / total["timed_s"] if total["timed_s"] > 0 else None
        return total


def mean_and_spread(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the finite values; NaN when none: a figure
    over seeds and its seed-to-seed noise."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def data_share(data_s: float, compute_s: float) -> float | None:
    """The share of the timed step time spent getting the batch (None when nothing was timed)."""
    total = data_s + compute_s
    return data_s / total if total > 0 else None


def input_verdict(share: float | None, streamed: bool, num_workers: int, cores: int, on_cpu: bool = False) -> str:
    """Whether the steps wait for data, and what to try: the sentence the panel, the CLI and RunResult show.
    `on_cpu`: the model trains on the CPU, so DataLoader workers share its cores with training, and the time
    training loses to them shows as compute, not as waiting."""
    if share is None:
        return ""
    if share < 0.1:
        verdict = f"compute-bound: getting the data takes {share:.0%} of each step"
        if streamed and on_cpu and num_workers > 0:
            return (verdict + f"; but on a CPU the {num_workers} worker(s) share the {cores} cores with training, "
                    "which slows compute: compare loader='device' (decoded once, before training)")
        return verdict + ", so faster loading (more workers, the device loader) cannot speed it up"
    if not streamed:
        advice = ("the data is already on the device, so this is indexing and augmentation: a lighter augment, "
                  "or a larger model per image, changes it")
    elif on_cpu:
        advice = ("try loader='device' (decoded once, before training); on a CPU, workers take cores from "
                  f"training itself ({cores} cores here), so they help only where cores sit idle")
    elif num_workers < cores - 1:  # one core stays with the training process
        advice = (f"try num_workers={min(cores - 1, 8)} (this machine has {cores} CPU cores, one stays with "
                  "training) or loader='device' (decoded once, before training)")
    else:
        advice = (f"with {cores} CPU cores, more workers would take cores from training itself; try "
                  "loader='device' (decoded once, before training) or smaller stored images")
    kind = "input-bound" if share >= 0.3 else "partly input-bound"
    return f"{kind}: {share:.0%} of each step waits for data; {advice}"
