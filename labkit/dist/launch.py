"""Start a distributed run with torchrun and stand in for its Trainer in the calling process.

`Launcher(config, listeners, controls).run()` is what `labkit.run(config)` and `LiveRun` use when
`config.nproc > 1`. It starts `python -m torch.distributed.run --standalone --nproc-per-node N -m
labkit.dist.worker` in a new process session (a free rendezvous port is picked by torchrun, never a fixed one),
and opens a local channel that rank 0 streams its events to and takes requests from. To the listeners (charts,
panel, progress bar) the run looks like any other; a Recorder among them records in rank 0 instead, so the
run is stored once, by the process that trains.

Faults: each rank reports how it ended. The run's error is the first failure reported (a rank whose peers died
reports only that they went away); a rank killed without a word is named from torchrun's exit codes. The
store's record is corrected to "failed" with that reason. Whatever happens, the process group is ended: a
stop that does not end the run within STOP_GRACE_S is followed by SIGTERM, then SIGKILL, to every process.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable

from .. import devices
from ..config import RunConfig
from ..events import Listener, RunEnded, RunStarted, from_message
from ..result import RunResult
from ..store import Recorder
from ..techniques.distributed import unsplittable
from ..train import Controls, check_change

STOP_GRACE_S = 20.0  # after a stop (or the run's end), how long the processes get to finish before SIGTERM
KILL_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
START_TIMEOUT_S = 300.0  # from launch to rank 0's first word (imports, data, process group)


def torchrun_args(nproc: int, nnodes: int = 1, node_rank: int = 0, endpoint: str | None = None) -> list[str]:
    """torchrun's arguments: standalone on one machine (a free port); across machines, the static rendezvous
    at machine 0's `endpoint`, which keeps each machine's rank (global rank 0, the one that records, is on
    machine 0; c10d's rendezvous would ignore --node-rank)."""
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        args.append("--standalone")
    else:
        host, port = endpoint.rsplit(":", 1)
        args += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}"]
    return args + ["-m", "labkit.dist.worker"]


def launch_commands(config: RunConfig, nnodes: int, endpoint: str | None, store: str | None = None) -> list[str]:
    """The shell command to run on each machine (`labkit run --nproc N --nnodes M --print-launch`): machine 0
    hosts the rendezvous at `endpoint` (host:port, reachable from the others) and its rank 0 records to
    `store`. Every machine needs labkit, the same Python environment and the data; the run is not watched
    from a kernel (rank 0 shows a progress bar)."""
    if nnodes > 1 and not (endpoint and ":" in endpoint and endpoint.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"nnodes={nnodes}: give --rdzv-endpoint HOST:PORT, an address of machine 0 that the "
                         f"others can reach and a free port (e.g. host0:29500), not {endpoint!r}.")
    world = config.nproc * nnodes
    split = unsplittable(config.batch_size, world, f"{nnodes} machines x nproc={config.nproc} = {world} processes")
    if split:
        raise ValueError(split)
    env = {"LABKIT_RUN_CONFIG": json.dumps(config.changed()), "LABKIT_RUN_STORE": str(store or "")}
    note = ""
    if config.device == "cpu":  # the machines are not this one: nothing here is resolved (a GPU may be absent)
        env["OMP_NUM_THREADS"] = _threads_per_process(config.nproc)
        note = f" (OMP_NUM_THREADS: this machine's {devices.cpu_cores()} cores / nproc; set each machine's)"
    lines = []
    for node in range(nnodes):
        words = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
        words += ["python" if a == sys.executable else shlex.quote(a)
                  for a in torchrun_args(config.nproc, nnodes, node, endpoint)]
        lines.append(f"# machine {node} of {nnodes}{note}\n" + " ".join(words))
    return lines


def trainer_for(config: RunConfig, listeners: Iterable[Listener] = (), controls: Controls | None = None):
    """What runs a configuration: a Trainer in this process, or a Launcher for nproc > 1."""
    from ..train import Trainer

    return (Launcher if config.nproc > 1 else Trainer)(config, listeners=listeners, controls=controls)


