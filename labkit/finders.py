"""Measure before choosing: the LR range test (`find_lr`) and batch sizes by measured throughput
(`find_batch_size`).

Both take real steps through the trainer (`Trainer.learn`) on the run's model and data, then put everything
back: weights and buffers, optimizer and scaler state, the random generators. So they run before a run
(`find_lr(config)`) or inside a live one (`LiveRun.find_lr()`: the training thread runs it at a step boundary,
and the run goes on exactly where it was). Each is recorded in the store as a run of its own kind ("find_lr",
"find_batch_size", see `labkit.runs(kind=...)`), its curve kept as metrics.

What their users' issue trackers taught (Lightning #1767, #2814, #21141, #21154): a suggestion taken from a noisy
early loss misleads, a suggestion nobody can check without the curve is a guess, and "the largest batch that fits"
is neither the fastest nor safe once memory grows later. So the loss is smoothed and the first steps are not
trusted, every suggestion comes with its rule and the figure marks them all, and the batch finder recommends by
measured throughput with a memory margin, and says what the largest size would have given.
"""
from __future__ import annotations

import copy
import gc
import math
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pandas as pd
import torch

from . import devices
from .config import RunConfig
from .store import Store
from .techniques import grad_accum, optimizers
from .train import Trainer, is_out_of_memory


# ---- shared ---------------------------------------------------------------------------------------------------
@contextmanager
def restored(trainer: Trainer):
    """Everything a finder's steps change, put back afterwards, bit for bit: the model's weights and buffers
    (BatchNorm statistics), the optimizer's and the scaler's state, the run's generator and torch's RNG."""
    model = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    scaler = copy.deepcopy(trainer.scaler.state_dict())
    gen, rng = trainer.gen.get_state(), torch.get_rng_state()
    optimizer_steps = trainer.optimizer_steps  # its step hook counts the finder's steps too
    cuda_rng = torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None
    try:
        yield
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            trainer.model.load_state_dict(model)
        trainer.optimizer.load_state_dict(optimizer)
        trainer.scaler.load_state_dict(scaler)
        trainer.gen.set_state(gen)
        trainer.optimizer_steps = optimizer_steps
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, trainer.device)
        devices.release_cached(trainer.device)  # a failed (out-of-memory) step's tensors too


def _steps_of(trainer: Trainer, batch_size: int) -> Iterator[list]:
    """Optimizer steps' micro-batches at `batch_size`, epoch after epoch, for as long as the caller wants."""
    while True:
        batches = trainer.train_batches.train_batches(lambda: batch_size, trainer.gen)
        while (group := grad_accum.micro_batches(batches, trainer.knobs.grad_accum)) is not None:
            yield group


def _take_step(trainer: Trainer, micro_batches: list) -> torch.Tensor:
    return trainer.learn([trainer.prepare_batch(images, labels) for images, labels in micro_batches])


def record(trainer: Trainer, store, finding, info: dict | None = None):
    """Record a finding in `store` (False: nowhere) as a run of its kind ("find_lr", "find_batch_size"), its
    rows as metrics of that kind; sets its run_id and returns it."""
    if store is not False:
        store = Store.of(store)
        run_id = store.start_run(trainer.knobs.to_dict(), {**trainer.info, **(info or {})}, kind=finding.kind)
        store.add_metrics(run_id, finding.kind, [{"step": i, **row} for i, row in enumerate(finding.rows())])
        store.end_run(run_id, "completed", {**finding.summary(), "device": str(trainer.device)}, None)
        finding.run_id = run_id
    return finding


def _bar(progress: bool, total: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress)


def _standalone(config: RunConfig | dict | None, overrides: dict) -> Trainer:
    trainer = Trainer(RunConfig.of(config).replace(**overrides))
    trainer.setup()
    return trainer


# ---- the LR range test ----------------------------------------------------------------------------------------
@dataclass
class Suggestion:
    name: str
    lr: float
    rule: str


