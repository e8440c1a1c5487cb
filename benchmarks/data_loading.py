"""Device-resident data against a DataLoader with 0, 1, 2, 4 workers, on the synthetic data written out as an
image folder of JPEGs (decoded and resized per image on the CPU), side by side in one process.

Each round trains every variant once through labkit.run, taking turns, so a slow moment of a shared machine falls
on all of them; the table gives per variant the median throughput over rounds, its ratio to the device loader,
and the share of each timed step spent waiting for data, with labkit's verdict.

    .venv/bin/python benchmarks/data_loading.py                        # CPU here, or the GPU when there is one
    .venv/bin/python benchmarks/data_loading.py --device cuda --workers 0,2,4,8,16 --width 32 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import labkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2,4", help="num_workers values to compare with the device loader")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--image-size", type=int, default=96, help="pixels of the stored JPEGs (trained at 32)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="cnn width: smaller makes the run more input-bound")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--folder", default=None, help="where to write the image folder (default: data/)")
    args = parser.parse_args()

    folder = Path(args.folder) if args.folder else labkit.paths.data_dir() / f"synthetic-jpeg{args.image_size}-{args.train_size}"
    labkit.synthetic.export(folder, train_size=args.train_size, test_size=512, image_size=args.image_size)
    variants = {"device": {"loader": "device"}}
    for n in (int(w) for w in args.workers.split(",")):
        variants[f"{n} workers"] = {"loader": "dataloader", "num_workers": n, "persistent_workers": n > 0}

    print(labkit.lessons.hardware(args.device))
    print(f"torch {torch.__version__}; {labkit.devices.cpu_cores()} CPU cores; {args.train_size} JPEGs of "
          f"{args.image_size} px -> 32 px; cnn width {args.width}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.rounds} rounds")
    base = dict(dataset=f"imagefolder:{folder}", epochs=args.epochs, batch_size=args.batch_size, width=args.width,
                device=args.device, test_size=256, log_every=5, timing_warmup=3, store=False, progress=False)
    found: dict[str, list] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, knobs in variants.items():
            result = labkit.run(**base, **knobs)
            if result.status != "completed":
                raise SystemExit(f"{name}: {result.status}: {result.error}")
            found[name].append(result)

    reference = statistics.median(r.throughput for r in found["device"])
    print(f"\n{'loader':<12} {'img/s':>8} {'vs device':>10} {'data share':>11}  verdict")
    for name, results in found.items():
        speed = statistics.median(r.throughput for r in results)
        share = statistics.median(r.data_share for r in results)
        verdict = results[-1].input_verdict.split(";")[0]
        print(f"{name:<12} {speed:>8,.0f} {speed / reference:>9.2f}x {share:>10.0%}  {verdict}")


if __name__ == "__main__":
    main()
