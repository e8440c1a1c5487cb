"""The training loop: the only place that trains.

Read `Trainer.run` top to bottom, then `_train_step`. A step is one optimizer step over `grad_accum`
micro-batches; `step` counts optimizer steps, `micro_steps` forward-backward passes. The techniques
(labkit.techniques) come in at named points: `setup` and `wrap` when the model is built (`self.model` is the raw
model that pruning, FLOP counts and evaluation use; `self.train_model` is what trains, e.g. compiled), `batch`
on every micro-batch, and `due` / `check_change` / `change` between steps. Between two steps the loop applies
knob changes (from a live run's `Controls`, or those a technique says are due), and each change starts a new
measured *segment*. Listeners hear about everything through events; the loop knows nothing of widgets, SQLite
or progress bars.

How throughput is measured: the device is synchronised only at logged points (every `log_every` steps, and
at segment and epoch ends), where the loss is read anyway. The interval between two logged points is timed
when it starts after the segment's first `timing_warmup` steps; evaluation lies outside every interval.
Inside an interval, markers on the device's timeline (CUDA events on a GPU) split each step into data time
(fetching and augmenting the batch) and compute time (forward, backward, optimizer step).
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F

from . import checkpoints, data as data_mod, devices, models
from .config import KNOBS, LIVE_KNOBS, RunConfig
from .dist.ranks import Ranks
from .events import ChangeDropped, EpochEnded, Listener, Logged, RunEnded, RunStarted, SegmentStarted
from .measure import Meter, data_share
from .result import RunResult
from .techniques import AT, Context, data_loading, distributed, grad_accum, optimizers, precision, pruning, schedule


class NonFiniteLoss(RuntimeError):
    pass


class Stopped(Exception):
    """Raised inside the loop when a stop was requested; the run ends as "stopped"."""


class Controls:
    """A thread-safe mailbox between a caller (a live run, a widget) and the training loop.

    The caller requests changes, pauses, a stop, or work on the model (`submit`, e.g. an LR range test); the loop
    collects them at its next step boundary, so only the training thread ever touches the model."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._tasks: list[tuple[Callable, Future]] = []
        self._work = threading.Event()  # set by resume, stop or submit: what a paused loop waits for
        self._applying = False  # taken by the loop, not yet applied (or dropped)
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self._paused = False

    def request(self, **changes: Any) -> None:
        with self._lock:
            self._pending.update(changes)

    def take(self) -> dict[str, Any]:
        with self._lock:
            changes, self._pending = self._pending, {}
            self._applying = bool(changes)
        return changes

    def applied(self) -> None:
        """The loop has applied (or dropped) what it took: its segment, if any, has started."""
        self._applying = False

    def has_pending(self) -> bool:
        """True from a request until the loop has applied or dropped it."""
        with self._lock:
            return bool(self._pending) or self._applying

    def submit(self, task: Callable[["Trainer"], Any]) -> Future:
        """Run `task(trainer)` in the training thread at the next step boundary (paused or not); its result or
        exception arrives in the returned Future. The time it takes is never counted as training."""
        future: Future = Future()
        with self._lock:
            self._tasks.append((task, future))
        self._work.set()
        return future

    def run_tasks(self, trainer: "Trainer") -> None:
        """Run the submitted tasks (in the training thread)."""
        for task, future in self._take_tasks():
            settle(future, lambda: task(trainer))

    def has_tasks(self) -> bool:
        with self._lock:
            return bool(self._tasks)

    def cancel_tasks(self, reason: str) -> None:
        """The run has ended: tasks never run fail with `reason`."""
        for _, future in self._take_tasks():
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError(reason))

    def _take_tasks(self) -> list[tuple[Callable, Future]]:
        with self._lock:
            tasks, self._tasks = self._tasks, []
        return tasks

    def sync(self) -> None:
        """At each step boundary, before the requests are read. A distributed run's ranks agree here on what
        rank 0 was asked (labkit.dist.worker.RankControls); one process has nothing to agree on."""

    def stop(self, reason: str | None = None) -> None:
        """Stop at the next step boundary; `reason` (e.g. "stopped by SIGTERM") is recorded as the run's error."""
        if self.stop_reason is None:  # the first reason given is the one recorded
            self.stop_reason = reason
        self._stop.set()
        self._paused = False  # a paused run wakes up (the event below) and stops
        self._work.set()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._work.set()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_for_work(self) -> None:
        """Block a paused loop until it is resumed, stopped or given a task."""
        self._work.wait()
        self._work.clear()


