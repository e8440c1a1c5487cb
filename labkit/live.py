"""A live run: the same training loop in a background thread, with knobs you can change while it trains.

    live = labkit.LiveRun(labkit.RunConfig(epochs=5)).start()
    live.set(amp="bf16")          # validated now; applied at the next step boundary
    live.set(prune=0.5)
    result = live.wait()

What a change does mid-run is each knob's declared `live` text (`labkit knobs` prints them all); knobs without
one are refused, and so are changes a technique forbids in the run's state (pruning only adds; a compiled run
keeps the shapes it was compiled for). Each change starts a new measured segment (see `LiveRun.segments`).

One run trains at a time per device in a kernel: starting a second one while the first trains raises
RuntimeError saying which run holds the device (stop it, or wait for it).

Signals and exit: an interrupt (Ctrl-C, the kernel's stop button) while `wait()` waits stops the run, and
SIGTERM or the interpreter's exit stops every live run of the process; each is recorded as "stopped" with the
reason before the interrupt goes on or the process ends.
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Iterable

import pandas as pd

from .config import RunConfig
from .events import Listener
from .result import RunResult
from .signals import stop_on_signals
from .store import Store
from .dist.launch import trainer_for
from .train import Controls

# The live run training on each device of this kernel (one at a time per device).
_active: dict[str, "LiveRun"] = {}
_active_lock = threading.Lock()
_STOP_WAIT_S = 10.0  # how long a signal or the exit waits for live runs to record that they stopped
_previous_sigterm = None  # the SIGTERM handler found when the first live run started (None: not installed yet)


def _stop_all(reason: str) -> None:
    """Stop every live run of this process and wait (briefly) until each has recorded its end."""
    with _active_lock:
        runs = list(_active.values())
    for live in runs:
        live.controls.stop(reason)
    deadline = time.monotonic() + _STOP_WAIT_S
    for live in runs:
        live._finished.wait(max(0.0, deadline - time.monotonic()))


def _on_sigterm(signum, frame) -> None:
    _stop_all("stopped by SIGTERM")
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default: end the process, as SIGTERM would have
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _watch_signals() -> None:
    """Once per process, from the main thread: SIGTERM and the interpreter's exit stop the live runs first."""
    global _previous_sigterm
    if _previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler is None:  # installed outside Python: leave it alone
        return
    _previous_sigterm = handler
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(_stop_all, "stopped: the Python process exited")


