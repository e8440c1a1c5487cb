"""labkit's trainer against a bare hand-written PyTorch loop doing the same work, alternating in one process.

Both train the same model on the same device-resident uint8 batches (normalised, no augmentation, constant lr,
the same optimizer) for the same steps; both are timed the same way, on the wall clock between step `warmup` and
the last step, with the device synchronised at both edges. labkit's extra work (events, timing marks, a
synchronisation every `log_every` steps, the store and progress listeners) is inside its window.

    .venv/bin/python benchmarks/overhead.py                 # CPU here, or the GPU when there is one
    .venv/bin/python benchmarks/overhead.py --pairs 5 --steps 300 --amp bf16
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import labkit
from labkit import data as data_mod, devices, models
from labkit.techniques import optimizers, precision


def bare_loop(config: labkit.RunConfig, device: torch.device, warmup: int) -> float:
    """A minimal loop: index a batch, normalise, forward, backward, step. Returns images/s."""
    torch.manual_seed(config.seed)
    data = data_mod.load(config.dataset, config.train_size, config.test_size)
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    mean, std = data.mean.to(device).view(1, -1, 1, 1), data.std.to(device).view(1, -1, 1, 1)
    model = models.build(config.model, data.num_classes, 3, config.width, config.depth).to(device)
    opt = optimizers.build(config.optimizer, [{"params": model.parameters()}], optimizers.default_lr(config.optimizer),
                           config.weight_decay, config.momentum)
    scaler = precision.make_scaler(device, config.amp)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    order = torch.randperm(len(labels), device=device, generator=gen)
    bs = config.batch_size
    for step in range(config.max_steps):
        if step == warmup:
            devices.synchronize(device)
            start = time.perf_counter()
        idx = order[step * bs:(step + 1) * bs]
        x = (images[idx].float() - mean) / std
        with precision.autocast_context(device, config.amp):
            loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    devices.synchronize(device)
    return (config.max_steps - warmup) * bs / (time.perf_counter() - start)


class StepClock:
    """A listener noting the wall clock at labkit's logged points (each one follows a device sync)."""

    def __init__(self):
        self.points: dict[int, float] = {}

    def __call__(self, event):
        if event.kind == "logged":
            self.points[event.step] = time.perf_counter()


def labkit_loop(config: labkit.RunConfig, store: labkit.Store, warmup: int) -> float:
    clock = StepClock()
    result = labkit.run(config, store=store, progress=True, listeners=[clock])
    assert result.status == "completed", result.error
    first = min(s for s in clock.points if s >= warmup)
    last = max(clock.points)
    return (last - first) * config.batch_size / (clock.points[last] - clock.points[first])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--amp", default="off")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warmup = 10
    # One epoch longer than the steps, so no evaluation falls inside labkit's window.
    config = labkit.RunConfig(amp=args.amp, batch_size=args.batch_size, augment="none", schedule="constant",
                              max_steps=args.steps, train_size=args.batch_size * (args.steps + 1), test_size=512,
                              device=args.device, timing_warmup=warmup)
    device = devices.resolve_device(config.device)
    store = labkit.Store(tempfile.mkdtemp() + "/overhead.db")
    print(f"device {device} ({devices.describe(device)['device_name']}), torch {torch.__version__}, "
          f"amp {args.amp}, batch {args.batch_size}, {args.steps} steps, {args.pairs} pairs")
    ratios = []
    for pair in range(args.pairs):
        if pair % 2 == 0:  # alternate which goes first, so drift in the machine's speed cancels out
            bare = bare_loop(config, device, warmup)
            lab = labkit_loop(config, store, warmup)
        else:
            lab = labkit_loop(config, store, warmup)
            bare = bare_loop(config, device, warmup)
        ratios.append(lab / bare)
        print(f"pair {pair + 1}: bare {bare:,.0f} img/s, labkit {lab:,.0f} img/s, ratio {lab / bare:.3f}")
    print(f"labkit / bare throughput: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.pairs} pairs")


if __name__ == "__main__":
    main()
