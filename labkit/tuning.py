"""Automatic tuning with Optuna: every trial is a measured, stored labkit run.

    result = labkit.tune({"lr": (0.01, 1.0), "batch_size": [64, 128, 256]}, epochs=1,
                         objectives=("accuracy", "throughput"), sampler="tpe", trials=20)

Optuna's ask-and-tell drives the search: ask for a configuration, train it as a labkit run (recorded in the store
with its study name and trial number, which `labkit.runs()` shows), tell Optuna the run's figures. A trial that
fails (out of memory, a NaN loss, an impossible combination) is told as failed with its reason; the study goes
on. With one objective, a pruner may stop a trial whose epoch accuracies trail the others' (`pruner="median"`).

The study lives in Optuna's storage: by default the results store's own SQLite file, so one file holds the runs
and the study. `storage="postgresql://..."` lets machines share a study; `storage="journal:PATH"` is Optuna's
journal file, for processes on one machine. `workers=N` trains N trials at a time in N processes
(`python -m labkit.tuning`), each asking the same study; another machine joins with the same storage and study.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
import pandas as pd
from optuna.trial import TrialState

from .config import KNOB, RunConfig
from .devices import cpu_cores
from .store import Store, process_identity

# objective -> (direction, what it is). Each is read from the trial's RunResult by `objective_value`.
OBJECTIVES = {
    "accuracy": ("maximize", "final test accuracy (0..1)"),
    "throughput": ("maximize", "training images/s over the timed steps"),
    "time_to_accuracy": ("minimize", "seconds from the run's start (set-up and evaluation included) to the first "
                                     "epoch end whose test accuracy reached target_accuracy"),
    "peak_memory": ("minimize", "peak memory in MiB (GPU: tensors allocated; CPU: the process's resident set)"),
}
SAMPLERS = ("grid", "random", "tpe", "gp", "nsga2")
PRUNERS = ("auto", "median", "none")
STOPPED = "stopped: the tuning was stopped"
LOG_RATIO = 100  # a numeric range spanning at least this factor is searched on a log scale


@dataclass(frozen=True)
class Dimension:
    """One knob of the search space: a list of choices, or a range (low, high) searched on a log scale when
    `log`. Integer knobs (batch_size, width, ...) draw integers."""
    name: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def suggest(self, trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def to_json(self) -> Any:
        if self.choices:
            return list(self.choices)
        return {"low": self.low, "high": self.high, "log": self.log}


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    """The search space from plain values: knob -> a list of choices, a (low, high) pair, or
    {"low": .., "high": .., "log": bool}. Each value is checked against the knob's allowed values."""
    if not space:
        raise ValueError("tune: the space is empty; give knob -> choices or (low, high), e.g. "
                         "{'lr': (0.01, 1.0), 'batch_size': [64, 128, 256]}.")
    dims = []
    for name, values in space.items():
        if name not in KNOB:
            raise ValueError(f"tune: {name!r} is not a run setting; the space takes RunConfig fields "
                             f"(e.g. lr, batch_size, amp, optimizer). `labkit knobs` lists them.")
        knob = KNOB[name]
        if isinstance(values, dict) or (isinstance(values, tuple) and len(values) == 2
                                        and all(_is_number(v) for v in values)):
            spec = values if isinstance(values, dict) else {"low": values[0], "high": values[1]}
            low, high = spec.get("low"), spec.get("high")
            if not (_is_number(low) and _is_number(high) and low < high):
                raise ValueError(f"tune: {name}={values!r}: a range needs numbers low < high, e.g. (0.01, 1.0).")
            if knob.allowed.parse not in (int, float):
                raise ValueError(f"tune: {name} takes {knob.allowed.text}: give a list of choices, not a range.")
            integer = knob.allowed.parse is int
            log = spec.get("log", low > 0 and high / low >= LOG_RATIO)
            if not isinstance(log, bool):
                raise ValueError(f"tune: {name}: log={log!r}: give true or false.")
            if log and low <= 0:
                raise ValueError(f"tune: {name}={values!r}: a log-scale range needs low > 0.")
            dim = Dimension(name, low=low, high=high, log=bool(log), integer=integer)
            ends = (int(low), int(high)) if integer else (low, high)
        elif isinstance(values, (list, tuple)) and values:
            dim = Dimension(name, choices=tuple(values))
            ends = dim.choices
            if any(not isinstance(v, (str, int, float, bool, type(None))) for v in ends):
                raise ValueError(f"tune: {name}={values!r}: choices must be numbers, strings, booleans or None.")
        else:
            raise ValueError(f"tune: {name}={values!r}: give a non-empty list of choices or a (low, high) range.")
        for v in ends:
            if not knob.allowed.check(v):
                raise ValueError(f"tune: {name}={v!r} is not allowed: use {knob.allowed.text}.")
        dims.append(dim)
    return dims


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def objective_value(name: str, result, target_accuracy: float | None) -> float | None:
    """The figure an objective reads from a run (None: the run did not measure it)."""
    if name == "accuracy":
        return result.accuracy
    if name == "throughput":
        return result.throughput
    if name == "peak_memory":
        return None if result.peak_memory_bytes is None else result.peak_memory_bytes / 2**20
    reached = result.epochs[result.epochs["test_accuracy"] >= target_accuracy] if len(result.epochs) else []
    return float(reached["time_s"].iloc[0]) if len(reached) else math.inf  # never reached: the worst time


