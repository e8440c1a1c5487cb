"""The training loop: the only place that trains.

Read `Trainer.run` top to bottom. Between two steps the loop may apply knob changes (from a live run's
`Controls`, or the scheduled pruning), and each change starts a new measured *segment*. Listeners hear about
everything through events; the loop knows nothing of widgets, SQLite or progress bars.

How throughput is measured: the device is synchronised only at logged points (every `log_every` steps, and
at segment and epoch ends), where the loss is read anyway. The interval between two logged points is timed
when it starts after the segment's first `timing_warmup` steps; evaluation lies outside every interval.
Inside an interval, markers on the device's timeline (CUDA events on a GPU) split each step into data time
(fetching and augmenting the batch) and compute time (forward, backward, optimizer step).
"""
from __future__ import annotations

import gc
import math
import threading
import time
from typing import Any, Iterable

import pandas as pd
import torch
import torch.nn.functional as F

from . import data as data_mod, devices, models, optim, precision, pruning
from .config import LIVE_KNOBS, RunConfig
from .events import EpochEnded, Listener, Logged, RunEnded, RunStarted, SegmentStarted
from .measure import Meter
from .result import RunResult


class NonFiniteLoss(RuntimeError):
    pass


class Stopped(Exception):
    """Raised inside the loop when a stop was requested; the run ends as "stopped"."""


class Controls:
    """A thread-safe mailbox between a caller (a live run, a widget) and the training loop.

    The caller requests changes, pauses or a stop; the loop collects them at its next step boundary."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self._resumed = threading.Event()
        self._resumed.set()

    def request(self, **changes: Any) -> None:
        with self._lock:
            self._pending.update(changes)

    def take(self) -> dict[str, Any]:
        with self._lock:
            changes, self._pending = self._pending, {}
        return changes

    def stop(self, reason: str | None = None) -> None:
        """Stop at the next step boundary; `reason` (e.g. "stopped by SIGTERM") is recorded as the run's error."""
        if self.stop_reason is None:  # the first reason given is the one recorded
            self.stop_reason = reason
        self._stop.set()
        self._resumed.set()  # a paused run must wake up to stop

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_until_resumed(self) -> None:
        self._resumed.wait()