@dataclass
class LRFinding:
    """An LR range test: the curve (step, lr, loss, smoothed), the suggestions with their rules, why it stopped.
    `lr` is the suggestion to start from (valley); `figure()` draws the curve with every suggestion marked."""
    curve: pd.DataFrame
    suggestions: list[Suggestion]
    stopped: str
    run_id: int | None = None

    kind = "find_lr"

    @property
    def lr(self) -> float | None:
        return self.suggestion("valley")

    def rows(self) -> list[dict]:
        return self.curve.to_dict("records")

    def summary(self) -> dict:
        return {"suggestions": {s.name: s.lr for s in self.suggestions}, "stopped": self.stopped, "lr": self.lr,
                "steps": len(self.curve)}

    def suggestion(self, name: str) -> float | None:
        return next((s.lr for s in self.suggestions if s.name == name), None)

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        c = self.curve
        fig.add_scatter(x=c["lr"], y=c["loss"], mode="lines", name="loss", line=dict(color="#bbb", width=1))
        fig.add_scatter(x=c["lr"], y=c["smoothed"], mode="lines", name="smoothed loss", line=dict(color="#1f77b4"))
        for s, color in zip(self.suggestions, ("#d62728", "#2ca02c", "#9467bd")):
            at = c.iloc[(c["lr"] - s.lr).abs().argmin()]["smoothed"]
            fig.add_scatter(x=[s.lr], y=[at], mode="markers", name=f"{s.name}: {s.lr:.2g}",
                            marker=dict(size=11, color=color, symbol="diamond"), hovertext=[s.rule])
        top = c["smoothed"].iloc[: max(3, len(c) // 10)].max()
        fig.update_layout(template="plotly_white", height=340, title="LR range test: loss against learning rate",
                          xaxis=dict(type="log", title="learning rate"),
                          yaxis=dict(title="training loss", range=[c["smoothed"].min() * 0.9, top * 1.3]),
                          legend=dict(orientation="h", y=-0.25), margin=dict(l=60, r=20, t=50, b=40))
        return fig

    def __str__(self) -> str:
        lines = [f"LR range test: {len(self.curve)} steps from {self.curve['lr'].iloc[0]:.2g} to "
                 f"{self.curve['lr'].iloc[-1]:.2g}; {self.stopped}"]
        lines += [f"  {s.name:<9} lr={s.lr:<9.3g} {s.rule}" for s in self.suggestions]
        if not self.suggestions:
            lines.append("  no suggestion: the loss never fell (start lower, or check the data and model)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def suggest(lrs: list[float], smoothed: list[float], skip_start: int = 10, skip_end: int = 5) -> list[Suggestion]:
    """The three usual readings of the curve. The first `skip_start` and last `skip_end` points are left out of
    the slope: early losses are noisy and the last ones are diverging."""
    n = len(lrs)
    found = []
    best = min(range(n), key=smoothed.__getitem__)
    # The slope is read on the way down to the lowest loss: past it, a second dip (BatchNorm lets SGD survive
    # huge lrs for a while) is no advice.
    lo, hi = min(skip_start, n // 3), min(max(n - skip_end, n * 2 // 3), best + 1)
    if hi - lo >= 3:
        logs = [math.log10(lr) for lr in lrs]
        slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(max(lo, 1),
                                                                                             min(hi, n - 1))]
        i = max(lo, 1) + min(range(len(slopes)), key=slopes.__getitem__)
        if slopes[i - max(lo, 1)] < 0:
            found.append(Suggestion("steepest", lrs[i], "where the smoothed loss falls fastest against log(lr), "
                                    "before its lowest point"))
    # valley (after fastai's rule): the longest run of ever lower losses, read as a path (it may step over a
    # bump); its middle point, which lies on the way down by construction.
    longest, before = [1] * n, [-1] * n  # the longest such path ending at each point, and its previous point
    for i in range(n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[j] + 1 > longest[i]:
                longest[i], before[i] = longest[j] + 1, j
    end = max(range(n), key=lambda i: (longest[i], -i))
    if longest[end] >= 3:
        path = [end]
        while before[path[-1]] >= 0:
            path.append(before[path[-1]])
        found.append(Suggestion("valley", lrs[path[len(path) // 2]],
                                "the middle of the longest run of ever lower smoothed losses"))
    if best > 0:
        found.append(Suggestion("min/10", lrs[best] / 10, "a tenth of the lr at the lowest smoothed loss"))
    return found


def lr_range_test(trainer: Trainer, start_lr: float = 1e-5, end_lr: float = 10.0, steps: int = 100,
                  smoothing: float = 0.9, diverge: float = 4.0,
                  on_point: Callable[[dict], None] | None = None, progress: bool = False) -> LRFinding:
    """The LR range test on a set-up trainer: `steps` optimizer steps with the lr growing exponentially from
    `start_lr` to `end_lr`, stopped when the smoothed loss passes `diverge` x its best, climbs back above its
    start after a real fall, or is not finite.
    The trainer's model, optimizer and generators are restored afterwards. `on_point(row)` hears each step.
    The loss is an exponential average (`smoothing` 0.9: about the last 10 steps; fastai's and Lightning's 0.98
    averages over 50, half of the test, and drags the curve towards larger lrs)."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr={start_lr!r}, end_lr={end_lr!r}: need 0 < start_lr < end_lr.")
    if steps < 10:
        raise ValueError(f"steps={steps!r}: the test needs at least 10 steps (about 100 is usual).")
    rows, average, best, stopped = [], 0.0, math.inf, f"reached end_lr={end_lr:g}"
    bar = _bar(progress, steps, "find lr", "step")
    with restored(trainer):
        batches = _steps_of(trainer, trainer.knobs.batch_size)
        for i in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
            optimizers.set_lr(trainer.optimizer, lr)
            loss = float(_take_step(trainer, next(batches)))  # one sync per step: the test is short
            if not math.isfinite(loss):
                stopped = f"stopped at lr={lr:.3g}: the loss became {loss}"
                break
            average = smoothing * average + (1 - smoothing) * loss
            smoothed = average / (1 - smoothing ** (i + 1))  # bias-corrected, as Adam's moments
            rows.append({"lr": lr, "loss": loss, "smoothed": smoothed})
            if on_point is not None:
                on_point(rows[-1])
            bar.update(1)
            bar.set_postfix(lr=f"{lr:.2g}", loss=f"{smoothed:.3f}", refresh=False)
            best, first = min(best, smoothed), rows[0]["smoothed"]
            if i > 0 and smoothed > diverge * best:
                stopped = f"stopped at lr={lr:.3g}: the smoothed loss passed {diverge:g}x its best ({best:.3f})"
                break
            # A loss like cross-entropy starts near its ceiling (ln 10 for 10 classes), so 4x the best may never
            # come: climbing back above the start after a real fall is divergence too.
            if best < 0.98 * first and smoothed > first:
                stopped = (f"stopped at lr={lr:.3g}: the smoothed loss climbed back above its start ({first:.3f}) "
                           f"after falling to {best:.3f}")
                break
    bar.close()
    curve = pd.DataFrame(rows, columns=["lr", "loss", "smoothed"])
    found = suggest(curve["lr"].tolist(), curve["smoothed"].tolist()) if len(curve) >= 3 else []
    return LRFinding(curve, found, stopped)


def find_lr(config: RunConfig | dict | None = None, *, start_lr: float = 1e-5, end_lr: float = 10.0,
            steps: int = 100, smoothing: float = 0.9, diverge: float = 4.0, store: Store | str | bool | None = None,
            progress: bool = True, on_point: Callable[[dict], None] | None = None,
            **overrides: Any) -> LRFinding:
    """The LR range test before a run (Leslie Smith, 2015; fastai's lr_find): a fresh model of `config`, the lr
    swept exponentially from `start_lr` to `end_lr` over `steps` steps, and three suggestions, each with its rule:
    steepest (fastest fall), valley (the middle of the longest fall; the one `.lr` gives) and min/10. Read the
    figure before trusting any of them. Inside a live run use `LiveRun.find_lr`. Recorded as a "find_lr" run."""
    trainer = _standalone(config, overrides)
    try:
        return record(trainer, store, lr_range_test(trainer, start_lr, end_lr, steps, smoothing, diverge,
                                                     on_point, progress))
    finally:
        trainer.release_memory()


# ---- batch size by throughput ---------------------------------------------------------------------------------
@dataclass
class BatchSizeFinding:
    """Throughput and peak memory per batch size (`table`), the recommendation and why (`reason`)."""
    table: pd.DataFrame
    recommended: int | None
    largest_that_fits: int | None
    memory_budget_bytes: int
    reason: str
    run_id: int | None = None
    notes: list[str] = field(default_factory=list)

    kind = "find_batch_size"

    def rows(self) -> list[dict]:
        return self.table.to_dict("records")

    def summary(self) -> dict:
        return {"recommended": self.recommended, "largest_that_fits": self.largest_that_fits, "reason": self.reason,
                "memory_budget_bytes": self.memory_budget_bytes}

    def figure(self):
        from plotly.subplots import make_subplots

        t = self.table[self.table["throughput"].notna()]
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_scatter(x=t["batch_size"], y=t["throughput"], mode="lines+markers", name="throughput (img/s)")
        fig.add_scatter(x=t["batch_size"], y=t["peak_memory_bytes"] / 2**20, mode="lines+markers",
                        name="peak memory (MiB)", line=dict(dash="dot"), secondary_y=True)
        if self.recommended is not None:
            row = t[t["batch_size"] == self.recommended].iloc[0]
            fig.add_scatter(x=[self.recommended], y=[row["throughput"]], mode="markers", name="recommended",
                            marker=dict(size=14, symbol="star", color="#d62728"))
        fig.add_hline(y=self.memory_budget_bytes / 2**20, line_dash="dash", line_color="#999", secondary_y=True,
                      annotation_text="memory budget (margin kept)")
        fig.update_layout(template="plotly_white", height=340, title="Throughput and memory against batch size",
                          legend=dict(orientation="h", y=-0.25), margin=dict(l=60, r=60, t=50, b=40))
        fig.update_xaxes(type="log", title="batch size", tickvals=t["batch_size"].tolist())
        fig.update_yaxes(title="images/s", rangemode="tozero", secondary_y=False)
        fig.update_yaxes(title="MiB", rangemode="tozero", secondary_y=True)
        return fig

    def __str__(self) -> str:
        lines = [self.reason]
        for row in self.table.itertuples(index=False):
            speed = f"{row.throughput:>10,.0f} img/s" if row.throughput == row.throughput else " " * 16
            memory = f"{row.peak_memory_bytes / 2**20:>9,.0f} MiB" if row.peak_memory_bytes else " " * 13
            mark = "  <- recommended" if row.batch_size == self.recommended else ""
            lines.append(f"  {row.batch_size:>6}  {speed}  {memory}  {row.note}{mark}")
        return "\n".join(lines + self.notes)

    def __repr__(self) -> str:
        return str(self)


def memory_budget(device: torch.device) -> int:
    """What a run may use on the device: the GPU's total memory, or the machine's (or container's) RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    import psutil

    total = psutil.virtual_memory().total
    try:  # a container's limit (cgroup v2), when lower
        text = open("/sys/fs/cgroup/memory.max").read().strip()
        total = min(total, int(text)) if text.isdigit() else total
    except OSError:
        pass
    return total


@contextmanager
def memory_cap(device: torch.device, cap_bytes: int | None):
    """Let the finder use at most `cap_bytes` more than is in use now, so it meets an out-of-memory on purpose
    (tests, or to leave room for another job). GPU: torch's per-process memory fraction. CPU (Linux): the
    process's address-space limit, lowered for the duration; allocations past it fail as real OOMs do."""
    if cap_bytes is None:
        yield
        return
    if device.type == "cuda":
        total = torch.cuda.mem_get_info(device)[1]
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated(device) + cap_bytes)
                                                       / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        return
    if not sys.platform.startswith("linux"):
        raise ValueError(f"memory_cap={cap_bytes} on {device}: a CPU cap needs Linux; leave memory_cap=None.")
    with open("/proc/self/status") as f:
        in_use = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (in_use + cap_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


MIN_TIMED_STEPS, MIN_TIMED_S = 3, 0.3  # each size: at least this many timed steps and seconds (at most 50 steps)


def _time_batch_size(trainer: Trainer, size: int) -> tuple[float, int]:
    """Images/s at `size` (two untimed steps first: allocation, kernel choice) and the peak memory."""
    device = trainer.device
    steps = _steps_of(trainer, size)
    gc.collect()
    devices.reset_peak_memory(device)
    for _ in range(2):
        _take_step(trainer, next(steps))
    devices.synchronize(device)
    start, done = time.perf_counter(), 0
    while done < MIN_TIMED_STEPS or (time.perf_counter() - start < MIN_TIMED_S and done < 50):
        _take_step(trainer, next(steps))
        done += 1
        if done >= MIN_TIMED_STEPS:
            devices.synchronize(device)
    seconds = time.perf_counter() - start
    return done * size * trainer.knobs.grad_accum / seconds, devices.peak_memory_bytes(device)


def batch_size_search(trainer: Trainer, sizes: list[int] | None = None, max_batch_size: int = 4096,
                      margin: float = 0.2, tolerance: float = 0.05, time_limit_s: float = 60.0,
                      cap_bytes: int | None = None,
                      progress: bool = False, on_point: Callable[[dict], None] | None = None) -> BatchSizeFinding:
    """Time batch sizes on a set-up trainer (restored afterwards): powers of two from 8 up to `max_batch_size`
    and the training set's size, until one runs out of memory or the next would overrun `time_limit_s`.
    Recommends the smallest size within `tolerance` of the fastest throughput among those whose peak memory
    leaves a `margin` share of the device's memory free."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin={margin!r}: give the share of memory to keep free, in [0, 1), e.g. 0.2.")
    limit = min(max_batch_size, len(trainer.train_batches) // trainer.knobs.grad_accum)
    sizes = sorted(sizes) if sizes else [2 ** k for k in range(3, 17) if 2 ** k <= limit]
    if not sizes or sizes[0] > limit:
        raise ValueError(f"no batch size to try: the training set has {len(trainer.train_batches)} images "
                         f"(grad_accum={trainer.knobs.grad_accum}); raise train_size or lower the sizes.")
    budget = int(memory_budget(trainer.device) * (1 - margin))
    rows, notes, started = [], [], time.perf_counter()
    bar = _bar(progress, len(sizes), "find batch size", "size")
    with restored(trainer), memory_cap(trainer.device, cap_bytes):
        for size in sizes:
            elapsed = time.perf_counter() - started
            if rows and rows[-1]["throughput"] and elapsed + 2.5 * rows[-1]["seconds"] > time_limit_s:
                notes.append(f"stopped before batch_size={size}: it would overrun time_limit_s={time_limit_s:g} "
                             "(raise it to measure larger sizes)")
                break
            t0 = time.perf_counter()
            row = {"batch_size": size, "throughput": float("nan"), "peak_memory_bytes": None, "fits": False,
                   "note": "out of memory"}
            try:
                throughput, peak = _time_batch_size(trainer, size)
                row.update(throughput=throughput, peak_memory_bytes=peak, fits=True,
                           note="" if peak <= budget else "over the memory budget")
            except Exception as exc:  # noqa: BLE001 - an OOM ends the search; anything else is raised again
                if not is_out_of_memory(exc):
                    raise
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            if on_point is not None:
                on_point(row)
            bar.update(1)
            bar.set_postfix(batch=size, refresh=False)
            if not row["fits"]:  # out of memory: restored() releases the failed step's tensors
                break
    bar.close()
    table = pd.DataFrame(rows, columns=["batch_size", "throughput", "peak_memory_bytes", "seconds", "fits", "note"])
    return _recommend(table, budget, margin, tolerance, notes)


def _recommend(table: pd.DataFrame, budget: int, margin: float, tolerance: float, notes: list[str]):
    fits = table[table["fits"]]
    safe = fits[fits["peak_memory_bytes"] <= budget]
    largest = int(fits["batch_size"].max()) if len(fits) else None
    if safe.empty:
        reason = ("no batch size fits with a {:.0%} memory margin: lower the smallest size, use grad_accum, "
                  "or amp='bf16'".format(margin))
        return BatchSizeFinding(table, None, largest, budget, reason, notes=notes)
    fastest = safe["throughput"].max()
    chosen = safe[safe["throughput"] >= (1 - tolerance) * fastest].iloc[0]
    size = int(chosen["batch_size"])
    reason = (f"recommended batch_size={size}: {chosen['throughput']:,.0f} img/s, the smallest within "
              f"{tolerance:.0%} of the fastest ({fastest:,.0f} img/s), peak memory "
              f"{chosen['peak_memory_bytes'] / 2**20:,.0f} MiB, keeping {margin:.0%} of the memory free")
    if largest is not None and largest != size:
        top = table[table["batch_size"] == largest].iloc[0]
        reason += (f". The largest that fits, {largest}, gives {top['throughput']:,.0f} img/s "
                   f"({top['throughput'] / chosen['throughput']:.2f}x) for {top['peak_memory_bytes'] / 2**20:,.0f} MiB")
    return BatchSizeFinding(table, size, largest, budget, reason + ".", notes=notes)


def find_batch_size(config: RunConfig | dict | None = None, *, sizes: list[int] | None = None,
                    max_batch_size: int = 4096, margin: float = 0.2, tolerance: float = 0.05,
                    time_limit_s: float = 60.0, memory_cap_bytes: int | None = None,
                    store: Store | str | bool | None = None, progress: bool = True,
                    on_point: Callable[[dict], None] | None = None, **overrides: Any) -> BatchSizeFinding:
    """Throughput and peak memory of `config` at batch sizes up the powers of two, until out of memory,
    `max_batch_size` or `time_limit_s`; recommends the fastest with a memory `margin` (not the largest that
    fits) and says what the largest would give. A larger batch also changes what a step learns: rescale the lr
    (lesson 02). `memory_cap_bytes` provokes an OOM on purpose. Recorded as a "find_batch_size" run."""
    trainer = _standalone(config, overrides)
    try:
        finding = batch_size_search(trainer, sizes, max_batch_size, margin, tolerance, time_limit_s,
                                    cap_bytes=memory_cap_bytes, progress=progress, on_point=on_point)
        return record(trainer, store, finding)
    finally:
        trainer.release_memory()