def check_objectives(objectives: Iterable[str], target_accuracy: float | None) -> tuple[str, ...]:
    objectives = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if not objectives or unknown or len(set(objectives)) != len(objectives):
        raise ValueError(f"tune: objectives={objectives!r}: use one or more of {list(OBJECTIVES)}, each once.")
    if "time_to_accuracy" in objectives and not (_is_number(target_accuracy) and 0 < target_accuracy <= 1):
        raise ValueError(f"tune: the objective 'time_to_accuracy' needs target_accuracy in (0, 1], "
                         f"got {target_accuracy!r}; e.g. target_accuracy=0.8.")
    return objectives


# ---- Optuna's parts -------------------------------------------------------------------------------------------
def storage_url(storage: str | None, store: Store) -> str:
    """Where the study lives: `storage` as given, or the results store's SQLite file."""
    return storage or f"sqlite:///{Path(store.path).resolve()}"


def open_storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.split(":", 1)[1]))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_sampler(name: str, dims: list[Dimension], seed: int | None, trials: int, workers: int = 1):
    """Optuna's sampler. TPE and GP start from a few random trials (a quarter of the budget, 3 to 10); NSGA-II's
    population is a quarter of the budget (4 to 50), so a small budget still sees several generations. With
    several workers TPE treats the trials in progress as bad ("constant liar"), so workers spread out."""
    startup = min(10, max(3, trials // 4))
    if name == "grid":
        ranges = [d.name for d in dims if not d.choices]
        if ranges:
            raise ValueError(f"tune: sampler='grid' needs a list of choices for every knob; {ranges} are ranges. "
                             "Give lists (e.g. 'lr': [0.03, 0.1, 0.3]) or use sampler='random' or 'tpe'.")
        return _GridSampler({d.name: list(d.choices) for d in dims}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=workers > 1)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 4)))
    raise ValueError(f"tune: sampler={name!r} is not known: use one of {list(SAMPLERS)}.")


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its `study.stop()` once every point is taken: that works inside `optimize` only;
    with ask-and-tell the Tuner stops asking at the grid's size itself (`Tuner.budget`)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_pruner(pruner: Any, objectives: tuple[str, ...], epochs: int):
    """A pruner for one objective, accuracy, fed each epoch's test accuracy (None: no pruning)."""
    if pruner in ("none", None):
        return None
    if pruner == "auto":
        return optuna.pruners.MedianPruner(n_startup_trials=3) if objectives == ("accuracy",) and epochs > 1 else None
    if len(objectives) > 1:
        raise ValueError(f"tune: pruner={pruner!r} with objectives {list(objectives)}: a pruner compares one value "
                         "per epoch, and with several objectives a trial behind on one may still end on the Pareto "
                         "front, so Optuna does not prune multi-objective studies. Use pruner='none' or one objective.")
    if objectives != ("accuracy",):
        raise ValueError(f"tune: pruner={pruner!r} is fed each epoch's test accuracy, so it needs "
                         f"objectives=('accuracy',), not {list(objectives)}; use pruner='none'.")
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    raise ValueError(f"tune: pruner={pruner!r} is not known: use one of {list(PRUNERS)} or an Optuna pruner.")


