"""Helpers for the lesson notebooks: record figures, run small sweeps over seeds, say what hardware measured them,
and teach: predictions that the measurement closes, claims judged on this hardware, fill-in exercises.

    labkit.record("bf16_speedup", 1.8)          # merged into the JSON file at `metrics_path`
    table, runs = sweep("amp", ["off", "bf16"], seeds=[0, 1, 2], train_size=2000, epochs=1)
    print(hardware())
    predict("bf16_speedup", "bf16 / fp32 here?", number=True); ...; reveal("bf16_speedup", 1.6, "why")
    claims(Claim(...)); claims_table()          # see teach.py
    check("mixup", my_mixup)                    # see exercises.py

`record` writes to, in this order: its `path` argument, the `metrics_path` variable of the notebook (the
lessons set it in their `parameters` cell; papermill and `labkit notebooks` point it into the build folder),
the `LABKIT_METRICS` environment variable. With none of them set it only keeps the figure in `recorded()`.
Non-finite numbers are written as null, so a NaN can never pass a baseline band.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

from ..measure import mean_and_spread
from ..paths import write_atomically


METRICS_ENV = "LABKIT_METRICS"
_recorded: dict[str, Any] = {}
_lesson_file: Path | None = None  # set by begin()


# ---- recording figures -----------------------------------------------------------------------------------------
def plain(value: Any, strict: bool = True) -> Any:
    """A JSON-ready copy: numpy/torch scalars become numbers, NaN, inf, NaT and NA become None, timestamps become
    ISO strings (UTC when naive, as the store's are), tuples become lists. Anything else raises TypeError, or with
    `strict=False` becomes its text."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy or torch scalar
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, strict) for v in value]
    if type(value).__name__ in ("NaTType", "NAType"):
        return None
    if isinstance(value, dt.datetime):  # pandas Timestamps too
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).isoformat()
    if hasattr(value, "tolist"):
        return plain(value.tolist(), strict)
    if not strict:
        return str(value)
    raise TypeError(f"record: {type(value).__name__} is not a number, string, list or dict")


def metrics_file(path: str | os.PathLike | None = None) -> Path | None:
    """Where `record` writes: `path`, else the notebook's `metrics_path`, else $LABKIT_METRICS, else the file of
    the lesson `begin` named (in the data folder, for `labkit export`), else None."""
    if path:
        return Path(path)
    main = sys.modules.get("__main__")
    notebook_path = getattr(main, "metrics_path", None)
    if notebook_path:
        return Path(notebook_path)
    if os.environ.get(METRICS_ENV):
        return Path(os.environ[METRICS_ENV])
    return _lesson_file