def settle(future: Future, call: Callable[[], Any]) -> None:
    """Run `call` for `future` (unless it was cancelled): its result or its exception goes to the future."""
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - the caller gets it from the Future
            future.set_exception(exc)


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


def mfu(flops_per_image: int | None, throughput: float | None, device: torch.device, amp: str) -> float | None:
    """Model FLOP utilisation: 3 x forward FLOPs per image x images/s over the device's peak FLOP/s for `amp`;
    None when the peak is not known (a CPU) or nothing was timed. The RunResult and the lab panel both use it."""
    peak = devices.peak_flops(device, amp)
    return 3 * flops_per_image * throughput / peak if peak and throughput and flops_per_image else None


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def check_change(knobs: RunConfig, changes: dict[str, Any], device: torch.device) -> RunConfig:
    """Validate a mid-run change against the knobs in force; returns the knobs it would give."""
    unknown = set(changes) - set(LIVE_KNOBS)
    if unknown:
        raise ValueError(f"{sorted(unknown)} cannot change during a run: live knobs are {list(LIVE_KNOBS)}.")
    new = knobs.replace(**changes).check_values()
    new = new.replace(amp=devices.resolve_amp(new.amp, device))
    for technique in AT["check_change"]:
        problem = technique.check_change(knobs, new)
        if problem:
            raise ValueError(problem)
    return new.validate()