# ---- the search -----------------------------------------------------------------------------------------------
class Tuner:
    """One study: `run()` asks, trains and tells until `trials` trials (or `timeout` seconds) are done.

    Listeners (callables in `listeners`) hear each finished trial as a dict (a row of `TuneResult.trials`);
    `stop()` ends the trial in progress (told as failed, "stopped") and the study. See `tune` for the arguments."""

    def __init__(self, space: dict[str, Any], config: RunConfig | dict | None = None, *,
                 objectives: Iterable[str] | str = ("accuracy",), sampler: str = "tpe", trials: int = 20,
                 timeout: float | None = None, seed: int | None = 0, target_accuracy: float | None = None,
                 pruner: Any = "auto", store: Store | str | Path | None = None, storage: str | None = None,
                 study: str | None = None, workers: int = 1, progress: bool = True, quiet: bool = False,
                 **overrides: Any):
        self.dims = parse_space(space)
        self.space = {d.name: d.to_json() for d in self.dims}
        self.config = RunConfig.of(config).replace(**overrides).check_values()
        self.objectives = check_objectives(objectives, target_accuracy)
        self.target_accuracy = target_accuracy
        if not (isinstance(trials, int) and trials >= 1):
            raise ValueError(f"tune: trials={trials!r}: give a whole number of trials >= 1.")
        if timeout is not None and not (_is_number(timeout) and timeout > 0):
            raise ValueError(f"tune: timeout={timeout!r}: give seconds > 0, or None for no limit.")
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"tune: workers={workers!r}: give a whole number of processes >= 1.")
        self.sampler_name, self.seed, self.trials, self.timeout, self.workers = sampler, seed, trials, timeout, workers
        self.sampler = make_sampler(sampler, self.dims, seed, trials, workers)
        if workers > 1 and not (pruner is None or isinstance(pruner, str)):
            raise ValueError(f"tune: pruner={pruner!r} with workers={workers}: the worker processes rebuild the "
                             f"pruner by name; use one of {list(PRUNERS)}.")
        self.pruner_name = pruner if isinstance(pruner, str) or pruner is None else type(pruner).__name__
        self.pruner = make_pruner(pruner, self.objectives, self.config.epochs)
        self.store = Store.of(store)
        self.storage_url = storage_url(storage, self.store)
        self.study_name = study or f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        self.progress, self.quiet = progress, quiet
        self.listeners: list[Callable[[dict], None]] = []
        self._stop = threading.Event()
        self._controls = None  # the trial in progress's, for stop()
        self._study, self._opening = None, threading.Lock()
        self.planned: int | None = None  # trials run() will run (the grid caps them)

    @classmethod
    def joining(cls, study: str, storage: str | None = None, **options: Any) -> "Tuner":
        """One more worker for an existing labkit study: its space, fixed settings, objectives, sampler and pruner
        come from the study itself (another machine needs only the storage URL and the study name; None: the
        store's own file)."""
        storage = storage_url(storage, Store.of(options.get("store")))
        try:
            meta = optuna.load_study(study_name=study, storage=open_storage(storage)).user_attrs["labkit"]
        except (KeyError, ValueError):
            raise ValueError(f"no labkit study {study!r} in {storage}: start it with a space first "
                             "(labkit tune --space ... --storage ... --study ...)") from None
        trials = options.pop("trials", None)
        tuner = cls(meta["space"], meta["config"], objectives=meta["objectives"], sampler=meta["sampler"],
                    trials=meta.get("trials", 20), target_accuracy=meta.get("target_accuracy"),
                    pruner=meta.get("pruner", "auto"), storage=storage, study=study, **options)
        if trials is not None:  # this worker's own count; the sampler keeps the study's sizes
            tuner.trials = trials
        return tuner

    @property
    def study(self):
        """The optuna.Study, created (or loaded) in the storage on first use."""
        with self._opening:  # once, whichever thread asks first (the tuning thread, a panel reading it)
            if self._study is None:
                self._study = self._open_study()
        return self._study

    def _open_study(self):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = [OBJECTIVES[o][0] for o in self.objectives]
        try:
            self.storage = open_storage(self.storage_url)
            study = optuna.create_study(storage=self.storage, study_name=self.study_name,
                                        directions=directions, sampler=self.sampler, pruner=self.pruner,
                                        load_if_exists=True)
        except ValueError as exc:
            raise ValueError(f"tune: the study {self.study_name!r} in {self.storage_url} cannot be opened with "
                             f"objectives {list(self.objectives)}: {exc}. Give another study name.") from None
        if [d.name.lower() for d in study.directions] != directions:
            raise ValueError(f"tune: the study {self.study_name!r} exists with directions "
                             f"{[d.name.lower() for d in study.directions]}, not {directions} "
                             f"(objectives {list(self.objectives)}); give another study name.")
        meta = {"space": self.space, "config": self.config.changed(), "objectives": list(self.objectives),
                "target_accuracy": self.target_accuracy, "sampler": self.sampler_name, "pruner": self.pruner_name,
                "trials": self.trials}
        known = study.user_attrs.get("labkit")
        same = ("space", "config", "objectives", "target_accuracy")
        if known is None:  # what a joining worker needs to run the same search
            study.set_user_attr("labkit", meta)
        elif [known.get(k) for k in same] != json.loads(json.dumps([meta[k] for k in same])):
            raise ValueError(f"tune: the study {self.study_name!r} searched another space, fixed settings or "
                             f"objectives ({ {k: known.get(k) for k in same} }); continue it with the same ones, or "
                             "give another study name.")
        earlier = len(study.get_trials(deepcopy=False))
        if earlier and self.seed is not None and self.sampler_name != "grid":  # a continued study: new draws
            study.sampler = make_sampler(self.sampler_name, self.dims, self.seed + earlier, self.trials, self.workers)
        fail_dead_trials(study, self.storage)
        return study

    def budget(self) -> int:
        """Trials this call runs: `trials`, and with the grid no more than its points not yet in the study."""
        if self.sampler_name != "grid":
            return self.trials
        points = math.prod(len(d.choices) for d in self.dims)
        return max(0, min(self.trials, points - len(self.study.get_trials(deepcopy=False))))

    def stop(self) -> None:
        """Stop the trial in progress (told as failed, "stopped") and ask for no more."""
        self._stop.set()
        controls = self._controls  # the tuning thread may clear it meanwhile
        if controls is not None:
            controls.stop(STOPPED)

    def run(self) -> "TuneResult":
        """Run the trials; returns the study's result (status "stopped" if `stop()` ended it early)."""
        if self.workers > 1:
            return self._run_workers()
        from tqdm.auto import tqdm

        budget = self.planned = self.budget()
        bar = tqdm(total=budget, unit="trial", desc=self.study_name, disable=not self.progress)
        started, done = time.monotonic(), 0
        try:
            while done < budget and not self._stop.is_set():
                if self.timeout is not None and time.monotonic() - started > self.timeout:
                    break
                row = self.run_trial()
                done += 1
                bar.update(1)
                bar.set_postfix_str(self._best_text(), refresh=False)
                if not self.quiet:
                    bar.write(trial_line(row, self.objectives))
        finally:
            bar.close()
        return TuneResult.load(self.study_name, self.storage_url, status="stopped" if self._stop.is_set() else
                               "completed", study=self.study)

    def run_trial(self) -> dict[str, Any]:
        """Ask for one configuration, train it, tell the figures; returns the trial's row."""
        from .dist.launch import trainer_for
        from .signals import stop_on_signals
        from .train import Controls

        trial = self.study.ask()
        pid = os.getpid()
        for key, value in (("host", socket.gethostname()), ("pid", pid), ("process", process_identity(pid))):
            trial.set_user_attr(key, value)
        params = {d.name: d.suggest(trial) for d in self.dims}
        try:
            config = self.config.replace(**params).validate()
        except ValueError as exc:  # an impossible combination: failed, with the reason, and the study goes on
            return self._tell(trial, TrialState.FAIL, error=str(exc))
        self._controls = controls = Controls()
        if self._stop.is_set():  # stop() came between ask() and here
            controls.stop(STOPPED)
        pruning = _PruningListener(trial, controls, config.epochs) if self.pruner is not None else None
        recorder = self.store.recorder(tags={"study": self.study_name, "trial": trial.number})
        listeners = [recorder] + ([pruning] if pruning else [])
        try:
            with stop_on_signals():
                result = trainer_for(config, listeners=listeners, controls=controls).run()
        except KeyboardInterrupt as exc:  # the run is recorded as stopped; the trial too, then the interrupt goes on
            self._tell(trial, TrialState.FAIL, error=f"interrupted ({getattr(exc, 'signal_name', 'Ctrl-C')})",
                       run_id=recorder.run_id)
            raise
        except Exception as exc:  # noqa: BLE001 - the run is recorded as failed; the study goes on
            return self._tell(trial, TrialState.FAIL, error=f"{type(exc).__name__}: {exc}", run_id=recorder.run_id)
        finally:
            self._controls = None
        if pruning is not None and pruning.pruned:
            return self._tell(trial, TrialState.PRUNED, error=controls.stop_reason, run_id=result.run_id)
        if result.status != "completed":
            return self._tell(trial, TrialState.FAIL, error=result.error or result.status, run_id=result.run_id)
        values = [objective_value(o, result, self.target_accuracy) for o in self.objectives]
        missing = [o for o, v in zip(self.objectives, values) if v is None or math.isnan(v)]
        if missing:
            return self._tell(trial, TrialState.FAIL, run_id=result.run_id,
                              error=f"the run measured no {', '.join(missing)} (throughput needs more steps than "
                                    "timing_warmup; accuracy needs an epoch end)")
        return self._tell(trial, TrialState.COMPLETE, values=values, run_id=result.run_id)

    def _tell(self, trial, state, values=None, error: str | None = None, run_id: int | None = None) -> dict:
        if run_id is not None:
            trial.set_user_attr("run_id", run_id)
        if error:
            trial.set_user_attr("error", error)
        row = trial_row(self.study.tell(trial, values=values, state=None if values else state), self.objectives)
        for listener in self.listeners:
            try:
                listener(row)
            except Exception as exc:  # noqa: BLE001 - a broken listener (a panel) must not end the study
                print(f"labkit.tune: a listener failed on trial {row['trial']}: {exc!r}", file=sys.stderr)
        return row

    def _best_text(self) -> str:
        try:
            best = self.study.best_trials
        except ValueError:
            return ""
        if len(self.objectives) > 1:
            return f"{len(best)} on the Pareto front"
        return f"best {self.objectives[0]} {_fmt(self.objectives[0], best[0].values[0]) if best else '-'}"

    def _finished_since(self, first: int) -> int:
        return sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False)[first:])

    # ---- several processes ----------------------------------------------------------------------------------
    def _run_workers(self) -> "TuneResult":
        """N processes ask the same study until it holds this call's trials; a worker that dies has its trial
        marked failed, the others go on."""
        from tqdm.auto import tqdm

        budget = self.planned = self.budget()
        until = len(self.study.get_trials(deepcopy=False)) + budget
        command = [sys.executable, "-m", "labkit.tuning", "--storage", self.storage_url, "--study", self.study_name,
                   "--until", str(until), "--store", str(self.store.path), "--parent", str(os.getpid())]
        if self.timeout is not None:
            command += ["--timeout", str(self.timeout)]
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:  # the workers share the cores (threads waiting on each other are slow)
            env["OMP_NUM_THREADS"] = str(max(1, cpu_cores() // self.workers))
        workers = max(1, min(self.workers, budget))  # more would only ask for trials past the budget
        logs = [tempfile.TemporaryFile("w+") for _ in range(workers)]  # a pipe left unread could block
        procs = [subprocess.Popen(command + ([] if self.seed is None else ["--seed", str(self.seed + i)]),
                                  stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
                 for i, log in enumerate(logs)]  # each worker its own random stream, reproducibly
        bar = tqdm(total=budget, unit="trial", desc=f"{self.study_name} ({workers} workers)",
                   disable=not self.progress)
        first, seen, errors = until - budget, set(), []
        try:
            while True:
                alive = [p for p in procs if p.poll() is None]
                for p, log in zip(procs, logs):
                    if p.returncode not in (None, 0) and p.pid not in seen:
                        seen.add(p.pid)
                        log.seek(0)
                        errors.append(f"worker pid {p.pid} exited with {p.returncode}: {log.read().strip()[-600:]}")
                fail_dead_trials(self.study, self.storage)
                bar.update(self._finished_since(first) - bar.n)
                if not alive or self._stop.is_set():
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            self._stop.set()
            raise
        finally:
            for p in procs:  # stopped: each worker records its run as stopped and its trial as failed
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            fail_dead_trials(self.study, self.storage)
            bar.close()
            for log in logs:
                log.close()
        for error in errors:
            if not self.quiet:
                print(error, file=sys.stderr)
        status = "stopped" if self._stop.is_set() else "failed" if errors and not self._finished_since(first) else \
            "completed"
        return TuneResult.load(self.study_name, self.storage_url, status=status, study=self.study, errors=errors)


class _PruningListener:
    """Reports each epoch's test accuracy to the trial; stops the run when Optuna's pruner says so."""

    def __init__(self, trial, controls, epochs: int):
        self.trial, self.controls, self.epochs, self.pruned = trial, controls, epochs, False

    def __call__(self, event) -> None:
        if event.kind != "epoch_ended" or self.pruned:
            return
        self.trial.report(event.test_accuracy, event.epoch)
        if event.epoch < self.epochs and self.trial.should_prune():  # after the last epoch nothing is saved
            self.pruned = True
            self.controls.stop(f"pruned after epoch {event.epoch}: test accuracy {event.test_accuracy:.1%} "
                               "trails the median of earlier trials at that epoch")


def fail_dead_trials(study, storage) -> list[int]:
    """Mark failed the running trials of this host whose process is gone (a worker killed or crashed); returns
    their numbers. Their labkit runs are marked "interrupted" by the store the same way. A trial of a worker that
    died on another machine stays "running" until a labkit tune on that machine opens the study."""

    from .store import _process_alive

    host, dead = socket.gethostname(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if attrs.get("host") == host and attrs.get("pid") and not _process_alive(attrs["pid"], attrs.get("process")):
            error = (f"its worker (pid {attrs['pid']} on {host}) ended without finishing the trial (killed or "
                     "crashed); what its run recorded is kept")
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                storage.set_trial_user_attr(trial_id, "error", error)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # another process on this host failed it first
                continue
            dead.append(t.number)
    return dead


# ---- what a study found -------------------------------------------------------------------------------------
def trial_row(trial, objectives: tuple[str, ...]) -> dict[str, Any]:
    """One trial as plain values: number, state, the knobs it tried, the objectives, run id, error, seconds."""
    values = trial.values or [None] * len(objectives)
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    return {"trial": trial.number, "state": trial.state.name.lower(), **trial.params,
            **dict(zip(objectives, values)), "run_id": trial.user_attrs.get("run_id"),
            "error": trial.user_attrs.get("error"), "seconds": seconds}


TRIAL_FIELDS = ("trial", "state", "run_id", "error", "seconds")  # a trial row's columns besides knobs and objectives


def trial_knobs(row: dict[str, Any], objectives: tuple[str, ...]) -> dict[str, Any]:
    """The knobs a trial row tried (what is neither its bookkeeping nor an objective)."""
    return {k: v for k, v in row.items() if k not in (*TRIAL_FIELDS, *objectives)}


def trial_line(row: dict[str, Any], objectives: tuple[str, ...]) -> str:
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial_knobs(row, objectives).items())
    if row["state"] != "complete":
        return f"trial {row['trial']} {row['state']} ({params}): {row['error']}"
    return f"trial {row['trial']} ({params}): " + ", ".join(f"{o} {_fmt(o, row[o])}" for o in objectives)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _fmt(objective: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if objective == "accuracy":
        return f"{value:.1%}"
    if objective == "throughput":
        return f"{value:,.0f} img/s"
    if objective == "peak_memory":
        return f"{value:,.0f} MiB"
    return "not reached" if math.isinf(value) else f"{value:.1f} s"


@dataclass
class TuneResult:
    """A study's trials and what they found. `trials`: one row per trial (the knobs it tried, the objectives,
    its state, run id and error); `best`: the best trial's row with one objective, the Pareto set with several."""
    study_name: str
    storage: str
    objectives: tuple[str, ...]
    space: dict[str, Any]
    base: dict[str, Any]  # the fixed settings (changed from the defaults)
    trials: pd.DataFrame
    status: str = "completed"
    sampler: str = ""
    target_accuracy: float | None = None
    study: Any = field(default=None, repr=False)  # the optuna.Study
    errors: list[str] = field(default_factory=list)  # worker processes that failed, with their output's end

    @classmethod
    def load(cls, study_name: str, storage: str | None = None, *, store: Store | str | Path | None = None,
             status: str = "completed", study=None, errors: list[str] | None = None) -> "TuneResult":
        """A study as stored (`storage`, or the store's file): what `tune` returned, in a later session too."""
        url = storage_url(storage, Store.of(store)) if storage is None else storage
        if study is None:
            try:
                study = optuna.load_study(study_name=study_name, storage=open_storage(url))
            except KeyError:
                raise ValueError(f"no study {study_name!r} in {url}; `optuna studies --storage {url}` lists them") \
                    from None
        meta = study.user_attrs.get("labkit", {})
        objectives = tuple(meta.get("objectives", ("accuracy",)))
        rows = [trial_row(t, objectives) for t in study.get_trials(deepcopy=False)]
        trials = cls.empty_trials(meta.get("space", {}), objectives)
        trials = pd.DataFrame(rows, columns=trials.columns) if rows else trials
        return cls(study_name, url, objectives, meta.get("space", {}), meta.get("config", {}), trials, status,
                   meta.get("sampler", ""), meta.get("target_accuracy"), study, list(errors or []))

    @staticmethod
    def empty_trials(space: Iterable[str], objectives: Iterable[str]) -> pd.DataFrame:
        return pd.DataFrame(columns=[*TRIAL_FIELDS[:2], *space, *objectives, *TRIAL_FIELDS[2:]])

    @property
    def completed(self) -> pd.DataFrame:
        return self.trials[self.trials["state"] == "complete"]

    @property
    def best(self) -> pd.DataFrame:
        """The best trial (one objective) or the Pareto set (several), best first by the first objective."""
        done = self.completed
        if done.empty:
            return done
        if len(self.objectives) == 1:
            o = self.objectives[0]
            ascending = OBJECTIVES[o][0] == "minimize"
            return done.sort_values(o, ascending=ascending).head(1)
        numbers = {t.number for t in self.study.best_trials}
        first = self.objectives[0]
        return done[done["trial"].isin(numbers)].sort_values(first, ascending=OBJECTIVES[first][0] == "minimize")

    def config(self, trial: int | None = None) -> RunConfig:
        """The RunConfig a trial trained (default: the best one's; with several objectives, name a trial)."""
        if trial is None:
            if self.best.empty:
                raise ValueError(f"study {self.study_name!r} has no completed trial yet")
            if len(self.objectives) > 1:
                raise ValueError(f"{len(self.best)} trials are on the Pareto front ({list(self.best['trial'])}): "
                                 "pick one, e.g. result.config(trial=...)")
            trial = int(self.best["trial"].iloc[0])
        found = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial]
        if not found:
            raise ValueError(f"study {self.study_name!r} has no trial {trial}; it has 0..{len(self.trials) - 1}")
        return RunConfig.from_dict(self.base).replace(**found[0].params)  # Optuna's own values: ints stay ints

    def importances(self, objective: str | None = None) -> dict[str, float]:
        """How much each knob explains the objective's variation over the completed trials (Optuna's fANOVA: a
        random forest fitted to the trials, its variance split by knob); empty with fewer than two completed
        trials or one knob. Few trials give rough shares."""
        index = self.objectives.index(objective or self.objectives[0])
        finite = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if math.isfinite(t.values[index])]
        if len(finite) < 2 or len(self.space) < 2:
            return {}
        try:
            return {k: float(v) for k, v in optuna.importance.get_param_importances(
                self.study, target=lambda t: t.values[index],
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)).items()}
        except (RuntimeError, ValueError, ZeroDivisionError):  # every trial alike: nothing to explain
            return {}

    def pareto_figure(self):
        from .lab.plots import tune_pareto_figure

        return tune_pareto_figure(self.trials, self.objectives, set(self.best["trial"]))

    def history_figure(self):
        from .lab.plots import tune_history_figure

        return tune_history_figure(self.trials, self.objectives)

    def importance_figure(self, objective: str | None = None):
        from .lab.plots import importance_figure

        objective = objective or self.objectives[0]
        return importance_figure(self.importances(objective), objective)

    def summary(self) -> str:
        counts = self.trials["state"].value_counts().to_dict()
        lines = [f"study {self.study_name} ({self.sampler or 'sampler ?'}, {self.status}): {len(self.trials)} trials "
                 + ", ".join(f"{n} {s}" for s, n in counts.items()),
                 "objectives: " + ", ".join(f"{o} ({OBJECTIVES[o][0]})" for o in self.objectives),
                 f"stored in {self.storage} (labkit.TuneResult.load({self.study_name!r}, {self.storage!r}))"]
        lines += [f"worker failed: {e}" for e in self.errors]
        for row in self.best.to_dict("records"):
            lines.append(("best: " if len(self.objectives) == 1 else "Pareto: ") + trial_line(row, self.objectives))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"TuneResult(study={self.study_name!r}, trials={len(self.trials)}, best={len(self.best)})"


def tune(space: dict[str, Any], config: RunConfig | dict | None = None, **options: Any) -> TuneResult:
    """Search `space` (knob -> list of choices, or (low, high)) around `config` with Optuna; every trial is a
    labkit run, recorded in the store with its study and trial number. Returns a TuneResult.

    objectives: one or more of "accuracy" (max), "throughput" (max), "time_to_accuracy" (min; needs
        target_accuracy) and "peak_memory" (min).
    sampler: "grid" (every point once, lists only), "random", "tpe" (Bayesian, the default), "gp" (Gaussian
        process), "nsga2" (evolutionary, for several objectives).
    trials, timeout (seconds; the trial in progress finishes), seed (the sampler's), pruner ("auto": median
        pruning when the one objective is accuracy over several epochs; "median"; "none"; an Optuna pruner).
    store / storage / study: the results store, Optuna's storage URL (default: the store's SQLite file), the study
        name (an existing one is continued). workers: processes training trials at once.
    Other keywords are fixed settings for every trial (the per-trial budget: epochs=1, max_steps=200, ...); the
    runs' own seed is one of them (`config={"seed": 3}`), since `seed` here is the sampler's.
    Ctrl-C stops the trial in progress, records it (run "stopped", trial failed), and the interrupt goes on:
    `TuneResult.load(study_name)` reads what the study holds."""
    return Tuner(space, config, **options).run()


# ---- comparing samplers on measured points ---------------------------------------------------------------------
def hypervolume(frame: pd.DataFrame, objectives: tuple[str, str], reference: dict[str, float]) -> float:
    """The area two objectives' Pareto front dominates, bounded by `reference` (the worst values counted):
    one number for how good a whole front is; more is better whatever the directions."""
    signs = [1 if OBJECTIVES[o][0] == "maximize" else -1 for o in objectives]
    points = sorted(((signs[0] * (r[objectives[0]] - reference[objectives[0]]),
                      signs[1] * (r[objectives[1]] - reference[objectives[1]]))
                     for r in frame.to_dict("records")), reverse=True)
    area, best_y = 0.0, 0.0
    for x, y in points:  # sweep from the best first objective: each point adds the strip above the best so far
        if x > 0 and y > best_y:
            area += x * (y - best_y)
            best_y = y
    return area


def replay(table: pd.DataFrame, space: Iterable[str], objectives: Iterable[str], sampler: str, trials: int,
           seed: int | None = 0) -> pd.DataFrame:
    """Let a sampler search a table of measured points (one row per configuration, its objectives measured once)
    instead of training: which points it would have tried, in order. Many seeds of several samplers then compare
    at no training cost, on the very figures this machine measured (`benchmarks/tuning.py`, lesson 13)."""
    space, objectives = list(space), tuple(objectives)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = {tuple(r[k] for k in space): r for r in table.to_dict("records")}
    dims = [Dimension(k, choices=tuple(sorted(table[k].unique().tolist()))) for k in space]
    study = optuna.create_study(directions=[OBJECTIVES[o][0] for o in objectives],
                                sampler=make_sampler(sampler, dims, seed, trials))
    out = []
    for number in range(min(trials, len(rows)) if sampler == "grid" else trials):
        trial = study.ask()
        point = tuple(d.suggest(trial) for d in dims)
        if point not in rows:  # a grid point whose trial failed has no figures
            raise ValueError(f"replay: the table has no row for {dict(zip(space, point))}; give it every combination "
                             "of the values it holds (each measured), or drop the values of failed points.")
        row = rows[point]
        study.tell(trial, [row[o] for o in objectives])
        out.append({"trial": number, **{k: row[k] for k in space}, **{o: row[o] for o in objectives}})
    return pd.DataFrame(out)


def trials_to_reach(trials: pd.DataFrame, objectives: tuple[str, str], reference: dict[str, float],
                    target: float) -> int | None:
    """How many trials (in order) it took for the front's hypervolume to reach `target` (None: never)."""
    for n in range(1, len(trials) + 1):
        if hypervolume(trials.iloc[:n], objectives, reference) >= target:
            return n
    return None


# ---- a worker process: python -m labkit.tuning --storage URL --study NAME --until N ---------------------------
def worker_main(argv: list[str] | None = None) -> int:
    """Join a study as one more worker: its space, fixed settings and objectives come from the study itself."""
    import argparse

    from .signals import exit_code

    parser = argparse.ArgumentParser(prog="python -m labkit.tuning", description=worker_main.__doc__)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--until", type=int, default=None, help="stop once the study holds this many trials")
    parser.add_argument("--trials", type=int, default=None, help="run at most this many trials")
    parser.add_argument("--store", default=None, help="the results store (default: $LABKIT_DB or data/labkit.db)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--parent", type=int, default=None, help="stop when this process (the launcher) is gone")
    args = parser.parse_args(argv)
    try:
        tuner = Tuner.joining(args.study, args.storage, seed=args.seed, store=args.store, progress=False,
                              quiet=True)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    started, done = time.monotonic(), 0
    try:
        while args.trials is None or done < args.trials:
            if args.until is not None and len(tuner.study.get_trials(deepcopy=False)) >= args.until:
                break
            if args.timeout is not None and time.monotonic() - started > args.timeout:
                break
            if args.parent is not None and os.getppid() != args.parent:  # the launcher died: no one is waiting
                break
            tuner.run_trial()
            done += 1
    except KeyboardInterrupt as exc:
        return exit_code(exc)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