def record(name: str, value: Any, path: str | os.PathLike | None = None) -> Any:
    """Record one figure under `name` (merged with what the file already holds) and return it unchanged."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"record: the name must be a non-empty string, not {name!r}")
    figure = plain(value)
    _recorded[name] = figure
    file = metrics_file(path)
    if file is not None:
        figures = read_metrics(file)
        figures[name] = figure
        write_atomically(file, json.dumps(figures, indent=1, sort_keys=True, allow_nan=False))
    return value


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """The figures recorded in a metrics file ({} when it does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    text = path.read_text()
    return json.loads(text) if text.strip() else {}


def recorded() -> dict[str, Any]:
    """The figures recorded in this process so far (also when no file is set)."""
    return dict(_recorded)


# ---- the machine ---------------------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "auto") -> str:
    """A short name for the device that measures: the GPU's name, else the CPU's model and core count."""
    import torch

    from ..devices import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple GPU ({platform.machine()})"
    return f"{_cpu_name()} ({os.cpu_count()} cores)"


def hardware(device: str = "auto") -> str:
    """One line naming what the figures of a lesson are measured on."""
    import torch

    from ..devices import AMP_DTYPE_NAMES, cpu_bf16_units, precisions, resolve_device

    dev = resolve_device(device)
    threads = torch.get_num_threads()
    if dev.type == "cuda":
        what = f"GPU {torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    elif dev.type == "mps":
        what = f"Apple GPU (MPS) on {platform.machine()}"
    else:
        units = cpu_bf16_units()
        what = (f"CPU {_cpu_name()}, {threads} threads used by torch (of {os.cpu_count()} logical cores), "
                f"bf16 units: {', '.join(units) if units else 'none found'}")
    modes = precisions(dev)
    native = ", ".join(AMP_DTYPE_NAMES[m] for m, p in modes.items() if p.native)
    emulated = ", ".join(AMP_DTYPE_NAMES[m] for m, p in modes.items() if p.available and not p.native)
    return (f"{what} · native: {native}" + (f"; emulated: {emulated}" if emulated else "")
            + f" · torch {torch.__version__} · Python {platform.python_version()}")


def lesson_dir() -> Path:
    """Where lessons run in Jupyter keep their figures (one file per lesson), for `labkit export`."""
    from ..paths import data_dir

    return data_dir() / "lessons"


def begin(lesson: str, device: str = "auto") -> str:
    """Start a lesson: print the hardware line and record the facts its claims depend on (the device, which
    precisions are native). Without a `metrics_path` the figures go to the lesson's file in `lesson_dir()`,
    started afresh, so `labkit export` finds them. Returns the hardware line."""
    global _lesson_file

    from ..devices import precisions, resolve_device

    _recorded.clear()
    if metrics_file() in (None, _lesson_file):
        _lesson_file = lesson_dir() / f"{lesson}.metrics.json"
        _lesson_file.unlink(missing_ok=True)
    dev = resolve_device(device)
    modes = precisions(dev)
    line = hardware(device)
    for name, value in {"lesson": lesson, "machine": machine(device), "hardware": line, "device_type": dev.type,
                        "gpu": dev.type == "cuda", "bf16_native": modes["bf16"].native,
                        "bf16_emulated": modes["bf16"].available and not modes["bf16"].native,
                        "fp16_native": modes["fp16"].native,
                        "fp16_emulated": modes["fp16"].available and not modes["fp16"].native}.items():
        record(name, value)
    print(line)
    return line


# ---- running a few configurations ------------------------------------------------------------------------------
def _final_loss(result) -> float:
    history = result.history
    return float(history["loss"].iloc[-1]) if len(history) else float("nan")


def _row(results: list, knob: str, value: Any) -> dict[str, Any]:
    """One table row from the runs of one setting (its seeds and repeats): the median throughput, the mean and
    spread (standard deviation over the runs) of accuracy, train accuracy and final loss, and the last run's
    other figures (sizes and FLOPs do not depend on the seed)."""
    last = results[-1]
    speeds = [r.throughput for r in results if r.throughput is not None]
    accuracy, accuracy_std = mean_and_spread([r.accuracy for r in results])
    train_accuracy, train_accuracy_std = mean_and_spread([r.train_accuracy for r in results])
    final_loss, final_loss_std = mean_and_spread([_final_loss(r) for r in results])
    return {
        knob: value,
        "status": last.status,
        "runs": len(results),
        "throughput": statistics.median(speeds) if speeds else float("nan"),
        "accuracy": accuracy,
        "accuracy_std": accuracy_std,
        "train_accuracy": train_accuracy,
        "train_accuracy_std": train_accuracy_std,
        "final_loss": final_loss,
        "final_loss_std": final_loss_std,
        "time_s": statistics.median(r.time_s for r in results),
        "peak_memory_mb": (last.peak_memory_bytes or 0) / 2**20,
        "params": last.params,
        "flops_per_image": last.flops_per_image,
        "mfu": last.mfu,
        "sparsity": last.sparsity,
        "skipped_steps": last.skipped_steps,
        "compile_s": results[0].compile_s,  # the first run's: later ones may find Inductor's cache warm
        "loss_scale": last.loss_scale,
        "error": next((r.error for r in results if r.error), None),
    }


def sweep(knob: str, values: Iterable[Any], *, seeds: Iterable[int] | None = None, repeats: int = 1,
          store: Any = None, quiet: bool = False, **config: Any) -> tuple[pd.DataFrame, dict[Any, Any]]:
    """Run `config` once per value of `knob` (per seed, per repeat) and return (table, results).

    `table` has one row per value: throughput is the median over its runs; accuracy, train accuracy and final
    loss are means with their standard deviation over the runs (`accuracy_std`, ...): with several `seeds`
    (initialisation, data order and augmentation all change) the spread is the noise a difference must beat.
    `results` maps each value to its last RunResult (histories, segments). The values take turns (a, b, a, b,
    ...), so a slow moment on a shared machine falls on all of them rather than on one. Each run prints a line.
    A `knob` that is not a RunConfig field is allowed when `values` are dicts of settings (a label per dict):
    `sweep("setting", {"bs 64": {"batch_size": 64}, ...})`."""
    import pandas as pd

    from ..api import run

    if isinstance(values, dict):
        settings = dict(values)
    else:
        settings = {v: {knob: v} for v in values}
    seeds = [config.pop("seed", 0)] if seeds is None else list(seeds)
    if not seeds:
        raise ValueError("sweep: seeds=[] runs nothing; give at least one seed, e.g. seeds=[0, 1, 2]")
    runs: dict[Any, list] = {label: [] for label in settings}
    for seed in seeds:
        for _ in range(max(1, repeats)):
            for label, changes in settings.items():
                result = run(store=store, progress=False, **{**config, "seed": seed, **changes})
                runs[label].append(result)
                if not quiet:
                    print(_line(knob, label, result) + (f" (seed {seed})" if len(seeds) > 1 else ""))
    table = pd.DataFrame([_row(rs, knob, label) for label, rs in runs.items()])
    return table, {label: rs[-1] for label, rs in runs.items()}


def compare(settings: dict[Any, dict[str, Any]], *, seeds: Iterable[int] = (0, 1, 2), store: Any = None,
            quiet: bool = False, **config: Any) -> pd.DataFrame:
    """Several settings side by side over several seeds: one row per label, with the mean and spread of accuracy
    over the seeds and the median throughput (sweep's table, its knob column named "setting"). One run cannot
    show a gain smaller than the seed-to-seed spread; `difference(table, "setting", a, b)` says which it is.

        labkit.compare({"alone": {}, "taught": {"teacher": 12}}, seeds=range(5), width=8)"""
    table, _ = sweep("setting", settings, seeds=seeds, store=store, quiet=quiet, **config)
    return table


def difference(table: pd.DataFrame, knob: str, a: Any, b: Any, figure: str = "accuracy") -> str:
    """One sentence: is `figure` of setting `b` above `a` by more than the runs' spread, or within the noise?

    The noise is the larger standard deviation of the two settings over their runs (seeds); a difference
    smaller than twice that is reported as within the noise, as is any difference measured from one run each."""
    rows = table.set_index(knob)
    va, vb = float(rows.loc[a, figure]), float(rows.loc[b, figure])
    spread = max(float(rows.loc[a].get(f"{figure}_std", float("nan"))),
                 float(rows.loc[b].get(f"{figure}_std", float("nan"))))
    runs = int(min(rows.loc[a].get("runs", 1), rows.loc[b].get("runs", 1)))
    diff = vb - va
    scale, unit = (100, " pts") if "accuracy" in figure else (1, "")
    said = f"{b} vs {a}: {figure} {diff * scale:+.1f}{unit}"
    if runs < 2 or not math.isfinite(spread):
        return said + " from one run each: run several seeds before reading anything into it"
    if abs(diff) <= 2 * spread:
        return said + f", within the noise (seed-to-seed spread +-{spread * scale:.1f}{unit} over {runs} runs)"
    return said + f", beyond the noise (spread +-{spread * scale:.1f}{unit} over {runs} runs)"


def _line(knob: str, label: Any, result) -> str:
    if result.status != "completed":
        return f"{knob}={label}: {result.status} ({result.error})"
    speed = "-" if result.throughput is None else f"{result.throughput:,.0f} img/s"
    acc = "-" if result.accuracy is None else f"{result.accuracy:.1%}"
    return f"{knob}={label}: {speed}, test accuracy {acc}, {result.time_s:.1f} s"


def curves(results: dict[Any, Any], knob: str, frame: str = "history") -> pd.DataFrame:
    """The `history` (or `epochs`) frames of several runs stacked, with a `knob` column: ready for plotly."""
    import pandas as pd

    parts = []
    for label, result in results.items():
        part = getattr(result, frame).copy()
        if knob in part.columns:
            raise ValueError(f"curves: the {frame} frames already have a {knob!r} column; label the runs with "
                             f"another name, e.g. curves(results, \"{knob} setting\")")
        part.insert(0, knob, str(label))
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ---- public reference figures (../shared/guide/anchors.md) ----------------------------------------------------
REFERENCES: dict[str, list[dict[str, str]]] = {
    "mixed_precision": [
        {"result": "AMP vs TF32, ResNet-50 training: 938 -> 2470 img/s (2.6x)", "hardware": "one A100",
         "source": "NVIDIA DeepLearningExamples, ResNet-50 v1.5 PyTorch README"},
        {"result": "channels_last with AMP, ResNet-50: about +22%", "hardware": "GPU",
         "source": "PyTorch memory-format tutorial"},
        {"result": "torch.compile over 163 models: +21% in fp32, +51% with AMP", "hardware": "A100",
         "source": "PyTorch 2.0 announcement"},
        {"result": "dense bf16/fp16 peak about 989 TFLOP/s; tf32 about 495", "hardware": "H100 / H200 SXM",
         "source": "NVIDIA spec sheets"},
        {"result": "dense bf16/fp16 peak 312 TFLOP/s; tf32 156", "hardware": "A100", "source": "NVIDIA spec sheet"},
    ],
    "fast_training": [
        {"result": "94% on CIFAR-10 in 2.59 s (airbench94_muon)", "hardware": "one A100",
         "source": "KellerJordan/cifar10-airbench README"},
        {"result": "94% in 3.29 s compiled, 3.83 s eager (airbench94)", "hardware": "one A100",
         "source": "KellerJordan/cifar10-airbench README"},
        {"result": "94% in 26 s (ResNet-9, 'bag of tricks'; batch 512)", "hardware": "one V100",
         "source": "David Page, 'How to train your ResNet' (myrtle.ai)"},
        {"result": "94% in 341 s (the DAWNBench single-GPU record before that)", "hardware": "V100",
         "source": "David Page, 'How to train your ResNet' (myrtle.ai)"},
    ],
    "pruning": [
        {"result": "2:4 semi-structured sparsity, one linear layer: 1.38x", "hardware": "A100 (linear layers only)",
         "source": "PyTorch semi-structured sparsity tutorial"},
        {"result": "removing 30% of channels cuts MACs by about half; latency falls less than MACs",
         "hardware": "(lab exercise)", "source": "MIT 6.5940 EfficientML, lab 1"},
    ],
}
REFERENCES["batch_size"] = [
    {"result": "ResNet-50 on ImageNet at batch 8,192 in one hour, matching batch 256's accuracy with the linear lr "
               "rule and a 5-epoch warm-up", "hardware": "256 GPUs (P100)",
     "source": "Goyal et al. 2017, 'Accurate, Large Minibatch SGD'"},
    {"result": "about 90% scaling efficiency from 8 to 256 GPUs", "hardware": "P100 GPUs",
     "source": "Goyal et al. 2017, 'Accurate, Large Minibatch SGD'"},
    *REFERENCES["fast_training"],
]
REFERENCES["augmentation"] = REFERENCES["fast_training"]
REFERENCES["compile"] = [
    {"result": "channels_last with AMP, ResNet-50 training: over 22% faster", "hardware": "V100 (apex AMP, O2)",
     "source": "PyTorch memory-format tutorial"},
    {"result": "channels_last: 8-35% across torchvision models on Volta GPUs; 26-76% on Ice Lake or newer Xeons",
     "hardware": "V100 / Xeon CPUs", "source": "PyTorch memory-format tutorial"},
    {"result": "channels_last, ResNet-50 on ImageNet: about 30% faster", "hardware": "V100 and A100",
     "source": "MosaicML Composer, Channels Last method card"},
    {"result": "torch.compile over 163 models, training: +21% in fp32, +51% with AMP (works on 93%)",
     "hardware": "A100", "source": "PyTorch 2.0 announcement (pytorch.org/get-started/pytorch-2.0)"},
    {"result": "torch.compile, small CIFAR-10 CNN: 94% in 3.29 s compiled vs 3.83 s eager (1.16x)",
     "hardware": "one A100", "source": "KellerJordan/cifar10-airbench README"},
    {"result": "torch.compile, InceptionV3 training step: 0.0863 -> 0.0709 s (1.2x); compiling can take minutes",
     "hardware": "A100 SXM4 40GB, PyTorch 2.2", "source": "Lightning docs, advanced/compile.rst"},
]
REFERENCES["optimizers"] = REFERENCES["fast_training"]
REFERENCES["grad_accum"] = [
    {"result": "BERT-large, batch 4: 8.86 samples/s, 14,949 MB; batch 1 x 4 accumulated: 7.75 samples/s, 8,681 MB",
     "hardware": "one V100 16 GB",
     "source": "Hugging Face Transformers docs, Efficient Training on a Single GPU (v4.21)"},
    {"result": "use it only when the large batch does not fit: it does not raise throughput over a real large batch",
     "hardware": "(guidance)", "source": "Hugging Face Transformers docs, Gradient accumulation"},
    {"result": "16 per GPU x 4 accumulated: 0.50 s per batch without no_sync, 0.41 s with; across nodes 2.0 vs 0.91 s",
     "hardware": "T4 GPUs (2 in one node; 2 nodes)",
     "source": "Hugging Face Accelerate docs, Gradient synchronization"},
    {"result": "BatchNorm normalises each micro-batch and updates its running statistics on every forward",
     "hardware": "(any)",
     "source": "PyTorch forums, 'What is the running mean of BatchNorm if gradients are accumulated'"},
]
REFERENCES["lr_schedules"] = [
    {"result": "LR range test: raise the lr linearly over a few epochs and read where accuracy starts to rise and "
               "where it turns ragged; cyclical lr reached 81.4% on CIFAR-10 in 25,000 iterations, as many as a "
               "fixed lr reached in 70,000", "hardware": "CIFAR-10, Caffe's example CNN",
     "source": "Smith 2015/2017, 'Cyclical Learning Rates for Training Neural Networks' (WACV 2017)"},
    {"result": "one cycle up to a large lr and down (1cycle): ResNet-56 reached 92.4% on CIFAR-10 in 10,000 "
               "iterations against 91.2% after about 80,000 with a piecewise-constant lr ('super-convergence')",
     "hardware": "CIFAR-10, ResNet-56", "source": "Smith & Topin 2019, 'Super-Convergence' (arXiv 1708.07120)"},
    {"result": "cosine annealing with warm restarts (SGDR): 3.14% and 16.21% test error on CIFAR-10 and CIFAR-100, "
               "state of the art then", "hardware": "CIFAR, wide ResNets",
     "source": "Loshchilov & Hutter 2017, 'SGDR: Stochastic Gradient Descent with Warm Restarts' (ICLR)"},
    {"result": "step schedule for ResNet-50 on ImageNet: lr x0.1 at epochs 30, 60 and 80 of 90, after a 5-epoch "
               "linear warm-up (lr 0.1 x batch / 256)", "hardware": "ImageNet, up to 256 GPUs",
     "source": "Goyal et al. 2017, 'Accurate, Large Minibatch SGD'"},
    {"result": "lr 0.1 divided by 10 when the error plateaus (ImageNet); on CIFAR-10 divided by 10 at 32k and 48k "
               "iterations, stopped at 64k", "hardware": "ImageNet / CIFAR-10, ResNets",
     "source": "He et al. 2016, 'Deep Residual Learning for Image Recognition'"},
    {"result": "ReduceLROnPlateau's defaults: factor 0.1 after patience=10 epochs without a relative improvement "
               "of 1e-4", "hardware": "(any)", "source": "PyTorch docs, torch.optim.lr_scheduler.ReduceLROnPlateau"},
]
REFERENCES["data_loading"] = [
    {"result": "num_workers=0 (the default) loads in the main process, which waits for every batch; num_workers > 0 "
               "overlaps loading with training and should be tuned to the workload, CPU, GPU and storage",
     "hardware": "(guidance)", "source": "PyTorch Performance Tuning Guide (Szymon Migacz)"},
    {"result": "on a GPU set pin_memory=True: pinned host memory makes the copy to the GPU faster and asynchronous",
     "hardware": "GPU", "source": "PyTorch Performance Tuning Guide"},
    {"result": "more workers than the CPUs the process may use: torch warns that excessive worker creation may make "
               "the DataLoader slow or freeze it", "hardware": "(any)",
     "source": "PyTorch, torch.utils.data.DataLoader (its worker-number check)"},
    {"result": "loading, decoding, cropping and resizing on the CPU have become a bottleneck limiting training "
               "speed and scaling; DALI moves them to the GPU", "hardware": "GPU servers",
     "source": "NVIDIA DALI documentation"},
    {"result": "training time is often dominated by data stalls (waiting for data to be fetched and pre-processed); "
               "their loader cut training time by up to 5x against DALI on one server",
     "hardware": "GPU servers of a production cluster",
     "source": "Mohan et al. 2021, 'Analyzing and Mitigating Data Stalls in DNN Training' (VLDB)"},
    {"result": "ResNet-50 on ImageNet to 75% in 20 minutes, by removing data bottlenecks (file format, caching, "
               "compiled CPU pipeline, asynchronous transfer)", "hardware": "one machine (8 A100s)",
     "source": "Leclerc et al., 'FFCV: Accelerating Training by Removing Data Bottlenecks' (CVPR 2023)"},
]
REFERENCES["distributed"] = [
    {"result": "ResNet-50 v1.5 training, 1 -> 8 GPUs: 938 -> 7,248 img/s in TF32 (7.72x, about 96% efficiency); "
               "2,470 -> 16,621 img/s with AMP (6.72x, about 84%: faster compute, same communication)",
     "hardware": "DGX A100 (8x A100 80GB)", "source": "NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README"},
    {"result": "the same on V100s: 7.76x in FP32, 6.93x with AMP", "hardware": "DGX-1 (8x V100 16GB)",
     "source": "NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README"},
    {"result": "DDP reaches near-linear scalability with 256 GPUs when configured appropriately: gradients "
               "all-reduced in buckets (bucket_cap_mb, 25 MiB by default) that overlap backward, no_sync to skip "
               "synchronisation during accumulation", "hardware": "up to 256 GPUs",
     "source": "Li et al. 2020, 'PyTorch Distributed: Experiences on Accelerating Data Parallel Training' (VLDB)"},
    {"result": "ring all-reduce: 90% scaling efficiency for Inception V3 and ResNet-101, 68% for VGG-16 (138M "
               "parameters: more to send per FLOP)", "hardware": "512 Pascal GPUs (128 servers, 25 Gbit/s RoCE)",
     "source": "Horovod docs, Benchmarks (Sergeev & Del Balso 2018)"},
    {"result": "ResNet-50 on ImageNet at 32 images per GPU: about 90% scaling efficiency from 8 to 256 GPUs",
     "hardware": "P100 GPUs (Big Basin servers, 50 Gbit/s Ethernet)",
     "source": "Goyal et al. 2017, 'Accurate, Large Minibatch SGD'"},
    {"result": "a ring all-reduce sends 2 (N-1)/N of the data from each process, the lower bound for any all-reduce: "
               "the time hardly grows with N", "hardware": "(any)",
     "source": "Patarasuk & Yuan 2009, 'Bandwidth optimal all-reduce algorithms for clusters of workstations'"},
]
REFERENCES["ablation"] = [
    {"result": "training refinements stacked one at a time (cosine decay, label smoothing, distillation, mixup, on "
               "top of model tweaks and efficient training) raised ResNet-50's ImageNet top-1 from 75.3% to 79.29%",
     "hardware": "ImageNet, 8 V100 GPUs", "source": "He et al. 2019, 'Bag of Tricks for Image Classification with "
                                                   "Convolutional Neural Networks' (CVPR)"},
    {"result": "a trend in ML papers: failure to identify the sources of empirical gains, e.g. emphasizing "
               "unnecessary modifications to architectures when the gains actually stem from hyper-parameter tuning",
     "hardware": "(guidance)", "source": "Lipton & Steinhardt 2018, 'Troubling Trends in Machine Learning "
                                         "Scholarship'"},
    {"result": "variance from data sampling, parameter initialization and hyper-parameter choice impacts benchmark "
               "results markedly; randomizing more sources of variation estimates the ideal comparison better, at "
               "51x less compute", "hardware": "five deep-learning tasks",
     "source": "Bouthillier et al. 2021, 'Accounting for Variance in Machine Learning Benchmarks' (MLSys)"},
    {"result": "composing regularization methods may lead to diminishing returns in quality improvements",
     "hardware": "(guidance)", "source": "MosaicML Composer, MixUp method card"},
    {"result": "ResNet-50 on ImageNet to 76.6% top-1 in 1.2 hours for $40 with Composer's methods combined, against "
               "3.5 hours and $116 in vanilla PyTorch", "hardware": "AWS GPU instances",
     "source": "MosaicML Composer README"},
    {"result": "94% on CIFAR-10 in 3.29 s; its alternating (derandomized) flip improves over random flipping in every "
               "case where flipping helps at all", "hardware": "one A100",
     "source": "Jordan 2024, '94% on CIFAR-10 in 3.29 Seconds on a Single GPU' (cifar10-airbench)"},
]
REFERENCES["tuning"] = [
    {"result": "random search found models as good as or better than a pure grid search in a small fraction of the "
               "computation; over a 32-dimensional space it matched grid + manual search on 4 of 7 data sets and "
               "beat it on 1; on most data sets only a few hyper-parameters really matter, different ones on "
               "different data sets", "hardware": "neural networks and deep belief networks",
     "source": "Bergstra & Bengio 2012, 'Random Search for Hyper-Parameter Optimization' (JMLR 13)"},
    {"result": "random search is unreliable for deep belief networks; two sequential methods (TPE and a Gaussian "
               "process) found significantly better results than the best previously reported",
     "hardware": "deep belief networks, GPUs",
     "source": "Bergstra, Bardenet, Bengio & Kegl 2011, 'Algorithms for Hyper-Parameter Optimization' (NeurIPS)"},
    {"result": "define-by-run search spaces, with sampling (TPE by default) and pruning of unpromising trials in one "
               "framework; a study shared by many processes through its storage", "hardware": "(software)",
     "source": "Akiba et al. 2019, 'Optuna: A Next-generation Hyperparameter Optimization Framework' (KDD)"},
    {"result": "with limited parallel compute use TPE (a Gaussian process if the space is low-dimensional and "
               "continuous); with plenty of parallel compute, random search or a genetic algorithm",
     "hardware": "(guidance, deep learning)",
     "source": "Optuna docs, Efficient Optimization Algorithms (table from Ozaki et al. 2020)"},
    {"result": "Hyperband (random configurations, most stopped early) gave over an order-of-magnitude speed-up over "
               "its competitors, popular Bayesian optimization methods, on a variety of deep-learning and kernel "
               "problems",
     "hardware": "(benchmarks)", "source": "Li et al. 2018, 'Hyperband' (JMLR 18)"},
    {"result": "ASHA scales linearly with workers and reached a high-quality configuration in half the time of "
               "Google's Vizier with 500 workers", "hardware": "500 workers",
     "source": "Li et al. 2020, 'A System for Massively Parallel Hyperparameter Tuning' (MLSys)"},
    {"result": "with large-scale black-box tuning of every model, standard LSTMs, properly regularised, outperformed "
               "more recent architectures: a tuned baseline changes the ranking", "hardware": "language models",
     "source": "Melis, Dyer & Blunsom 2018, 'On the State of the Art of Evaluation in Neural Language Models' (ICLR)"},
    {"result": "over-fitting the selection criterion (picking the best of many noisy scores) is often as large as the "
               "differences between learning algorithms", "hardware": "(any)",
     "source": "Cawley & Talbot 2010, 'On Over-fitting in Model Selection and Subsequent Selection Bias in "
               "Performance Evaluation' (JMLR 11)"},
]
REFERENCES["quantization"] = [
    {"result": "8-bit post-training quantization, weights per channel and activations per layer: classification "
               "accuracy within 2% of floating point for a wide variety of CNNs; 8-bit weights make models 4x "
               "smaller, even where 8-bit arithmetic is not supported; quantized implementations 2x-3x faster than "
               "floating point on CPUs, up to 10x on DSPs with fixed-point SIMD (Qualcomm Hexagon HVX)",
     "hardware": "mobile CPUs and DSPs (TensorFlow Lite)",
     "source": "Krishnamoorthi 2018, 'Quantizing deep convolutional networks for efficient inference: A whitepaper' "
               "(arXiv 1806.08342)"},
    {"result": "8-bit weights and activations with integer-only arithmetic: close to 4x smaller memory footprint, and "
               "a better latency-accuracy trade-off than floating point even for MobileNets, on ImageNet "
               "classification and COCO detection", "hardware": "ARM CPUs of phones",
     "source": "Jacob et al. 2018, 'Quantization and Training of Neural Networks for Efficient "
               "Integer-Arithmetic-Only Inference' (CVPR)"},
    {"result": "int8 gives a 4x reduction in model size and in memory bandwidth; hardware support for int8 "
               "computation is typically 2 to 4 times faster than fp32", "hardware": "CPUs with int8 support",
     "source": "PyTorch documentation, 'Quantization'"},
    {"result": "the x86 quantization backend (oneDNN and FBGEMM): int8 inference 2.97x faster than fp32, geometric "
               "mean over 69 models, at batch 1 on 4 cores per instance (the older FBGEMM backend: 1.43x)",
     "hardware": "4th Gen Intel Xeon Scalable with AMX (AWS r7iz.metal-16xl)",
     "source": "Gong & Xia 2023, 'Accelerate PyTorch INT8 Inference with New X86 Quantization Backend on X86 "
               "CPUs' (Intel / PyTorch)"},
    {"result": "int8 slower than fp32: a model quantized by following PyTorch's tutorial 'PyTorch 2 Export "
               "Quantization with X86 Backend through Inductor' ran significantly slower than before quantization",
     "hardware": "x86 CPU", "source": "pytorch/pytorch#144434 (2025)"},
    {"result": "BERT quantized with torchao's dynamic int8 (Int8DynamicActivationInt8WeightConfig) ran slower than "
               "the fp32 model on a CPU, at the same accuracy; torchao's dynamic int8 is also reported noticeably "
               "slower than the older torch.ao quantize_dynamic()", "hardware": "CPU",
     "source": "pytorch/ao#3157 (2025); pytorch/ao#4365 (2026, open)"},
]
REFERENCES["distillation"] = [
    {"result": "MNIST: a net of two hidden layers of 800 ReLUs trained alone made 146 test errors; the same net also "
               "matching the soft targets of a large net (2 x 1200 units, dropout, jittered images: 67 errors) at "
               "temperature 20 made 74", "hardware": "MNIST, fully connected nets",
     "source": "Hinton, Vinyals & Dean 2015, 'Distilling the Knowledge in a Neural Network' (arXiv 1503.02531)"},
    {"result": "speech: one model 58.9% test frame accuracy (WER 10.9%), an ensemble of 10 61.1% (10.7%), one model "
               "distilled from the ensemble 60.8% (10.7%): more than 80% of the ensemble's gain in one model",
     "hardware": "acoustic model of a commercial speech system",
     "source": "Hinton, Vinyals & Dean 2015 (Table 1)"},
    {"result": "soft targets as a regulariser: trained on 3% of the speech data, hard labels reached 44.5% test frame "
               "accuracy (stopped early, it overfits), soft targets 57.0%, against 58.9% with all the data",
     "hardware": "the same speech model", "source": "Hinton, Vinyals & Dean 2015 (Table 5)"},
    {"result": "DistilBERT: 40% smaller than BERT-base and 60% faster, retaining 97% of its language understanding",
     "hardware": "GLUE benchmark; speed at inference",
     "source": "Sanh, Debut, Chaumond & Wolf 2019, 'DistilBERT, a distilled version of BERT' (arXiv 1910.01108)"},
    {"result": "DeiT: a distillation token learning from a RegNetY-16GF convnet teacher (82.9%) raised ImageNet top-1 "
               "from 81.8% to 83.4% (DeiT-B) and from 72.2% to 74.5% (DeiT-Ti): the student beat its teacher",
     "hardware": "ImageNet, 300 epochs", "source": "Touvron et al. 2021, 'Training data-efficient image transformers "
                                                    "& distillation through attention' (ICML); facebookresearch/deit"},
    {"result": "a good teacher is patient and consistent: teacher and student see the same augmented view, and the "
               "student trains far longer than supervised training would (no overfitting even at a million epochs "
               "on small data sets); a ResNet-50 distilled this way reached 82.8% ImageNet top-1",
     "hardware": "ImageNet and smaller vision data sets",
     "source": "Beyer et al. 2022, 'Knowledge distillation: A good teacher is patient and consistent' (CVPR)"},
]
REFERENCES["transfer_learning"] = [
    {"result": "features go from general (first layer: Gabor filters and colour blobs) to specific (last layers); "
               "transferability falls as the base and target tasks grow apart, yet features from a distant task "
               "beat random ones; freezing a network split between co-adapted middle layers costs accuracy "
               "(fragile co-adaptation), and transferred features that are fine-tuned leave a boost to "
               "generalisation that lingers", "hardware": "ImageNet split into two tasks of 500 classes, an "
                                                          "AlexNet-style network",
     "source": "Yosinski, Clune, Bengio & Lipson 2014, 'How transferable are features in deep neural networks?' "
               "(NeurIPS)"},
    {"result": "16 ImageNet networks on 12 image classification data sets: ImageNet accuracy predicts transfer "
               "accuracy, r = 0.99 used as fixed feature extractors and r = 0.96 fine-tuned; on two small "
               "fine-grained data sets ImageNet pretraining gave minimal benefit", "hardware": "16 networks, 12 "
                                                                                        "data sets",
     "source": "Kornblith, Shlens & Le 2019, 'Do Better ImageNet Models Transfer Better?' (CVPR)"},
    {"result": "Mask R-CNN trained from random initialization was no worse than with ImageNet pre-training, given "
               "more iterations, down to 10% of COCO (10k images); pre-training speeds up convergence early but "
               "does not necessarily regularise or improve final accuracy, and helps against overfitting only in a "
               "very small data regime; 50.9 AP on COCO with no external data",
     "hardware": "COCO detection and segmentation, GPUs",
     "source": "He, Girshick & Dollar 2019, 'Rethinking ImageNet Pre-training' (ICCV)"},
    {"result": "ResNet-18 pretrained on ImageNet, trained on about 120 images each of ants and bees: as a fixed "
               "feature extractor (only the new last layer trains) it takes about half the time on a CPU, since "
               "gradients are not computed for most of the network; the forward pass still is",
     "hardware": "CPU", "source": "PyTorch tutorials, 'Transfer Learning for Computer Vision' (Chilamkurthy)"},
    {"result": "networks pre-trained on entirely random labels train faster downstream than from scratch (their "
               "first layers align with the data's principal components); specialisation of later layers can hide "
               "this positive transfer", "hardware": "VGG16, ResNet18 on CIFAR10 and ImageNet",
     "source": "Maennel et al. 2020, 'What Do Neural Networks Learn When Trained With Random Labels?' (NeurIPS)"},
]


def reference(topic: str, mine: dict[str, Any] | None = None) -> pd.DataFrame:
    """Public figures for a lesson's topic with your own beside them: `mine` maps what you measured (a short
    description) to its value, listed first with this machine as its hardware."""
    import pandas as pd

    if topic not in REFERENCES:
        raise ValueError(f"reference: unknown topic {topic!r}; use one of {sorted(REFERENCES)}")
    own = [{"result": f"{what}: {value:.3g}" if isinstance(value, float) else f"{what}: {value}",
            "hardware": machine(), "source": "you, in this notebook"} for what, value in (mine or {}).items()]
    return pd.DataFrame(own + REFERENCES[topic], columns=["result", "hardware", "source"])


# ---- the exercise with the panel -------------------------------------------------------------------------------
def panel(**settings: Any):
    """The interactive lab panel (a labkit.Lab) preset to `settings`, for a lesson's exercise. Showing it trains
    nothing: a run starts when you press Run, so a headless re-run of the lesson never waits on it."""
    from ..config import RunConfig
    from ..lab import Lab

    return Lab(RunConfig(**settings))


# The teaching helpers (they record through `record` above).
from .exercises import check  # noqa: E402
from .teach import Claim, claims, claims_table, predict, reveal  # noqa: E402