class Trainer:
    """One run of a RunConfig. `run()` trains and returns a RunResult; listeners get every event."""

    def __init__(self, config: RunConfig, listeners: Iterable[Listener] = (), controls: Controls | None = None):
        self.config = config.validate()
        self.ranks = Ranks.current()  # rank 0 of 1, unless labkit.dist.worker started a process group
        self.device = devices.resolve_device(config.device)
        if self.ranks.world > 1 and self.device.type == "cuda":  # each rank its own GPU (the worker set it)
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.precisions = devices.precisions(self.device)
        self.listeners = list(listeners)
        self.controls = controls
        # The knobs now in force: the configuration with amp="auto" resolved, and what techniques start with
        # (pruning scheduled for later starts at 0).
        start = {k: v for t in AT["start"] for k, v in t.start(config).items()}
        self.knobs = config.replace(amp=devices.resolve_amp(config.amp, self.device), **start)
        self.loss_fn = F.cross_entropy  # (logits, targets) -> loss; replaceable (e.g. label smoothing)
        self.step = self.micro_steps = self.optimizer_steps = self.epoch = self.images_seen = 0
        self.meter = Meter(config.timing_warmup, config.log_every)
        self.history_rows, self.epochs_rows, self.marks, self.losses = [], [], [], []
        self.rejected: list[str] = []  # requested changes dropped at the step boundary, with the reason
        self.info = {**devices.describe(self.device),
                     "native_precisions": [m for m, p in self.precisions.items() if p.native]}
        if self.ranks.world > 1:
            self.info["processes"] = self.ranks.world  # on every machine: nproc counts one machine's
        self.total_steps, self.model, self.optimizer, self.scaler, self.compile_s = 0, None, None, None, None
        self.train_batches = self.test_batches = self.ddp = None  # made by setup()
        self.flops_per_image = self.dense_flops = self.dense_params = None

    # ---- the run -------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        self.t0 = time.perf_counter()
        status, error, failure, started = "completed", None, None, False
        try:  # set-up inside: a failure while loading the data or building the model ends the run like any other
            self.setup()
            started = True
            self._emit(RunStarted(self.config.to_dict(), self.info, self.total_steps))
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
            failure = None if is_out_of_memory(exc) else exc
        if not started:
            self._emit(RunStarted(self.config.to_dict(), self.info, self.total_steps))
        if self.controls is not None:
            self.controls.cancel_tasks(f"the run ended ({status}) before it got to the task")
        result = self._result(status, error)
        # save=True: the weights as the run left them (a failed run's may be NaN); the store's Recorder files them.
        keep = self.config.save and status != "failed" and self.model is not None and self.ranks.rank == 0
        checkpoint = checkpoints.payload(self.model, self.config, self.data) if keep else None
        self.release_memory()
        self._emit(RunEnded(result, checkpoint))
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
                micro_batches = grad_accum.micro_batches(batches, self.knobs.grad_accum)
                if micro_batches is None:  # the epoch's last images do not fill an optimizer step
                    break
                self._train_step(micro_batches, data_start)
                if self.step == 1:
                    self._time_first_step()
                self._between_steps()
            self._log()  # closes the timed interval: evaluation is never timed as training
            self._evaluate(time.perf_counter() - epoch_start)

    def _train_step(self, micro_batches, data_start) -> None:
        """One optimizer step: forward and backward over each micro-batch, then the update."""
        optimizers.set_lr(self.optimizer, self._peak_lr() * self._lr_factor())  # this step's lr, from progress
        # Data: normalise, then each technique's batch transform (augmentation, memory format).
        batches = [self.prepare_batch(images, labels) for images, labels in micro_batches]
        compute_start = self.clock.mark()
        step_loss = self.learn(batches)
        self.micro_steps += len(batches)
        self.marks.append((data_start, compute_start, self.clock.mark()))
        self.losses.append(step_loss)
        images = sum(len(y) for _, y in micro_batches) * self.ranks.world  # every rank took an equal share
        self.step += 1
        self.images_seen += images
        self.meter.step(images)

    def learn(self, batches) -> torch.Tensor:
        """Forward and backward over each prepared micro-batch, then the update; returns the loss (on the
        device: reading it would synchronise). The finders (labkit.finders) take their steps through here too."""
        step_loss = 0.0
        for i, (x, y) in enumerate(batches):
            with distributed.gradient_sync(self.ddp, last_micro_batch=i == len(batches) - 1):
                with precision.autocast_context(self.device, self.knobs.amp):
                    loss = self.loss(self.train_model(x), y, x) / len(batches)  # the mean over the effective batch
                self.scaler.scale(loss).backward()  # gradients add up over the micro-batches (and DDP's ranks)
            step_loss += loss.detach()
        self.scaler.step(self.optimizer)  # skipped by fp16's GradScaler when the gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss

    def loss(self, logits, y, x) -> torch.Tensor:
        """Cross-entropy (`loss_fn`), or the loss a technique puts in its place (distillation: a teacher's soft
        targets for the same images x)."""
        for technique in AT["loss"]:
            replaced = technique.loss(logits, y, x, self.knobs, self.ctx)
            if replaced is not None:
                return replaced
        return self.loss_fn(logits, y)

    def prepare_batch(self, images, labels):
        """A uint8 batch from the pipeline -> the float batch that trains: normalised, then each technique's
        batch transform (augmentation, memory format)."""
        x, y = data_mod.normalize(images, self.data), labels
        for technique in AT["batch"]:
            x, y = technique.batch(x, y, self.knobs, self.ctx)
        return x, y

    def _time_first_step(self) -> None:
        """The first step pays one-off costs (compilation, lazy initialisation): timed alone, never throughput."""
        devices.synchronize(self.device)
        now = time.perf_counter()
        if self.config.compile != "off":
            self.compile_s = now - self.t0 - self.meter.segments[0]["start_s"]
        self.meter.restart(now)  # its time and images leave the interval; its loss stays to be logged
        self.marks = []

    def _between_steps(self) -> None:
        """The step boundary: log, then apply what is due (a technique's scheduled change, live changes, pause,
        stop)."""
        loss = self._log() if self.meter.log_due() else None
        due = {}
        for technique in AT["due"]:
            due.update(technique.due(self._progress(), self.config, self.knobs))
        if loss is not None:
            for technique in AT["observe"]:
                due.update(technique.observe(loss, self.knobs, self.ctx))
        if due:
            self.apply(due)
        if self.controls is not None:
            self.controls.sync()  # a distributed run: every rank takes rank 0's requests at this same step
            if self.controls.paused or self.controls.has_tasks():
                self._log()  # neither the pause nor a task is training time
                self.controls.run_tasks(self)
                while self.controls.paused and not self.controls.stop_requested:
                    self.controls.wait_for_work()  # until resumed, stopped, or given a task
                    self.controls.run_tasks(self)
                self._restart_interval()
            if self.controls.stop_requested:
                self._log()
                raise Stopped
            requested = self.controls.take()
            if requested:
                self.apply(requested, requested=True)
                self.controls.applied()

    # ---- knobs and segments --------------------------------------------------------------------------------
    def check_change(self, changes: dict[str, Any]) -> RunConfig:
        """Validate a mid-run change against the run's state; returns the knobs it would give."""
        return check_change(self.knobs, changes, self.device)

    def apply(self, changes: dict[str, Any], requested: bool = False) -> None:
        """Apply knob changes at a step boundary and start a new segment. A `requested` change (from Controls)
        that is no longer valid is dropped, recorded as a ChangeDropped event and kept in `rejected`."""
        try:
            new = self.check_change(changes)
        except ValueError as exc:
            if not requested:
                raise
            self.rejected.append(str(exc))
            self._emit(ChangeDropped(self.step, self._now(), changes, str(exc)))
            return
        old = self.knobs
        changed = {k.name: (getattr(old, k.name), getattr(new, k.name)) for k in KNOBS
                   if getattr(old, k.name) != getattr(new, k.name)}
        if not changed:
            return
        self._log()  # close the old segment's last interval
        rebuild = set()
        for technique in AT["change"]:
            if technique.changed(old, new):
                rebuild |= technique.change(self.model, old, new, self.ctx) or set()
        self.knobs = new
        if "scaler" in rebuild:
            self.scaler = precision.make_scaler(self.device, new.amp)
        if "flops" in rebuild:
            self.flops_per_image = self._count_flops()
        if "optimizer" in rebuild:
            self._build_optimizer()
        self._start_segment(changed)

    def _start_segment(self, changes: dict[str, tuple[Any, Any]]) -> None:
        knobs = {k: getattr(self.knobs, k) for k in LIVE_KNOBS}
        devices.synchronize(self.device)
        self.segment = self.meter.start_segment({**knobs, "flops_per_image": self.flops_per_image}, self.step,
                                                self._now(), time.perf_counter())
        self.marks, self.losses = [], []
        self._emit(SegmentStarted(self.segment, self.step, self._now(), knobs, changes,
                                  flops_per_image=self.flops_per_image))

    # ---- measurement (the accounting is labkit.measure.Meter's) --------------------------------------------
    def _restart_interval(self) -> None:
        devices.synchronize(self.device)
        self.meter.restart(time.perf_counter())
        self.marks, self.losses = [], []

    def _log(self) -> float | None:
        """Synchronise, account the interval since the last point, and emit a Logged event; returns the
        interval's mean loss (None when no step was taken since the last point)."""
        if not self.losses:
            return None
        losses = torch.stack(self.losses).float().tolist()  # one sync for the whole interval
        devices.synchronize(self.device)
        now = time.perf_counter()
        data_s = sum(self.clock.seconds(a, b) for a, b, _ in self.marks)
        compute_s = sum(self.clock.seconds(b, c) for _, b, c in self.marks)
        # A distributed run logs the global batch's loss, and every rank's times are kept (one collective).
        losses = self.ranks.log(losses, data_s, compute_s, distributed.allreduce_s_per_step(self.ddp),
                                timed=self.meter.timed())
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(self._non_finite_message(self.step - len(losses) + bad[0] + 1, losses[bad[0]]))
        # The next interval starts at `now`, so the time listeners take below counts against training throughput.
        throughput = self.meter.close(now, self.step, self._now(), data_s, compute_s)
        self.marks, self.losses = [], []
        row = Logged(step=self.step, epoch=self.epoch, segment=self.segment, time_s=self._now(),
                     loss=sum(losses) / len(losses), lr=self.optimizer.param_groups[0]["lr"],
                     batch_size=self.knobs.batch_size, throughput=throughput,
                     data_s=data_s, compute_s=compute_s, loss_scale=precision.scale_of(self.scaler),
                     skipped_steps=self.step - self.optimizer_steps, grad_accum=self.knobs.grad_accum)
        self.history_rows.append({k: v for k, v in vars(row).items() if k != "kind"})
        self._emit(row)
        return row.loss

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
        """Accuracy of the raw model (never the compiled one: switching it to eval mode would recompile)."""
        self.model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for images, labels in batches:
            x = data_mod.normalize(images, self.data)
            with precision.autocast_context(self.device, self.knobs.amp):
                correct += (self.model(x).argmax(dim=1) == labels).sum()
            seen += len(labels)
        self.model.train()
        correct, seen = self.ranks.sum(torch.stack([correct, torch.tensor(seen, device=self.device)])).tolist()
        return correct / max(seen, 1)

    # ---- set-up and the end --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the data and build the model, optimizer and scaler (`run` calls it; the finders too)."""
        cfg, k = self.config, self.knobs
        devices.reset_peak_memory(self.device)
        torch.manual_seed(cfg.seed)  # initial weights, and mixup's draws
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)  # data order and augmentation
        # Distributed: every rank draws the same batch order and takes its share; augmentation draws its own.
        augment_gen = self.gen if self.ranks.world == 1 else torch.Generator(device=self.device).manual_seed(
            cfg.seed + 7919 * self.ranks.rank)
        self.data = data_mod.load(cfg.dataset, cfg.train_size, cfg.test_size)
        self.data.mean, self.data.std = self.data.mean.to(self.device), self.data.std.to(self.device)
        # One rule says which data streams (the input verdict reads it too).
        loader, loading = data_loading.loader(cfg), data_loading.loader_options(cfg, self.device)
        self.train_batches = data_mod.batches(self.data.train, loader, self.device, loading, self.ranks.share)
        self.test_batches = data_mod.batches(self.data.test, loader, self.device, loading, self.ranks.share)
        step_images = cfg.batch_size * cfg.grad_accum
        if step_images > len(self.train_batches):
            raise ValueError(f"batch_size={cfg.batch_size} x grad_accum={cfg.grad_accum} is larger than the "
                             f"{len(self.train_batches)} training images: lower batch_size or raise train_size.")
        self.model = models.build(cfg.model, self.data.num_classes, self.data.image_shape[0], cfg.width,
                                  cfg.depth, cfg.norm).to(self.device)
        self.ctx = Context(self.device, self.data.num_classes,
                           torch.zeros(1, *self.data.image_shape, device=self.device), augment_gen)
        self.dense_params = models.count_params(self.model)
        self.dense_weights = pruning.total_weights(self.model)
        self.dense_flops = self._count_flops()
        for technique in AT["setup"]:  # on the raw model: memory format, pruning before training
            technique.setup(self.model, k, self.ctx)
        self.flops_per_image = self._count_flops()
        self.train_model = self.model
        for technique in AT["wrap"]:  # the model that trains: DDP-wrapped, compiled
            self.train_model = technique.wrap(self.train_model, k)
        self.ddp = distributed.ddp_of(self.train_model)  # None in one process
        self.scaler = precision.make_scaler(self.device, k.amp)
        self._build_optimizer()
        steps_per_epoch = len(self.train_batches) // step_images
        self.total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
        self.total_images = cfg.epochs * steps_per_epoch * step_images
        self.clock = _Clock(self.device)
        self.info.update({"dataset_classes": self.data.num_classes, "train_images": len(self.train_batches),
                          "test_images": len(self.test_batches), "dense_params": self.dense_params,
                          "dense_flops_per_image": self.dense_flops, **self.ctx.info})

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups: a technique's (transfer: pre-trained layers at a scaled lr, frozen
        ones left out), else one group of every parameter at the peak lr."""
        for technique in AT["param_groups"]:
            groups = technique.param_groups(self.model, self.knobs, self.ctx)
            if groups is not None:
                return groups
        return [{"params": list(self.model.parameters())}]

    def _build_optimizer(self) -> None:
        """A fresh optimizer over the model's current parameters (its state starts empty)."""
        k = self.knobs
        self.optimizer = optimizers.build(k.optimizer, self.param_groups(), self._peak_lr(), k.weight_decay,
                                          k.momentum)
        # The GradScaler skips optimizer.step() when gradients overflow; counting real steps reveals the skips.
        self.optimizer.register_step_post_hook(lambda *_: setattr(self, "optimizer_steps", self.optimizer_steps + 1))

    def _count_flops(self) -> int:
        return models.flops_per_image(self.model, self.data.image_shape, self.device)

    def _peak_lr(self) -> float:
        return optimizers.peak_lr(self.knobs)

    def _progress(self) -> float:
        by_images = self.images_seen / self.total_images
        return max(by_images, self.step / self.config.max_steps) if self.config.max_steps else by_images

    def _lr_factor(self) -> float:
        k = self.knobs
        return schedule.lr_factor(min(self._progress(), 1.0), k.schedule, k.warmup, k.milestones, k.decay)

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
        if is_out_of_memory(exc):
            return (f"out of memory on {self.device} at batch_size={self.knobs.batch_size} "
                    f"(model={self.config.model!r}): lower batch_size (grad_accum keeps the effective batch), "
                    "or use amp='bf16'.")
        if isinstance(exc, ValueError):  # a setting or missing data: its message names the fix
            return str(exc)
        if "DataLoader" in str(exc):  # a worker died or hung (torch names the worker and the signal)
            return (f"{exc}: the data loader's worker processes failed (num_workers={self.config.num_workers}); "
                    "a worker killed for memory or hung on a file is the usual cause: try fewer workers, "
                    "num_workers=0 to see the error in this process, or loader='device'.")
        return f"{type(exc).__name__}: {exc}"

    def _result(self, status: str, error: str | None) -> RunResult:
        totals = self.meter.totals()
        throughput, share = totals["throughput"], data_share(totals["data_s"], totals["compute_s"])
        last = self.epochs_rows[-1] if self.epochs_rows else {}
        used = self.precisions[self.knobs.amp]
        figures = {}
        if self.model is not None and self.flops_per_image is not None:
            figures = dict(
                flops_per_image=self.flops_per_image, dense_flops_per_image=self.dense_flops,
                params=models.count_params(self.model) - pruning.masked_weights(self.model),
                dense_params=self.dense_params, sparsity=pruning.sparsity(self.model, self.dense_weights),
                mfu=mfu(self.flops_per_image, throughput and throughput / self.ranks.world, self.device,
                        self.knobs.amp))  # the global throughput over one device's peak would count N devices
        return RunResult(
            status=status, config=self.config, error=error, device=str(self.device),
            precision=devices.AMP_DTYPE_NAMES[used.mode], precision_native=used.native, precision_note=used.note,
            throughput=throughput, accuracy=last.get("test_accuracy"), train_accuracy=last.get("train_accuracy"),
            time_s=self._now(), peak_memory_bytes=devices.peak_memory_bytes(self.device), **figures,
            steps=self.step, micro_steps=self.micro_steps, compile_s=self.compile_s,
            launch_s=self.info.get("launch_s"),
            loss_scale=precision.scale_of(self.scaler) if self.scaler is not None else None,
            skipped_steps=self.step - self.optimizer_steps,
            data_time_s=totals["data_s"], compute_time_s=totals["compute_s"],
            input_verdict=data_loading.verdict(share, self.config, self.device),
            history=pd.DataFrame(self.history_rows), epochs=pd.DataFrame(self.epochs_rows),
            segments=pd.DataFrame(self.meter.segments),
            ranks=pd.DataFrame(self.ranks.times) if self.ranks.world > 1 else pd.DataFrame())

    def release_memory(self) -> None:
        """Drop what the run held on the device and end its DataLoader workers, so the kernel can start the next
        run (after an OOM too)."""
        self.losses, self.marks = [], []
        for pipeline in (self.train_batches, self.test_batches):
            if hasattr(pipeline, "close"):  # a DataLoader's worker processes end with the run
                pipeline.close()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        devices.release_cached(self.device)

    def _emit(self, event) -> None:
        for listener in self.listeners:
            listener(event)
