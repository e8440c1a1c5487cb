"""Distributed data parallel scaling: throughput with 1, 2, ... processes of the same global batch, taking turns.

Each round trains every process count once through labkit.run (nproc=1 in this process, nproc>1 through torchrun),
so a slow moment of a shared machine falls on all of them. The table gives per count the median global throughput,
the scaling efficiency (N-process throughput / (N x 1-process throughput)), the run's time and, apart, the start-up
of torchrun and its processes, and what DDP measured of the gradient all-reduce per step (it overlaps backward). On a CPU every count
shares the same cores (each process gets cores / N threads), so efficiency there says what the processes cost,
not what more hardware would give; on a GPU machine each process has its own GPU.

    .venv/bin/python benchmarks/ddp_scaling.py                                   # CPU: 1 and 2 processes
    .venv/bin/python benchmarks/ddp_scaling.py --device cuda --nproc 1,2,4,8 --model resnet18 --batch-size 1024
"""
from __future__ import annotations

import argparse
import statistics

import torch

import labkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", default="1,2", help="process counts to compare (1 is the reference)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256, help="the global batch (split across processes)")
    parser.add_argument("--train-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--amp", default="off")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    counts = [int(n) for n in args.nproc.split(",")]
    if counts[0] != 1:
        counts = [1, *[n for n in counts if n != 1]]

    print(labkit.lessons.hardware(args.device))
    print(f"torch {torch.__version__}; {labkit.devices.cpu_cores()} CPU cores; {args.model} (width {args.width}), "
          f"global batch {args.batch_size}, {args.train_size} images x {args.epochs} epochs, amp {args.amp}, "
          f"{args.rounds} rounds")
    base = dict(model=args.model, width=args.width, batch_size=args.batch_size, train_size=args.train_size,
                test_size=512, epochs=args.epochs, amp=args.amp, device=args.device, norm="group",
                log_every=5, timing_warmup=3, store=False, progress=False)
    found: dict[int, list] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            result = labkit.run(**base, nproc=n)
            if result.status != "completed":
                raise SystemExit(f"nproc={n}: {result.status}: {result.error}")
            found[n].append(result)

    one = statistics.median(r.throughput for r in found[1])
    print(f"\n{'nproc':>5} {'img/s':>9} {'speed-up':>9} {'efficiency':>11} {'train s':>8} {'start-up s':>11}"
          f" {'all-reduce ms/step':>19} {'accuracy':>9}")
    for n, results in found.items():
        speed = statistics.median(r.throughput for r in results)
        wall = statistics.median(r.time_s for r in results)
        launch = "-" if results[-1].launch_s is None else f"{statistics.median(r.launch_s for r in results):.1f}"
        ranks = results[-1].ranks
        allreduce = ("-" if ranks.empty or ranks["allreduce_s_per_step"].isna().all()
                     else f"{ranks['allreduce_s_per_step'].mean() * 1e3:.1f}")
        print(f"{n:>5} {speed:>9,.0f} {speed / one:>8.2f}x {speed / (n * one):>10.0%} {wall:>8.1f} {launch:>11} {allreduce:>19}"
              f" {results[-1].accuracy:>9.3f}")


if __name__ == "__main__":
    main()