class Launcher:
    """A distributed run, seen from the calling process: the parts of a Trainer that LiveRun, the panel and
    `labkit.run` use (run, check_change, knobs, step, meter.segments, history_rows, epochs_rows, rejected),
    fed by rank 0's events."""

    def __init__(self, config: RunConfig, listeners: Iterable[Listener] = (), controls: Controls | None = None):
        self.config = config.validate()
        self.device = devices.resolve_device(config.device)
        if self.device.type == "mps":
            raise ValueError(f"nproc={config.nproc} on an Apple GPU (device={config.device!r} resolves to mps): "
                             "PyTorch has no distributed backend for MPS; use device='cpu' or nproc=1.")
        self.controls = controls if controls is not None else Controls()
        listeners = list(listeners)
        self.recorders = [x for x in listeners if isinstance(x, Recorder)][:1]  # recorded by rank 0
        self.listeners = [x for x in listeners if not isinstance(x, Recorder)]
        self.knobs = config.replace(amp=devices.resolve_amp(config.amp, self.device))
        self.rejected, self.history_rows, self.epochs_rows = [], [], []
        self.meter = _Segments()
        self.run_id: int | None = None
        self.started = False  # rank 0's RunStarted has come (the listeners have heard it)
        self.log_path: str | None = None
        self.ended: dict[int, dict] = {}  # rank -> how it ended (status, error, time)
        self.not_started: str | None = None  # why the launcher gave up before rank 0 spoke
        self._result: RunResult | None = None

    @property
    def step(self) -> int:
        """The step of rank 0's last logged point."""
        return self.history_rows[-1]["step"] if self.history_rows else 0

    def check_change(self, changes: dict[str, Any]) -> RunConfig:
        return check_change(self.knobs, changes, self.device)

    # ---- the run ---------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        server = socket.create_server(("127.0.0.1", 0))
        token = secrets.token_hex(16)
        log = tempfile.NamedTemporaryFile("w+b", prefix="labkit-ddp-", suffix=".log", delete=False)
        self.log_path, self.t0 = log.name, time.monotonic()
        self.process = process = subprocess.Popen(
            torchrun_args(self.config.nproc), env=self._environment(server, token), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)  # its own process group: ended as one
        self._selector = selectors.DefaultSelector()
        server.setblocking(False)
        self._selector.register(server, selectors.EVENT_READ)
        self._rank0, self._token = None, token
        self._sent = {"pause": False, "stop": False, "changes": False}  # what rank 0 has been told
        interrupt = None
        try:
            self._pump(process, server)
        except KeyboardInterrupt as exc:  # Ctrl-C or a signal in the caller: stop the ranks, record, go on
            interrupt = exc
            self.controls.stop(f"interrupted ({getattr(exc, 'signal_name', 'KeyboardInterrupt')})")
            self._pump(process, server, deadline=time.monotonic() + STOP_GRACE_S)
        finally:
            _end_group(process)
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()
            self._selector.close()
            log.close()
        result = self._conclude(process.returncode)
        if interrupt is not None:
            raise interrupt
        return result

    def _environment(self, server: socket.socket, token: str) -> dict[str, str]:
        store = next((r.store.path for r in self.recorders), "")
        tags = next((r.tags for r in self.recorders), {})
        env = {**os.environ, "LABKIT_RUN_CONFIG": json.dumps(self.config.to_dict()),
               "LABKIT_RUN_STORE": str(store), "LABKIT_RUN_TAGS": json.dumps(tags),
               "LABKIT_CHANNEL": "127.0.0.1:%d" % server.getsockname()[1],
               "LABKIT_CHANNEL_TOKEN": token, "LABKIT_LAUNCHED_AT": repr(time.time()), "PYTHONUNBUFFERED": "1"}
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # one set by the user is kept
            env["OMP_NUM_THREADS"] = _threads_per_process(self.config.nproc)
        return env

    def _pump(self, process: subprocess.Popen, server: socket.socket, deadline: float | None = None) -> None:
        """Relay events and requests until every rank has reported and the processes have ended (or a
        deadline passed: _end_group then ends them); the calling thread's listeners run here."""
        selector, sent, ended_at = self._selector, self._sent, None
        self._last_heard = time.monotonic()
        while True:
            self._forward(sent)
            for key, _ in selector.select(timeout=0.05):
                if key.fileobj is server:
                    connection, _ = server.accept()
                    connection.setblocking(True)
                    selector.register(connection, selectors.EVENT_READ, data=_Reader(connection))
                elif not self._read(key):
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
            now = time.monotonic()
            finished = process.poll() is not None
            if finished and len(selector.get_map()) <= 1:  # every rank's channel is closed too
                return
            if self._result is not None or sent["stop"] or finished:
                ended_at = ended_at or now  # ending: they get STOP_GRACE_S from then and from their last word
                if now - max(ended_at, self._last_heard) > STOP_GRACE_S:
                    return
            if self._rank0 is None and (self.controls.stop_requested or now - self.t0 > START_TIMEOUT_S):
                self.not_started = "stopped before it started" if self.controls.stop_requested else (
                    f"the processes did not start within {START_TIMEOUT_S:.0f} s")
                return
            if deadline is not None and now > deadline:
                return

    def _forward(self, sent: dict) -> None:
        """The Controls' requests (from LiveRun, the panel) to rank 0."""
        if self._rank0 is None:
            return
        if self.controls.stop_requested and not sent["stop"]:
            self._send({"stop": self.controls.stop_reason})
            sent["stop"] = True
        if self.controls.paused != sent["pause"]:
            self._send({"pause": self.controls.paused})
            sent["pause"] = self.controls.paused
        if not sent["changes"]:  # one request in flight at a time, as a Trainer takes them
            changes = self.controls.take()
            if changes:
                self._send({"set": changes})
                sent["changes"] = True  # until rank 0 says it has applied (or dropped) them

    def _send(self, message: dict) -> None:
        try:
            self._rank0.sendall((json.dumps(message) + "\n").encode())
        except OSError:
            pass  # rank 0 is gone; its end (or its absence) is reported by _conclude

    def _read(self, key) -> bool:
        reader: _Reader = key.data
        lines = reader.read()
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:  # a rank cut off mid-line
                return False
            self._last_heard = time.monotonic()
            if "hello" in message:
                if message["hello"] != self._token:
                    return False
                reader.rank = message["rank"]
                if reader.rank == 0:
                    self._rank0 = key.fileobj
            elif reader.rank is None:
                return False  # never said the token: not one of ours
            elif "applied" in message:
                self._sent["changes"] = False
                self.controls.applied()
            elif "ended" in message:
                self.ended[message["ended"]["rank"]] = message["ended"]
            elif "event" in message:
                self._on_event(message)
        return not reader.closed

    def _on_event(self, message: dict) -> None:
        event = from_message(message["event"])
        if "segment" in message:
            self.meter.update(message["segment"])
        kind = event.kind
        if kind == "run_started":
            self.started = True
            self.run_id = message.get("run_id")
            for recorder in self.recorders:
                recorder.run_id = self.run_id
        elif kind == "logged":
            self.history_rows.append({k: v for k, v in vars(event).items() if k != "kind"})
        elif kind == "segment_started":
            self.knobs = self.knobs.replace(**event.knobs)
        elif kind == "change_dropped":
            self.rejected.append(event.reason)
        elif kind == "epoch_ended":
            self.epochs_rows.append({k: v for k, v in vars(event).items() if k != "kind"})
        elif kind == "run_ended":
            event.result.run_id = self.run_id
            self._result = event.result
            return  # emitted by _conclude, once the other ranks have told how they ended
        self._emit(event)

    # ---- the end -------------------------------------------------------------------------------------------
    def _conclude(self, returncode: int | None) -> RunResult:
        """The run's result: rank 0's, unless a rank failed first; the store is corrected to say so."""
        cause = self._first_failure(returncode)
        result = self._result
        # Rank 0 never started (or never recorded) the run: the recorders here record it, first, so the others
        # hear of it with its run id.
        hearing = self.listeners if self.started else [*self.recorders, *self.listeners]
        if result is None:
            result = RunResult(status="failed" if cause or not self.controls.stop_requested else "stopped",
                               config=self.config, device=str(self.device), error=cause or self.controls.stop_reason,
                               time_s=time.monotonic() - self.t0, steps=self.step, run_id=self.run_id)
            if not self.started:
                self._emit(RunStarted(self.config.to_dict(), {"device": str(self.device)}, 0), hearing)
        elif cause and (result.status != "failed" or result.error != cause):
            result.status, result.error = "failed", cause
        if self.started and self.recorders:
            self.recorders[0].store.correct_end(self.run_id, result.status, result.error)
        if result.status != "failed" and self.log_path:  # kept (and named in the error) only for a failure
            os.unlink(self.log_path)
            self.log_path = None
        self._emit(RunEnded(result), hearing)
        return result

    def _first_failure(self, returncode: int | None) -> str | None:
        """Why the run failed: the earliest failure a rank reported (not one caused by a peer's death), else a
        rank that ended without a word, from torchrun's summary; None when nothing failed."""
        failed = sorted((e for e in self.ended.values() if e["status"] == "failed"), key=lambda e: e["time"])
        own = [e for e in failed if not _peer_went_away(e["error"] or "")]
        if len(failed) == self.config.nproc and len({e["error"] for e in failed}) == 1:
            return failed[0]["error"]  # every rank saw it (a NaN in the global loss, a bad setting)
        if own:
            return f"rank {own[0]['rank']} failed: {own[0]['error']}"
        if self.controls.stop_requested:  # asked to stop, and no rank failed on its own: a stop, however it ended
            return None
        if self.not_started:
            return f"{self.not_started}; the processes' output is in {self.log_path}."
        silent = [r for r in range(self.config.nproc) if r not in self.ended]
        if silent and (failed or returncode not in (0, None)):  # killed without a word, its peers cut off
            return (f"{_torchrun_verdict(self.log_path, silent)}; torchrun exited with {returncode}. "
                    f"The processes' output is in {self.log_path}.")
        if failed:
            return f"rank {failed[0]['rank']} failed: {failed[0]['error']}"
        return None

    def _emit(self, event, listeners: list | None = None) -> None:
        for listener in self.listeners if listeners is None else listeners:
            listener(event)


