"""What a run returns: its status, summary figures and histories."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .config import RunConfig
from .measure import data_share

SUMMARY_FIELDS = ("status", "throughput", "accuracy", "train_accuracy", "time_s", "peak_memory_bytes",
                  "flops_per_image", "dense_flops_per_image", "params", "dense_params", "sparsity", "mfu",
                  "steps", "micro_steps", "compile_s", "launch_s", "loss_scale", "skipped_steps", "data_time_s",
                  "compute_time_s", "data_share", "input_verdict", "device", "precision", "precision_native", "checkpoint",
                  "checkpoint_bytes", "error")


@dataclass
class RunResult:
    """A finished run. `throughput` is images/s over the timed steps only (after each segment's warm-up,
    evaluation excluded); `accuracy` is the final test accuracy (0..1); `sparsity` is the fraction of the
    dense model's conv/linear weights that are zero or removed; FLOPs are forward FLOPs per image."""

    status: str  # "completed" | "stopped" | "failed" ("interrupted" in the store: its process died mid-run)
    config: RunConfig
    throughput: float | None = None
    accuracy: float | None = None
    train_accuracy: float | None = None
    time_s: float = 0.0
    peak_memory_bytes: int | None = None
    flops_per_image: int | None = None
    dense_flops_per_image: int | None = None
    params: int | None = None
    dense_params: int | None = None
    sparsity: float = 0.0
    mfu: float | None = None  # model FLOP utilisation (3x forward FLOPs x throughput / the GPU's peak)
    steps: int = 0  # optimizer steps
    micro_steps: int = 0  # forward-backward passes: steps x grad_accum
    compile_s: float | None = None  # a compiled run's first step: the compilation, never counted in throughput
    launch_s: float | None = None  # a distributed run: from starting torchrun to training (not in time_s)
    loss_scale: float | None = None
    skipped_steps: int = 0
    data_time_s: float = 0.0  # timed steps: getting each batch (waiting for a DataLoader, indexing, augmenting)
    compute_time_s: float = 0.0  # timed steps: forward, backward and the update
    input_verdict: str = ""  # what data_share means and what to try (labkit.measure.input_verdict)
    device: str = ""
    precision: str = "fp32"  # what the run computed in at its end: fp32, bf16 or fp16 (amp="auto" resolved)
    precision_native: bool = True  # False: the device emulates it (see precision_note), expect it to be slow
    precision_note: str = ""
    error: str | None = None
    run_id: int | None = None
    checkpoint: str | None = None  # save=True: the file the store wrote (labkit.load_model(run_id) reads it)
    checkpoint_bytes: int | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per logged point
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per epoch
    segments: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per knob setting
    # A distributed run: one row per rank (data and compute seconds over the timed steps, as data_time_s and
    # compute_time_s, and DDP's measured all-reduce seconds per step, which overlap backward); empty otherwise.
    ranks: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def data_share(self) -> float | None:
        """data_time_s over data and compute: how much of the timed steps waited for data (None if untimed)."""
        return data_share(self.data_time_s, self.compute_time_s)

    def to_dict(self) -> dict[str, Any]:
        """Summary figures and the configuration as plain values (no histories)."""
        out = {name: getattr(self, name) for name in SUMMARY_FIELDS}
        out["run_id"] = self.run_id
        out["config"] = self.config.to_dict()
        if not self.ranks.empty:  # a distributed run: each rank's times
            out["ranks"] = self.ranks.to_dict(orient="records")
        return out

    def to_record(self) -> dict[str, Any]:
        """Everything, as plain values (JSON): what a distributed run's rank 0 sends to the kernel."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, pd.DataFrame):
                value = value.to_dict(orient="records")
            out[f.name] = value.to_dict() if f.name == "config" else value
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RunResult":
        values = dict(record)
        values["config"] = RunConfig.from_dict(values["config"])
        for name in ("history", "epochs", "segments", "ranks"):
            values[name] = pd.DataFrame(values.get(name) or [])
        return cls(**values)

    def summary(self) -> str:
        """A short table for terminals and notebooks."""
        rows = [("status", self.status)]
        if self.error:
            rows.append(("error", self.error))
        rows += [
            ("device", self.device),
            ("precision", self.precision if self.precision == "fp32" else f"{self.precision} ({self.precision_note})"),
            ("throughput", _fmt(self.throughput, "{:,.0f} img/s")),
            ("test accuracy", _fmt(self.accuracy, "{:.2%}")),
            ("train accuracy", _fmt(self.train_accuracy, "{:.2%}")),
            ("time", f"{self.time_s:.1f} s ({self.steps} steps"
                     + (f", {self.micro_steps} micro-steps)" if self.micro_steps != self.steps else ")")),
            ("data / compute", f"{self.data_time_s:.2f} s / {self.compute_time_s:.2f} s (timed steps)"),
            *[(f"rank {r.rank}", _rank_text(r)) for r in self.ranks.itertuples()],
            *([("input", self.input_verdict)] if self.input_verdict else []),
            ("peak memory", _fmt(self.peak_memory_bytes and self.peak_memory_bytes / 2**20, "{:,.0f} MiB")),
            ("params", _pair(self.dense_params, self.params, "{:,}")),
            ("FLOPs/image", _pair(self.dense_flops_per_image, self.flops_per_image, "{:,.3g}")),
            ("sparsity", f"{self.sparsity:.1%}"),
        ]
        if self.compile_s is not None:
            rows.append(("compile", f"{self.compile_s:.1f} s (first step; not in throughput)"))
        if self.launch_s is not None:
            rows.append(("start-up", f"{self.launch_s:.1f} s (torchrun, the processes' imports; not in time)"))
        if self.mfu is not None:
            rows.append(("MFU", f"{self.mfu:.1%}"))
        if self.loss_scale is not None:
            rows.append(("fp16 loss scale", f"{self.loss_scale:g} ({self.skipped_steps} skipped steps)"))
        if self.run_id is not None:
            rows.append(("run id", str(self.run_id)))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def __repr__(self) -> str:
        acc = _fmt(self.accuracy, "{:.3f}")
        thr = _fmt(self.throughput, "{:.0f}")
        return f"RunResult(status={self.status!r}, throughput={thr}, accuracy={acc}, error={self.error!r})"


def _rank_text(rank) -> str:
    text = f"data {rank.data_s:.2f} s / compute {rank.compute_s:.2f} s (timed steps)"
    if rank.allreduce_s_per_step is not None and not math.isnan(rank.allreduce_s_per_step):
        text += f"; gradient all-reduce {rank.allreduce_s_per_step * 1e3:.1f} ms/step (overlaps backward)"
    return text


def _fmt(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def _pair(before, after, pattern: str) -> str:
    if before is None or after is None or before == after:
        return _fmt(after, pattern)
    return f"{_fmt(after, pattern)} (dense {_fmt(before, pattern)}, {after / before:.0%})"
