"""Runs end as "stopped" on SIGINT (Ctrl-C, a kernel interrupt) and SIGTERM (kill, timeout, docker stop, batch
schedulers), with the signal named, instead of dying and staying "running" in the store.

Python turns SIGINT into KeyboardInterrupt, but not in a process that inherited SIGINT as ignored (a shell's
background job, `nohup`), and it lets SIGTERM end the process at once. While `stop_on_signals()` is active in
the main thread, both raise `Interrupted`, a KeyboardInterrupt that names the signal: the training loop records
the run as stopped and the interrupt goes on to the caller. A run in a background thread (a live run) cannot
be interrupted this way; `labkit.live` stops it through its controls instead.
"""
from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, as shells report them


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; `signal_name` is "SIGINT" or "SIGTERM"."""

    def __init__(self, signum: int):
        self.signum = signal.Signals(signum)
        self.signal_name = self.signum.name
        super().__init__(f"stopped by {self.signal_name}")


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGINT and SIGTERM raise Interrupted in the main thread; the handlers found on entry
    are put back on exit. Elsewhere than in the main thread it does nothing (only the main thread gets signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is None:  # installed outside Python: it could not be put back, so leave it alone
            continue
        previous[signum] = handler
        signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit status a shell expects after this interrupt: 130 for SIGINT, 143 for SIGTERM."""
    return EXIT_CODES.get(getattr(exc, "signum", signal.SIGINT), 130)