class _Segments:
    """The meter's segment rows as rank 0 last reported them (LiveRun.segments and wait_measured read them)."""

    def __init__(self):
        self.segments: list[dict] = []

    def update(self, row: dict) -> None:
        index = row["segment"]
        self.segments[index:index + 1] = [row]


class _Reader:
    """Lines from one rank's connection."""

    def __init__(self, connection: socket.socket):
        self.connection, self.buffer, self.rank, self.closed = connection, b"", None, False

    def read(self) -> list[str]:
        try:
            data = self.connection.recv(1 << 20)
        except OSError:  # reset by a rank that died: its end is judged from the reports and torchrun
            data = b""
        if not data:
            self.closed = True
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines if line.strip()]


def _threads_per_process(nproc: int) -> str:
    """OMP_NUM_THREADS for nproc processes sharing this machine's cores (torchrun would give each one)."""
    return str(max(1, devices.cpu_cores() // nproc))


def _peer_went_away(error: str) -> bool:
    """An error a rank gets because another rank died (its sockets closed, torchrun's SIGTERM)."""
    return bool(re.search(r"Connection closed by peer|Connection reset|SIGTERM|Broken pipe|NCCL communicator "
                          r"was aborted|went away", error, re.IGNORECASE))


def _torchrun_verdict(log_path: str | None, silent: list[int]) -> str:
    """'rank 1 was killed by SIGKILL': torchrun's failure summary for the ranks that never reported."""
    try:
        text = open(log_path, errors="replace").read() if log_path else ""
    except OSError:
        text = ""
    for rank, code in re.findall(r"rank\s*:\s*(\d+)\s*\(local_rank.*?\)\s*\n\s*exitcode\s*:\s*(-?\d+)", text):
        if int(rank) in silent or not silent:
            code = int(code)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
                else f"exited with code {code}"
            return f"rank {rank} {how} without reporting an error (out of host memory, or killed)"
    ranks = ", ".join(map(str, silent)) or "?"
    return f"rank(s) {ranks} ended without reporting (killed, or failed before starting)"


def _end_group(process: subprocess.Popen) -> None:
    """torchrun and every process it started: SIGTERM, then SIGKILL; nothing is left behind."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
            os.killpg(process.pid, 0)  # torchrun has gone: are its workers gone too?
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