class _Clock:
    """Marks on the device's timeline: CUDA events on a GPU (read after a sync), wall-clock time elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


class Trainer:
    """One run of a RunConfig. `run()` trains and returns a RunResult; listeners get every event."""

    def __init__(self, config: RunConfig, listeners: Iterable[Listener] = (), controls: Controls | None = None):
        self.config = config.validate()
        self.device = devices.resolve_device(config.device)
        self.precisions = devices.precisions(self.device)
        self.listeners = list(listeners)
        self.controls = controls
        # The knobs now in force: the configuration with amp="auto" resolved, except pruning scheduled for later.
        self.prune_due = config.prune > 0 and config.prune_at > 0
        self.knobs = config.replace(amp=devices.resolve_amp(config.amp, self.device),
                                    prune=0.0 if self.prune_due else config.prune)
        self.step = 0
        self.epoch = 0

    # ---- the run -------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        self._setup()
        self.t0 = time.perf_counter()
        self._emit(RunStarted(self.config.to_dict(), self.info, self.total_steps))
        status, error, failure = "completed", None, None
        try:
            self._start_segment({})
            self._train()
        except Stopped:
            status, error = "stopped", self.controls.stop_reason
        except KeyboardInterrupt as exc:  # Ctrl-C, a kernel interrupt, or a signal (labkit.signals.Interrupted)
            status, error, failure = "stopped", f"interrupted ({getattr(exc, 'signal_name', 'KeyboardInterrupt')})", exc
        except NonFiniteLoss as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded as failed; unexpected ones are raised again below
            status, error = "failed", self._explain(exc)
            failure = None if _is_out_of_memory(exc) else exc
        result = self._result(status, error)
        self._release_memory()
        self._emit(RunEnded(result))
        if failure is not None:
            raise failure
        return result

    def _train(self) -> None:
        cfg = self.config
        while self.epoch < cfg.epochs and not self._done():
            self.epoch += 1
            epoch_start = time.perf_counter()
            batches = self.train_batches.train_batches(lambda: self.knobs.batch_size, self.gen)
            while not self._done():
                data_start = self.clock.mark()
                batch = next(batches, None)
                if batch is None:
                    break
                self._train_step(batch, data_start)
                self._between_steps()
            self._log()  # closes the timed interval: evaluation is never timed as training
            self._evaluate(time.perf_counter() - epoch_start)

    def _train_step(self, batch, data_start) -> None:
        images, labels = batch
        x, y = data_mod.prepare(images, labels, self.data, self.knobs.augment, self.gen)
        compute_start = self.clock.mark()
        with precision.autocast_context(self.device, self.knobs.amp):
            loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.marks.append((data_start, compute_start, self.clock.mark()))
        self.losses.append(loss.detach())
        self.step += 1
        self.images_seen += len(labels)
        self.meter.step(len(labels))
        optim.set_lr(self.optimizer, self._peak_lr() * self._lr_factor())

    def _between_steps(self) -> None:
        """The step boundary: log, then apply what is due (scheduled pruning, live changes, pause, stop)."""
        if self.meter.log_due():
            self._log()
        changes = {}
        if self.prune_due and self._progress() >= self.config.prune_at:
            self.prune_due = False
            if self.knobs.prune < self.config.prune:  # a live change may have pruned further already
                changes["prune"] = self.config.prune
        if self.controls is not None:
            if self.controls.paused:
                self._log()
                self.controls.wait_until_resumed()
                self._restart_interval()
            if self.controls.stop_requested:
                self._log()
                raise Stopped
            changes.update(self.controls.take())
        if changes:
            self.apply(changes)

    # ---- knobs and segments --------------------------------------------------------------------------------
    def check_change(self, changes: dict[str, Any]) -> RunConfig:
        """Validate a mid-run change against the run's state; returns the knobs it would give."""
        unknown = set(changes) - set(LIVE_KNOBS)
        if unknown:
            raise ValueError(f"{sorted(unknown)} cannot change during a run: live knobs are {list(LIVE_KNOBS)}.")
        new = self.knobs.replace(**changes).validate()
        new = new.replace(amp=devices.resolve_amp(new.amp, self.device))
        if new.prune < self.knobs.prune:
            raise ValueError(f"prune={new.prune} is below the {self.knobs.prune} already applied: pruning only "
                             "adds during a run.")
        if new.prune_method != self.knobs.prune_method and self.knobs.prune > 0:
            raise ValueError(f"prune_method={new.prune_method!r}: this run is already pruned with "
                             f"{self.knobs.prune_method!r}; start a new run to change the method.")
        return new

    def apply(self, changes: dict[str, Any]) -> None:
        """Apply knob changes at a step boundary and start a new segment."""
        new = self.check_change(changes)
        old = self.knobs
        self._log()  # close the old segment's last interval
        if new.amp != old.amp:
            self.scaler = precision.make_scaler(self.device, new.amp)
        rebuild = new.optimizer != old.optimizer
        if new.prune != old.prune:
            pruning.apply(self.model, new.prune_method, new.prune, old.prune, self.example_input)
            rebuild |= new.prune_method == "channels"  # surgery made new parameter tensors
            self.flops_per_image = self._count_flops()
        self.knobs = new
        if rebuild:
            self._build_optimizer()
        self._start_segment({k: (getattr(old, k), getattr(new, k)) for k in LIVE_KNOBS
                             if getattr(old, k) != getattr(new, k)})

    def _start_segment(self, changes: dict[str, tuple[Any, Any]]) -> None:
        knobs = {k: getattr(self.knobs, k) for k in LIVE_KNOBS}
        devices.synchronize(self.device)
        self.segment = self.meter.start_segment({**knobs, "flops_per_image": self.flops_per_image}, self.step,
                                                self._now(), time.perf_counter())
        self.marks, self.losses = [], []
        self._emit(SegmentStarted(self.segment, self.step, self._now(), knobs, changes))

    # ---- measurement (the accounting is labkit.measure.Meter's) --------------------------------------------
    def _restart_interval(self) -> None:
        devices.synchronize(self.device)
        self.meter.restart(time.perf_counter())
        self.marks, self.losses = [], []

    def _log(self) -> None:
        """Synchronise, account the interval since the last point, and emit a Logged event."""
        if not self.losses:
            return
        losses = torch.stack(self.losses).float().tolist()  # one sync for the whole interval
        devices.synchronize(self.device)
        now = time.perf_counter()
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(self._non_finite_message(self.step - len(losses) + bad[0] + 1, losses[bad[0]]))
        data_s = sum(self.clock.seconds(a, b) for a, b, _ in self.marks)
        compute_s = sum(self.clock.seconds(b, c) for _, b, c in self.marks)
        # The next interval starts at `now`, so the time listeners take below counts against training throughput.
        throughput = self.meter.close(now, self.step, self._now(), data_s, compute_s)
        self.marks, self.losses = [], []
        row = Logged(step=self.step, epoch=self.epoch, segment=self.segment, time_s=self._now(),
                     loss=sum(losses) / len(losses), lr=self.optimizer.param_groups[0]["lr"],
                     batch_size=self.knobs.batch_size, throughput=throughput,
                     data_s=data_s, compute_s=compute_s, loss_scale=precision.scale_of(self.scaler),
                     skipped_steps=self.step - self.optimizer_steps)
        self.history_rows.append({k: v for k, v in vars(row).items() if k != "kind"})
        self._emit(row)

    def _evaluate(self, epoch_time_s: float) -> None:
        test_acc = self._accuracy(self.test_batches.eval_batches())
        train_acc = self._accuracy(self.train_batches.eval_batches(limit=len(self.test_batches)))
        recent = [r["loss"] for r in self.history_rows if r["epoch"] == self.epoch]
        event = EpochEnded(epoch=self.epoch, step=self.step, time_s=self._now(), segment=self.segment,
                           train_loss=sum(recent) / len(recent) if recent else float("nan"),
                           test_accuracy=test_acc, train_accuracy=train_acc, epoch_time_s=epoch_time_s)
        self.epochs_rows.append({k: v for k, v in vars(event).items() if k != "kind"})
        self._emit(event)
        self._restart_interval()

    @torch.no_grad()
    def _accuracy(self, batches) -> float:
        self.model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for images, labels in batches:
            x, y = data_mod.prepare(images, labels, self.data, None, None)
            with precision.autocast_context(self.device, self.knobs.amp):
                correct += (self.model(x).argmax(dim=1) == y).sum()
            seen += len(labels)
        self.model.train()
        return int(correct) / max(seen, 1)

    # ---- set-up and the end --------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        devices.reset_peak_memory(self.device)
        torch.manual_seed(cfg.seed)  # initial weights, and mixup's draws
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)  # data order and augmentation
        self.data = data_mod.load(cfg.dataset, cfg.train_size, cfg.test_size)
        self.data.mean, self.data.std = self.data.mean.to(self.device), self.data.std.to(self.device)
        self.train_batches = data_mod.batches(self.data.train, cfg.loader, self.device)
        self.test_batches = data_mod.batches(self.data.test, cfg.loader, self.device)
        if cfg.batch_size > len(self.train_batches):
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the {len(self.train_batches)} training "
                             "images: lower batch_size or raise train_size.")
        self.model = models.build(cfg.model, self.data.num_classes, self.data.image_shape[0], cfg.width,
                                  cfg.depth).to(self.device)
        self.example_input = torch.zeros(1, *self.data.image_shape, device=self.device)
        self.dense_params = models.count_params(self.model)
        self.dense_weights = pruning.total_weights(self.model)
        self.flops_per_image = self.dense_flops = self._count_flops()
        if self.knobs.prune > 0:  # prune_at == 0: prune the freshly initialised network
            pruning.apply(self.model, cfg.prune_method, cfg.prune, 0.0, self.example_input)
            self.flops_per_image = self._count_flops()
        self.scaler = precision.make_scaler(self.device, self.knobs.amp)
        self.optimizer_steps = 0
        self._build_optimizer()
        steps_per_epoch = len(self.train_batches) // cfg.batch_size
        self.total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
        self.total_images = cfg.epochs * steps_per_epoch * cfg.batch_size
        self.images_seen = 0
        self.clock = _Clock(self.device)
        self.history_rows, self.epochs_rows = [], []
        self.meter = Meter(cfg.timing_warmup, cfg.log_every)
        self.info = {**devices.describe(self.device), "dataset_classes": self.data.num_classes,
                     "native_precisions": [m for m, p in self.precisions.items() if p.native],
                     "train_images": len(self.train_batches), "test_images": len(self.test_batches),
                     "dense_params": self.dense_params, "dense_flops_per_image": self.dense_flops}

    def _build_optimizer(self) -> None:
        """A fresh optimizer over the model's current parameters (its state starts empty)."""
        k = self.knobs
        self.optimizer = optim.build_optimizer(k.optimizer, self.model.parameters(), self._peak_lr(),
                                               k.weight_decay, k.momentum)
        # The GradScaler skips optimizer.step() when gradients overflow; counting real steps reveals the skips.
        self.optimizer.register_step_post_hook(lambda *_: setattr(self, "optimizer_steps", self.optimizer_steps + 1))

    def _count_flops(self) -> int:
        return models.flops_per_image(self.model, self.data.image_shape, self.device)

    def _peak_lr(self) -> float:
        return self.knobs.lr if self.knobs.lr is not None else optim.default_lr(self.knobs.optimizer)

    def _progress(self) -> float:
        by_images = self.images_seen / self.total_images
        return max(by_images, self.step / self.config.max_steps) if self.config.max_steps else by_images

    def _lr_factor(self) -> float:
        return optim.lr_factor(min(self._progress(), 1.0), self.config.schedule, self.config.warmup)

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def _non_finite_message(self, step: int, value: float) -> str:
        k = self.knobs
        hint = ("fp16 overflow: try amp='bf16' or a lower lr" if k.amp == "fp16"
                else f"try a lower lr (peak lr is {self._peak_lr():g})")
        return f"loss became {value} at step {step} (amp={k.amp!r}, optimizer={k.optimizer!r}): {hint}."

    def _explain(self, exc: BaseException) -> str:
        if _is_out_of_memory(exc):
            return (f"out of memory on {self.device} at batch_size={self.knobs.batch_size} "
                    f"(model={self.config.model!r}): lower batch_size, or use amp='bf16'.")
        return f"{type(exc).__name__}: {exc}"

    def _result(self, status: str, error: str | None) -> RunResult:
        totals = self.meter.totals()
        throughput = totals["throughput"]
        peak = devices.peak_flops(self.device, self.knobs.amp)
        last = self.epochs_rows[-1] if self.epochs_rows else {}
        used = self.precisions[self.knobs.amp]
        return RunResult(
            status=status, config=self.config, error=error, device=str(self.device),
            precision=devices.AMP_DTYPE_NAMES[used.mode], precision_native=used.native, precision_note=used.note,
            throughput=throughput, accuracy=last.get("test_accuracy"), train_accuracy=last.get("train_accuracy"),
            time_s=self._now(), peak_memory_bytes=devices.peak_memory_bytes(self.device),
            flops_per_image=self.flops_per_image, dense_flops_per_image=self.dense_flops,
            params=models.count_params(self.model) - pruning.masked_weights(self.model),
            dense_params=self.dense_params, sparsity=pruning.sparsity(self.model, self.dense_weights),
            mfu=3 * self.flops_per_image * throughput / peak if peak and throughput else None,
            steps=self.step, loss_scale=precision.scale_of(self.scaler),
            skipped_steps=self.step - self.optimizer_steps,
            data_time_s=totals["data_s"], compute_time_s=totals["compute_s"],
            history=pd.DataFrame(self.history_rows), epochs=pd.DataFrame(self.epochs_rows),
            segments=pd.DataFrame(self.meter.segments))

    def _release_memory(self) -> None:
        """Drop what the run held on the device, so the kernel can start the next run (after an OOM too)."""
        self.losses, self.marks = [], []
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _emit(self, event) -> None:
        for listener in self.listeners:
            listener(event)
