"""channels_last and torch.compile against eager NCHW, for the default cnn and resnet18, side by side in one process.

Each round trains the same configuration once per variant through labkit.run, taking turns, so a slow moment of a
shared machine falls on all of them; a ratio is the median over rounds of variant / eager. Compiled variants
report their compile time (the first step) apart: Inductor caches compiled code on disk, so later rounds
compile from the cache and take less.

    .venv/bin/python benchmarks/techniques.py                          # CPU here, or the GPU when there is one
    .venv/bin/python benchmarks/techniques.py --device cuda --amp bf16 --models cnn,resnet18 --steps 60
"""
from __future__ import annotations

import argparse
import statistics

import torch

import labkit

VARIANTS = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": "default"},
    "compile+channels_last": {"compile": "default", "channels_last": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,resnet18")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="steps per run (the first 5 are not timed)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--amp", default="off")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    print(labkit.lessons.hardware(args.device))
    print(f"torch {torch.__version__}, amp {args.amp}, batch {args.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds (median img/s; ratio against eager NCHW in the same round)")
    variants = args.variants.split(",")
    for model in args.models.split(","):
        config = labkit.RunConfig(model=model, amp=args.amp, batch_size=args.batch_size, max_steps=args.steps,
                                  epochs=1, train_size=args.batch_size * (args.steps + 1), test_size=256,
                                  timing_warmup=5, log_every=5, augment="none", device=args.device)
        speeds = {v: [] for v in variants}
        compile_s = {v: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                result = labkit.run(config, store=False, progress=False, **VARIANTS[variant])
                assert result.status == "completed", result.error
                speeds[variant].append(result.throughput)
                compile_s[variant].append(result.compile_s)
        for variant in variants:
            ratios = [s / e for s, e in zip(speeds[variant], speeds["eager"])]
            compiled = [c for c in compile_s[variant] if c is not None]
            extra = f"   compile {compiled[0]:.1f} s first, {compiled[-1]:.1f} s cached" if compiled else ""
            print(f"{model:>9} {variant:>22}: {statistics.median(speeds[variant]):8,.0f} img/s   "
                  f"x{statistics.median(ratios):.2f} eager (rounds {min(ratios):.2f}-{max(ratios):.2f}){extra}")


if __name__ == "__main__":
    main()
