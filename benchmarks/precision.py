"""Training throughput of each precision against fp32, side by side in one process, taking turns.

Each round trains the same configuration once per `amp` mode (off, bf16, fp16 by default) through labkit.run,
so a slow moment of a shared machine falls on all of them; the ratio is the median over rounds of
mode / fp32. What labkit calls native or emulated on this device is printed beside each ratio.

    .venv/bin/python benchmarks/precision.py                       # the CPU here, or the GPU when there is one
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/precision.py   # as a CPU
                                                                   # without bf16 units (AMD EPYC with AVX2 only)
"""
from __future__ import annotations

import argparse
import statistics

import labkit
from labkit import devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="off,bf16,fp16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="steps per run (the first 5 are not timed)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    modes = args.modes.split(",")
    config = labkit.RunConfig(model=args.model, batch_size=args.batch_size, max_steps=args.steps, epochs=1,
                              timing_warmup=5, log_every=5, augment="none", device=args.device)
    device = devices.resolve_device(args.device)
    support = devices.precisions(device)
    speeds: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            speeds[mode].append(labkit.run(config, amp=mode, store=False, progress=False).throughput)
    print(f"{labkit.lessons.hardware(args.device)}")
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds (median img/s)")
    for mode in modes:
        ratios = [s / f for s, f in zip(speeds[mode], speeds["off"])]
        p = support[mode]
        print(f"{mode:>4}: {statistics.median(speeds[mode]):8,.0f} img/s   x{statistics.median(ratios):.2f} fp32 "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f})   {'native' if p.native else 'emulated'}: {p.note}")


if __name__ == "__main__":
    main()
