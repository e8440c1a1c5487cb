"""What the lab panel costs training: the same run headless and with the panel attached, alternating in one process.

    python benchmarks/dashboard_overhead.py --pairs 5 --train-size 3000 --batch-size 64

"Headless" is a LiveRun recording to a store (as the panel's runs do); "panel" is the same run started from a
`labkit.Lab`, so its dashboard charts and status line listen to every event and redraw at their normal rate
(at most 4 per second). Both train in a background thread. Throughput is the trainer's own figure: timed steps
after each segment's warm-up, evaluation excluded. Runs alternate (headless, panel, headless, ...) so a change in
the machine's load hits both; the figure is the median of the per-pair ratios panel / headless.

On a machine shared with other work, run-to-run throughput can swing by more than the panel could ever cost, so
the script also reports a second, load-independent figure: the share of each panel run's wall time spent inside
the panel's listeners. The loop calls them in the training thread between two timed intervals that are
contiguous, so that share is exactly what they take from training; 1 - share is the ratio they allow.

Outside a kernel the widgets have no front end: each redraw still builds and serialises the chart updates, but
the messages are not sent over a socket. Target: a ratio of at least 0.97.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from labkit import Lab, LiveRun, RunConfig, Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--width", type=int, default=16, help="cnn width (smaller: faster steps, harsher test)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    config = RunConfig(train_size=args.train_size, test_size=500, batch_size=args.batch_size, epochs=args.epochs,
                       width=args.width, device=args.device)
    store = Store(Path(tempfile.mkdtemp()) / "overhead.db")
    lab = Lab(config, store=store)

    def headless() -> float:
        return LiveRun(config, store=store).start().wait().throughput

    shares = []

    def panel() -> float:
        listeners = [_Timed(listener) for listener in lab.listeners]
        lab.run = run = LiveRun(config, store=store, listeners=listeners)  # what Lab.start does, timed
        result = run.start().wait()
        shares.append(sum(t.seconds for t in listeners) / result.time_s)
        return result.throughput

    panel()  # warm-up: data cache, kernels, first widget messages
    shares.clear()
    ratios = []
    for i in range(args.pairs):
        first, second = (headless, panel) if i % 2 == 0 else (panel, headless)
        a, b = first(), second()
        plain, with_panel = (a, b) if first is headless else (b, a)
        ratios.append(with_panel / plain)
        print(f"pair {i + 1}: headless {plain:8.1f} img/s   panel {with_panel:8.1f} img/s   ratio {ratios[-1]:.3f}"
              f"   panel listeners {shares[-1]:.2%} of the run   ({lab.dashboard.redraws} redraws so far)",
              flush=True)
    print(f"\ndevice {lab.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"median ratio panel / headless: {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}, {args.pairs} pairs)")
    print(f"time in the panel's listeners: median {statistics.median(shares):.2%} of a run "
          f"(max {max(shares):.2%}): ratio allowed {1 - statistics.median(shares):.3f}")


class _Timed:
    """A listener that adds up the time spent in it."""

    def __init__(self, listener):
        self.listener, self.seconds = listener, 0.0

    def __call__(self, event) -> None:
        start = time.perf_counter()
        try:
            self.listener(event)
        finally:
            self.seconds += time.perf_counter() - start


if __name__ == "__main__":
    main()
