"""What each process of a distributed run executes: `torchrun ... -m labkit.dist.worker`.

torchrun gives each process its RANK, LOCAL_RANK and WORLD_SIZE; labkit's launcher adds the configuration
(LABKIT_RUN_CONFIG, JSON), the store (LABKIT_RUN_STORE, empty for none; LABKIT_RUN_TAGS, JSON, recorded with the
run, e.g. a tuning trial's study) and, when a kernel watches the run, the
address of its channel (LABKIT_CHANNEL, LABKIT_CHANNEL_TOKEN). Every process trains with the same Trainer as a
single process; the differences are the process group (gloo on CPUs, nccl on GPUs), DDP (the `distributed`
technique), and RankControls below. Rank 0 records the run and streams its events; the others write nothing.
Each rank reports how it ended, so the launcher can name the rank that failed first and why.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .. import devices
from ..config import RunConfig
from ..events import to_message
from ..lab.progress import ProgressBar
from ..signals import stop_on_signals
from ..store import Store
from ..techniques.distributed import unsplittable
from ..train import Controls, Trainer

# A collective waits this long for a rank that neither answers nor dies (a dead one is noticed at once: gloo
# sees its sockets close, and torchrun ends the others when a process exits with an error).
TIMEOUT_S = float(os.environ.get("LABKIT_DDP_TIMEOUT_S", "300"))
PAUSE_POLL_S = 0.5  # while paused, the ranks agree this often on whether to go on


class RankControls(Controls):
    """Controls that every rank of a distributed run reads alike.

    Rank 0 takes the kernel's requests (`deliver`, from its channel) into an inbox. At each step boundary
    (`sync`) the ranks learn whether rank 0 has news from a one-number all-reduce started at the previous
    boundary (it runs on the gloo group in the background during the step, so it costs the step nothing);
    if so, rank 0 broadcasts the news and every rank applies the same changes, pause or stop at the same step.
    """

    def __init__(self, rank: int, group):
        super().__init__()
        self.rank, self.group = rank, group
        self._inbox: dict[str, Any] = {}
        self._news = threading.Event()
        self._flag = None  # (work, tensor): the all-reduce started at the last boundary
        self.on_applied = None  # rank 0: tells the kernel that its request has been applied (or dropped)

    def deliver(self, message: dict[str, Any]) -> None:
        """Rank 0, from the channel's thread: a request from the kernel, agreed on at the next boundary."""
        with self._lock:
            if "set" in message:
                self._inbox.setdefault("set", {}).update(message["set"])
            for key in ("stop", "pause"):
                if key in message:
                    self._inbox[key] = message[key]
        self._news.set()

    def sync(self) -> None:
        news = self._flag_result()
        if news:
            self._agree()
        with self._lock:
            flag = torch.tensor([int(self.rank == 0 and bool(self._inbox))])
        self._flag = (dist.all_reduce(flag, group=self.group, async_op=True), flag)

    def wait_for_work(self) -> None:
        """Paused: rank 0 waits for news (at most PAUSE_POLL_S), then every rank agrees on it."""
        if self.rank == 0:
            self._news.wait(PAUSE_POLL_S)
        self._flag_result()
        self._agree()

    def applied(self) -> None:
        super().applied()
        if self.on_applied is not None:
            self.on_applied()

    def _flag_result(self) -> bool:
        if self._flag is None:
            return False
        work, flag = self._flag
        work.wait()
        self._flag = None
        return bool(flag.item())

    def _agree(self) -> None:
        with self._lock:
            message, self._inbox = (self._inbox, {}) if self.rank == 0 else (None, self._inbox)
            self._news.clear()
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.group)
        message = box[0]
        if message.get("set"):
            self.request(**message["set"])
        if "pause" in message:
            self.pause() if message["pause"] else self.resume()
        if "stop" in message:
            self.stop(message["stop"])


class Channel:
    """Newline-delimited JSON to and from the launcher over a local TCP connection; the first line carries the
    token the launcher made, so no other process can pose as a rank."""

    def __init__(self, address: str, token: str, rank: int):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.settimeout(None)
        self._lock = threading.Lock()
        self.send({"hello": token, "rank": rank})

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, default=str) + "\n").encode()
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:  # the launcher went away; the run goes on (rank 0 stops: see listen)
                pass

    def listen(self, controls: RankControls) -> None:
        """Rank 0's reader thread: the kernel's requests go to the controls; if the launcher goes away (the
        kernel died), the run stops rather than training on unwatched."""
        with self.sock.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                controls.deliver(json.loads(line))
        controls.deliver({"stop": "stopped: the process that launched the run went away"})


def _streamer(channel: Channel, trainer: Trainer, recorder):
    """Rank 0's listener: each event to the kernel, with the meter's current segment (its throughput so far)."""
    def send(event) -> None:
        message: dict[str, Any] = {"event": to_message(event)}
        if event.kind in ("logged", "segment_started") and trainer.meter.segments:
            message["segment"] = dict(trainer.meter.segments[-1])
        if event.kind == "run_started" and recorder is not None:
            message["run_id"] = recorder.run_id
        channel.send(message)
    return send


def main() -> int:
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    channel = None
    if os.environ.get("LABKIT_CHANNEL"):
        channel = Channel(os.environ["LABKIT_CHANNEL"], os.environ.get("LABKIT_CHANNEL_TOKEN", ""), rank)
    status, error, weights, together = "failed", None, None, False
    try:
        config = RunConfig.from_dict(json.loads(os.environ["LABKIT_RUN_CONFIG"]))
        split = unsplittable(config.batch_size, world, f"the {world} processes")
        if split:
            raise ValueError(split)
        device = devices.resolve_device(config.device)
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"nproc={config.nproc}: this machine has {torch.cuda.device_count()} GPU(s), one "
                                 "per process; lower nproc.")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=TIMEOUT_S))
        controls = RankControls(rank, dist.new_group(backend="gloo", timeout=timedelta(seconds=TIMEOUT_S)))
        trainer = Trainer(config, controls=controls)
        if os.environ.get("LABKIT_LAUNCHED_AT"):  # the launcher's clock: this machine's
            trainer.info["launch_s"] = time.time() - float(os.environ["LABKIT_LAUNCHED_AT"])
        if rank == 0:
            store_path = os.environ.get("LABKIT_RUN_STORE", "")
            tags = json.loads(os.environ.get("LABKIT_RUN_TAGS") or "{}")
            recorder = Store(store_path).recorder(tags) if store_path else None
            trainer.listeners += [recorder] if recorder else []
            if channel is not None:
                trainer.listeners.append(_streamer(channel, trainer, recorder))
                controls.on_applied = lambda: channel.send({"applied": True})
                threading.Thread(target=channel.listen, args=(controls,), daemon=True).start()
            else:
                trainer.listeners.append(ProgressBar())
        with stop_on_signals():  # torchrun's SIGTERM (another rank failed) ends this one as stopped
            result = trainer.run()
        status, error = result.status, result.error
        together = status != "failed"  # completed, or a stop every rank agreed on: all ranks are here
        # The weights' sum: equal on every rank unless a rank took a different step (the tests compare them).
        weights = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then the process fails
        error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyboardInterrupt) else str(exc)
        status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
    if channel is not None:
        channel.send({"ended": {"rank": rank, "status": status, "error": error, "time": time.time(),
                                "weights_sum": weights}})
    if together and dist.is_initialized():
        dist.destroy_process_group()
    return 0 if status != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