class LiveRun:
    """A run training in a background thread whose knobs can change while it trains (see the module doc)."""

    def __init__(self, config: RunConfig | dict | None = None, *, store: Store | str | None | bool = None,
                 listeners: Iterable[Listener] = (), **overrides: Any):
        self.config = RunConfig.of(config).replace(**overrides).validate()
        self.controls = Controls()
        self._store = False if store is False else Store.of(store)  # the finders record there too
        self._recorder = self._store.recorder() if self._store is not False else None
        # The trainer is built here, in the caller's thread: a bad configuration raises before any thread starts.
        self._listeners = [self._watch, *([self._recorder] if self._recorder else []), *listeners]
        # nproc > 1: a Launcher stands in for the Trainer, and the processes it starts with torchrun train.
        self.trainer = trainer_for(self.config, listeners=self._listeners, controls=self.controls)
        self.device_key = str(self.trainer.device)
        self.error: BaseException | None = None  # an unexpected exception from the training thread
        self._result: RunResult | None = None
        self._thread: threading.Thread | None = None
        # Set when the training thread is done. Waiting on it rather than on Thread.join: a join interrupted by
        # a signal makes Python 3.11 take a live thread for a finished one (CPython gh-90882).
        self._finished = threading.Event()

    # ---- life cycle ----------------------------------------------------------------------------------------
    def start(self) -> "LiveRun":
        """Start training in a background thread; returns at once. Refused while another run holds the device."""
        with _active_lock:
            if self._thread is not None:
                raise RuntimeError("this LiveRun was already started; make a new LiveRun for another run.")
            other = _active.get(self.device_key)
            if other is not None and other.running:
                raise RuntimeError(f"a run is already training on {self.device_key} (step {other.step}): "
                                   "stop it with .stop() or wait for it with .wait() before starting another.")
            _active[self.device_key] = self
            _watch_signals()
            self._thread = threading.Thread(target=self._train, name=f"labkit-live-{self.device_key}", daemon=True)
            self._thread.start()
        return self

    def _train(self) -> None:
        # Everything is caught here: the kernel must outlive any failure of the run. The trainer has recorded the
        # run's end (set-up failures included) before an exception reaches this point.
        try:
            self._result = self.trainer.run()
        except BaseException as exc:  # noqa: BLE001 - kept in .error and shown by the lab
            self.error = exc
        finally:
            with _active_lock:
                if _active.get(self.device_key) is self:
                    del _active[self.device_key]
            self._finished.set()

    def _watch(self, event) -> None:
        if event.kind == "run_ended":
            self._result = event.result

    def set(self, **knobs: Any) -> None:
        """Change live knobs; they take effect at the next step boundary and start a new segment.

        Checked now: a bad value raises ValueError here and the run goes on unchanged."""
        if self._thread is not None and not self.running:
            raise RuntimeError(f"this run has ended ({self.status}): start a new LiveRun to train again.")
        self.trainer.check_change(knobs)
        self.controls.request(**knobs)

    def find_lr(self, wait: bool = True, **options: Any):
        """The LR range test on this run's model, now (labkit.finders.lr_range_test's `options`): the training
        thread runs it at the next step boundary (paused or not), then puts the model, optimizer and generators
        back, and the run goes on where it was. Returns the LRFinding (`wait=False`: a Future of it). Recorded in
        the run's store as a "find_lr" run linked to this one."""
        from . import finders

        return self._find(finders.lr_range_test, wait, options)

    def find_batch_size(self, wait: bool = True, **options: Any):
        """Time batch sizes on this run's model, now (labkit.finders.batch_size_search's `options`), as
        `find_lr` does; the run goes on with its own batch size (set it from the recommendation if you like)."""
        from . import finders

        return self._find(finders.batch_size_search, wait, options)

    def _find(self, search, wait: bool, options: dict[str, Any]):
        """Run a finder's `search(trainer, **options)` in the training thread and record it, linked to this run."""
        from . import finders

        if self.config.nproc > 1:
            raise RuntimeError(f"the finders measure one process; this run has nproc={self.config.nproc}: run "
                               "labkit.find_lr(config) / labkit.find_batch_size(config) with nproc=1 first.")
        if not self.running:
            raise RuntimeError(f"this run is {self.status}: a finder inside a run needs it training; "
                               "use labkit.find_lr(config) / labkit.find_batch_size(config) before a run.")
        future = self.controls.submit(lambda trainer: finders.record(
            trainer, self._store, search(trainer, **options), {"during_run": self.run_id}))
        if not wait:
            return future
        with stop_on_signals():  # short waits, so an interrupt reaches the kernel
            while True:
                try:
                    return future.result(timeout=0.1)
                except FutureTimeout:  # not the builtin TimeoutError before Python 3.11
                    continue

    def pause(self) -> None:
        """Hold the loop at the next step boundary (the paused time is not counted in throughput)."""
        self.controls.pause()

    def resume(self) -> None:
        self.controls.resume()

    def stop(self, reason: str | None = None) -> None:
        """Stop at the next step boundary; the run ends with status "stopped" (and `reason` as its error)."""
        self.controls.stop(reason)

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait for the run to end (at most `timeout` seconds); returns the result, or None if still training.

        An interrupt while waiting (Ctrl-C, the kernel's stop button, SIGTERM) stops the run, waits until it has
        recorded its end, and goes on to the caller."""
        if self._thread is not None:
            end = None if timeout is None else time.monotonic() + timeout
            try:
                with stop_on_signals():
                    # Short waits: a signal that the OS handed to another thread (the training thread) is only
                    # acted on when the main thread runs Python again.
                    while not self._finished.is_set() and (end is None or time.monotonic() < end):
                        self._finished.wait(0.1 if end is None else min(0.1, max(0.0, end - time.monotonic())))
            except KeyboardInterrupt as exc:
                self.stop(f"interrupted ({getattr(exc, 'signal_name', 'KeyboardInterrupt')})")
                self._finished.wait(_STOP_WAIT_S)
                raise
        return self.result

    def wait_measured(self, timeout: float | None = None) -> bool:
        """Wait until the pending changes are applied and the current segment has a measured throughput (its
        warm-up and one logged interval are done). False if the run ended or `timeout` passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.running and (end is None or time.monotonic() < end):
            meter = getattr(self.trainer, "meter", None)  # made when the run sets up
            rows = meter.segments if meter is not None else []
            if rows and rows[-1]["throughput"] is not None and not self.controls.has_pending():
                return True
            time.sleep(0.05)
        return False

    # ---- what it is doing ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and not self._finished.is_set()

    @property
    def result(self) -> RunResult | None:
        """The RunResult once the run has ended (completed, stopped or failed), else None."""
        return None if self.running else self._result

    @property
    def status(self) -> str:
        if self._thread is None:
            return "ready"
        if self.running:
            return "paused" if self.controls.paused else "running"
        return self._result.status if self._result else "failed"

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def knobs(self) -> RunConfig:
        """The knobs in force now (pending changes are not in force until the next step boundary)."""
        return self.trainer.knobs

    @property
    def rejected(self) -> list[str]:
        """Changes accepted by `set` but dropped at the step boundary because an earlier change made them invalid."""
        return self.trainer.rejected

    @property
    def run_id(self) -> int | None:
        return self._recorder.run_id if self._recorder else None

    @property
    def segments(self) -> pd.DataFrame:
        """One row per segment: the knob values, first and last step, start and end time, throughput."""
        meter = getattr(self.trainer, "meter", None)
        return pd.DataFrame([dict(row) for row in list(meter.segments if meter is not None else [])])

    @property
    def history(self) -> pd.DataFrame:
        """The logged points so far (step, time, loss, throughput ...)."""
        return pd.DataFrame(list(getattr(self.trainer, "history_rows", [])))

    @property
    def epochs(self) -> pd.DataFrame:
        return pd.DataFrame(list(getattr(self.trainer, "epochs_rows", [])))

    def __repr__(self) -> str:
        return f"LiveRun(status={self.status!r}, step={self.step}, device={self.device_key!r})"
