"""Samplers against each other: how many trials each needs to reach 95% of the grid's Pareto hypervolume.

First every point of a fixed 36-point space (lr x batch_size x width) is trained once, as a real labkit study with
the grid sampler (throughput and accuracy, both measured on this machine). Then each sampler searches that table
of measured points (`labkit.tuning.replay`: the sampler proposes, the table answers) with many seeds, so samplers
compare on the very same figures, at no further training cost and without the noise of re-measuring. A sampler's
score is the number of trials after which its front's hypervolume (throughput x accuracy, above the worst measured
values) first reaches 95% of the whole grid's; "never" within the 36-trial budget counts as 37 in the mean.

Optuna's grid sampler visits the points in a random order (seeded), so "grid" here is random sampling without
repeats: what a grid search costs when it is stopped early. A grid in a fixed order is usually worse.

    .venv/bin/python benchmarks/tuning.py                      # CPU, about 2 minutes of training
    .venv/bin/python benchmarks/tuning.py --device cuda --train-size 20000
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

import labkit
from labkit.tuning import hypervolume, replay, trials_to_reach

SPACE = {"lr": [0.01, 0.03, 0.1, 0.3], "batch_size": [64, 128, 256], "width": [8, 16, 32]}
OBJECTIVES = ("accuracy", "throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default="grid,random,tpe,nsga2,gp")
    parser.add_argument("--seeds", type=int, default=20, help="searches per sampler over the measured table")
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--goal", type=float, default=0.95, help="share of the grid's hypervolume to reach")
    args = parser.parse_args()
    print(labkit.lessons.hardware(args.device))
    print(f"torch {torch.__version__}; {labkit.devices.cpu_cores()} CPU cores; space {SPACE}; "
          f"{args.train_size} images x {args.epochs} epochs per point")
    with tempfile.TemporaryDirectory() as folder:
        grid = labkit.tune(SPACE, sampler="grid", objectives=OBJECTIVES, trials=36, store=f"{folder}/bench.db",
                           train_size=args.train_size, test_size=1024, epochs=args.epochs, device=args.device,
                           amp="off", quiet=True)
    table = grid.completed
    print(f"measured {len(table)} points: accuracy {table['accuracy'].min():.1%}..{table['accuracy'].max():.1%}, "
          f"throughput {table['throughput'].min():,.0f}..{table['throughput'].max():,.0f} img/s; "
          f"{len(grid.best)} on the Pareto front")
    reference = {o: float(table[o].min()) for o in OBJECTIVES}  # the worst measured: what the volume starts from
    whole = hypervolume(table, OBJECTIVES, reference)
    budget = len(table)
    print(f"\n| sampler | trials to {args.goal:.0%} of the grid's hypervolume (mean, {args.seeds} seeds) | median "
          f"| reached within {budget} |")
    print("| --- | --- | --- | --- |")
    means = {}
    for sampler in args.samplers.split(","):
        needed = [trials_to_reach(replay(table, SPACE, OBJECTIVES, sampler, budget, seed), OBJECTIVES, reference,
                                  args.goal * whole) for seed in range(args.seeds)]
        counted = [n if n is not None else budget + 1 for n in needed]
        means[sampler] = statistics.fmean(counted)
        print(f"| {sampler} | {means[sampler]:.1f} | {statistics.median(counted):.0f} | "
              f"{sum(n is not None for n in needed)}/{args.seeds} |")
    for sampler in ("tpe", "gp", "nsga2"):
        if sampler in means and "grid" in means:
            print(f"{sampler} / grid: {means[sampler] / means['grid']:.2f} of the grid's trials")


if __name__ == "__main__":
    main()
