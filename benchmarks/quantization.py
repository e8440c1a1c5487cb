"""Post-training int8 against fp32 and bf16 on a trained model: both methods, one Markdown table.

Trains a model (the default cnn on 10,000 images unless told otherwise; or takes `--run ID`, a run saved with
save=True) and quantizes it with each method through labkit.quantize, every variant compiled as it would be
deployed (`--no-compile`: eager). Prints a Markdown table: accuracy, size on disk, latency at batch 1 and at
the large batch with each variant's ratio to fp32, the compile and preparation seconds, and the notes.

The measurements run on the CPU: PT2E's x86 quantizer and its int8 kernels are for x86 CPUs, so `--device cuda`
trains on the GPU and still measures fp32, bf16 and int8 on the CPU, and says so.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/quantization.py --train-size 10000 --epochs 2
    .venv/bin/python benchmarks/quantization.py --run 12 --db data/labkit.db --methods static
"""
from __future__ import annotations

import argparse
import tempfile

import pandas as pd
import torch

import labkit


def markdown(results) -> str:
    lines = ["| method | variant | compiled | accuracy | size KiB (x fp32) | batch 1 ms (x fp32 speed) | "
             f"batch {results[0].large_batch} ms (x fp32 speed) | images/s | prepare s | compile s | int8 layers |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        fp32 = result.row("fp32")
        for row in result.table.to_dict("records"):
            compile_s = "-" if pd.isna(row["compile_s"]) else f"{row['compile_s']:.1f}"
            compiled = "yes" if row["compiled"] else "no"
            lines.append(
                f"| {result.method} | {row['variant']} | {compiled} | {row['accuracy']:.1%} | "
                f"{row['size_bytes'] / 1024:,.1f} ({row['size_bytes'] / fp32['size_bytes']:.2f}x) | "
                f"{row['latency_ms_b1']:.3f} ({fp32['latency_ms_b1'] / row['latency_ms_b1']:.2f}x) | "
                f"{row['latency_ms_large']:.1f} ({fp32['latency_ms_large'] / row['latency_ms_large']:.2f}x) | "
                f"{row['images_per_s_large']:,.0f} | {row['prepare_s']:.1f} | {compile_s} | "
                f"{row['quantized_layers']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=int, default=None, help="quantize this saved run instead of training one")
    parser.add_argument("--db", default=None, help="the store of --run (default: $LABKIT_DB or data/labkit.db); "
                                                   "a run trained here goes to a temporary store unless given")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-size", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto", help="where the model trains; the measurements run on the CPU")
    parser.add_argument("--methods", default="static,dynamic")
    parser.add_argument("--large-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--calibration-batches", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = args.db if args.db or args.run is not None else f"{tmp}/labkit.db"
        if args.run is None:
            trained = labkit.run(model=args.model, width=args.width, train_size=args.train_size,
                                 test_size=args.test_size, epochs=args.epochs, device=args.device, save=True,
                                 store=store, progress=False)
            if trained.status != "completed":
                raise SystemExit(f"training failed: {trained.error}")
            source = trained.run_id
            what = (f"{args.model} width {args.width}, trained on {args.train_size:,} images x {args.epochs} epochs "
                    f"in {trained.time_s:.0f} s, test accuracy {trained.accuracy:.1%}")
        else:
            source, what = args.run, f"run {args.run}"
        results = [labkit.quantize(source, method, store=store, large_batch=args.large_batch, repeats=args.repeats,
                                   calibration_batches=args.calibration_batches, compile=not args.no_compile,
                                   progress=False)
                   for method in args.methods.split(",")]

    print(f"{labkit.lessons.hardware('cpu')}; torch {torch.__version__}")
    if args.device not in ("auto", "cpu"):
        print(f"trained on {args.device}; measured on the CPU: PT2E's x86 int8 is for CPUs")
    print(f"{what}; accuracy on {results[0].settings['test_images']:,} test images; latency: median of "
          f"{args.repeats} calls after warm-up\n")
    print(markdown(results))
    for result in results:
        print(f"\n{result.method}:")
        print("\n".join(f"- {note}" for note in result.notes))


if __name__ == "__main__":
    main()
