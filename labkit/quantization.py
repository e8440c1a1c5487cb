"""Post-training int8 quantization of a stored model, measured against fp32 and bf16: `labkit.quantize(run_id)`.

Two methods, both from torchao (`torch.ao.quantization` is being retired in its favour):
- **dynamic** int8 (`quantize_(model, Int8DynamicActivationInt8WeightConfig())`): the weights of the Linear layers
  are stored in int8; each input is scaled to int8 at every call, from that batch's own range. Nothing to
  calibrate, but only Linear layers: on a CNN the convolutions, nearly all of the weights and time, stay fp32.
- **static** int8 (PT2E: `torch.export`, then `prepare_pt2e` / `convert_pt2e` with the `X86InductorQuantizer`):
  convolutions and Linear layers get int8 weights *and* activations whose scales were fixed beforehand by
  calibration, running the model on a few training batches with observers on each layer's input. The converted
  graph is quantize/dequantize pairs around float ops, a reference of the arithmetic; the speed comes when
  Inductor (`torch.compile` with freezing) rewrites those patterns into oneDNN int8 kernels.

int8 is not always faster, and the report says so when it is not. A small model at batch 1 spends its time in
per-layer overheads (quantizing inputs, dequantizing outputs, calling kernels), not in the arithmetic that int8
speeds up; without VNNI or AMX the CPU has no fast int8 dot product; eager PT2E is the reference graph (slower
than fp32 by design); torchao's dynamic int8 on CPU has been reported slower than fp32 and than the old
`torch.ao` dynamic quantization (pytorch/ao#3157, pytorch/ao#4365), and PT2E int8 slower than fp32 too
(pytorch/pytorch#144434). What holds on this machine is what the table shows.

Every variant is measured on the same test set, on the CPU, with torch's current thread count: accuracy, size on
disk (the bytes of its saved state dict), and latency at batch 1 and at a large batch (median of repeated calls
after warm-up). With `compile=True` every variant is compiled the same way, so the comparison is the number
format alone; compilation (and the export it starts from) is timed apart and never inside a latency.
The evaluation is stored as a record of kind "quantize" naming its source run: `labkit.runs(kind="quantize")`.
"""
from __future__ import annotations

import copy
import io
import logging
import os
import platform
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from . import checkpoints, devices
from . import data as data_mod
from .store import Store

METHODS = ("static", "dynamic")
VARIANTS = ("fp32", "bf16", "int8")
METHOD_TEXT = {"static": "static int8 (PT2E, X86InductorQuantizer, calibrated)",
               "dynamic": "dynamic int8 (torchao, Linear layers)"}
TABLE_COLUMNS = ["variant", "method", "compiled", "accuracy", "size_bytes", "size_vs_fp32", "latency_ms_b1",
                 "latency_ms_large", "images_per_s_b1", "images_per_s_large", "prepare_s", "compile_s",
                 "quantized_layers"]
LAYER_COLUMNS = ["layer", "type", "params", "quantized", "weights", "activations"]


class QuantizationError(RuntimeError):
    """The model could not be quantized as asked; the message says why and what to try instead."""


# ---- the result ------------------------------------------------------------------------------------------------
@dataclass
class QuantizeResult:
    """One evaluation: `table` (a row per variant: accuracy, size, latencies, costs), `layers` (each Conv2d and
    Linear of the int8 model: quantized or not), `notes` (what the measurements say, computed from them) and
    `evaluation_id`, the store record (None when not stored)."""

    source_run: int | None  # None when quantized from a checkpoint file
    checkpoint: str
    method: str
    table: pd.DataFrame
    layers: pd.DataFrame
    notes: list[str]
    threads: int
    large_batch: int
    evaluation_id: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, variant: str) -> dict[str, Any]:
        rows = self.table[self.table["variant"] == variant]
        if rows.empty:
            raise ValueError(f"variant {variant!r} was not measured; the table has {list(self.table['variant'])}")
        return rows.iloc[0].to_dict()

    def speedup(self, variant: str = "int8", batch: str = "large") -> float:
        """fp32's latency over the variant's at batch 1 (`batch="b1"`) or at the large batch: above 1 is faster."""
        if batch not in ("b1", "large"):
            raise ValueError(f"batch={batch!r}: use 'b1' or 'large'")
        column = f"latency_ms_{batch}"
        return self.row("fp32")[column] / self.row(variant)[column]

    def figure(self):
        """Accuracy, size and latencies of fp32 / bf16 / int8 side by side (labkit.plots.quantization_figure)."""
        from .lab.plots import quantization_figure

        return quantization_figure(self.table, title=f"{self.source()}: {METHOD_TEXT[self.method]}; CPU, "
                                                     f"{threads_text(self.threads)}", large_batch=self.large_batch)

    def source(self) -> str:
        return f"run {self.source_run}" if self.source_run is not None else self.checkpoint

    def summary(self) -> str:
        shown = self.table.assign(
            accuracy=self.table["accuracy"].map("{:.1%}".format),
            size=self.table["size_bytes"].map(lambda b: f"{b / 1024:,.1f} KiB"),
            b1_ms=self.table["latency_ms_b1"].map("{:.2f}".format),
            large_ms=self.table["latency_ms_large"].map("{:.1f}".format),
            images_per_s=self.table["images_per_s_large"].map("{:,.0f}".format),
            compile_s=self.table["compile_s"].map(lambda s: "-" if pd.isna(s) else f"{s:.1f}"))
        columns = ["variant", "compiled", "accuracy", "size", "b1_ms", "large_ms", "images_per_s", "compile_s",
                   "quantized_layers"]
        head = (f"{self.source()}: {METHOD_TEXT[self.method]}; CPU, {threads_text(self.threads)}; latency: "
                f"median ms per batch at batch 1 and {self.large_batch}" +
                (f"; evaluation {self.evaluation_id}" if self.evaluation_id is not None else ""))
        return "\n".join([head, shown[columns].rename(columns={"large_ms": f"b{self.large_batch}_ms"})
                         .to_string(index=False), *[f"- {note}" for note in self.notes]])

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return self.summary()


# ---- measuring ---------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """A model to measure: what was done to it, the input dtype it takes, what making it cost."""
    model: nn.Module
    method: str
    dtype: torch.dtype
    prepare_s: float
    layers: pd.DataFrame | None = None  # int8 only: which layers became int8


def saved_bytes(model: nn.Module) -> int:
    """The size on disk of `torch.save(model.state_dict())`: the weights as a deployment would keep them."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


ROUNDS = 3  # each latency's timed calls come in this many blocks, the variants taking turns


def latencies_ms(calls: dict[Any, tuple[Callable, torch.Tensor]], warmup: int, repeats: int) -> dict[Any, float]:
    """The median milliseconds of each call (a model and its input), timed in turns: ROUNDS times over, each call
    runs a block of consecutive timed calls, then the next one does. A slow moment of a shared machine then falls
    on every variant's calls instead of spoiling whichever one was being timed, and the median sets it aside.
    `warmup` untimed calls come first (the first calls allocate memory and pick kernels); `repeats` timed calls
    in all, rounded up to a multiple of ROUNDS."""
    for run, x in calls.values():
        for _ in range(warmup):
            run(x)
    times: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(ROUNDS):
        for key, (run, x) in calls.items():
            for _ in range(-(-repeats // ROUNDS)):
                start = time.perf_counter()
                run(x)
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(seconds) * 1e3 for key, seconds in times.items()}


def accuracy(model: Callable, inputs: torch.Tensor, labels: torch.Tensor, batch: int, dtype: torch.dtype) -> float:
    """Top-1 accuracy in batches of exactly `batch`: the last one is padded with zeros (and their predictions
    dropped), because a compiled model is specialised to the batch sizes it was compiled for."""
    correct = 0
    for start in range(0, len(inputs), batch):
        x = inputs[start:start + batch]
        n = len(x)
        if n < batch:
            x = torch.cat([x, x.new_zeros(batch - n, *x.shape[1:])])
        predicted = model(x.to(dtype))[:n].float().argmax(1)
        correct += int((predicted == labels[start:start + n]).sum())
    return correct / len(inputs)


BATCH_DIM = ({0: torch.export.Dim("batch")},)  # exported graphs take any batch size


def exported(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The model captured by torch.export as a GraphModule."""
    return torch.export.export(model, (example,), dynamic_shapes=BATCH_DIM).module()


def compiled(variant: Variant, inputs: list[torch.Tensor]) -> tuple[Callable, float]:
    """The variant compiled by Inductor, and the seconds it took: the export, then the first call at each batch
    shape in `inputs`, where compilation happens (a compiled model is specialised to its shapes, dynamic=False,
    so every later call runs compiled code). Runs under `inference()`: freezing lets Inductor treat the weights
    as constants, which is what turns PT2E's quantize/dequantize patterns into int8 kernels.

    The model is compiled as an exported GraphModule, never as the nn.Module: Dynamo caches compiled code per
    Python function, and every nn.Sequential shares one forward, so a few models compiled in one kernel would
    reach its recompile limit and fall back to eager without a word. Each exported graph has its own code."""
    start = time.perf_counter()
    graph = variant.model if isinstance(variant.model, torch.fx.GraphModule) else exported(
        variant.model, inputs[-1].to(variant.dtype))
    fast = torch.compile(graph, dynamic=False)
    for x in inputs:
        fast(x.to(variant.dtype))
    return fast, time.perf_counter() - start


@contextmanager
def inference():
    import torch._inductor.config as inductor_config

    with torch.no_grad(), inductor_config.patch(freezing=True):
        yield


@contextmanager
def without_known_noise():
    """Silence what the libraries print on every call and that says nothing about this model: torchao's import
    logs a deprecation of its own registration with torch, its quantizer warns for each pooling op it leaves in
    fp32 (the layers table says what became int8), and Inductor's int8 lowering warns about its own tensor copy."""
    # ... and the C++ compiler's first use on a CPU-only machine logs that no CUDA runtime was found.
    logs = [logging.getLogger(name) for name in ("torch.utils._pytree", "torch.utils.cpp_extension")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The input of .* is not quantized, skip annotate")
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", module="torch._inductor")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


# ---- the variants --------------------------------------------------------------------------------------------
def bf16_variant(model: nn.Module) -> Variant:
    """The weights cast to bf16 (inputs too), not autocast: autocast keeps the fp32 weights and casts them again at
    every call, which suits training; for inference the cast is done once, and the file is half the size."""
    start = time.perf_counter()
    cast = copy.deepcopy(model).to(torch.bfloat16)
    return Variant(cast, "weights cast to bf16", torch.bfloat16, time.perf_counter() - start)


def dynamic_int8(model: nn.Module) -> Variant:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    from torchao.utils import TorchAOBaseTensor

    start = time.perf_counter()
    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())  # every nn.Linear; the rest stays as it is
    seconds = time.perf_counter() - start
    rows = []
    for name, module in quantized.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            int8 = isinstance(module.weight, TorchAOBaseTensor)  # torchao swapped the weight for an int8 tensor
            rows.append(layer_row(name, module, model, int8, "int8, scaled per call" if int8 else "fp32"))
    return Variant(quantized, METHOD_TEXT["dynamic"], torch.float32, seconds,
                   pd.DataFrame(rows, columns=LAYER_COLUMNS))


def static_int8(model: nn.Module, calibration: list[torch.Tensor], model_name: str) -> Variant:
    """PT2E: export, insert observers (prepare_pt2e), run the calibration batches, convert to int8."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    start = time.perf_counter()
    try:
        graph = exported(model, calibration[0])
    except Exception as exc:
        raise QuantizationError(
            f"torch.export could not capture model {model_name!r} ({type(exc).__name__}: {first_line(exc)}); "
            "static int8 (PT2E) needs an exported graph. Try method='dynamic', which needs none.") from exc
    # Without VNNI (or AMX) the int8 dot product can overflow its 16-bit intermediate sums: 7-bit activations
    # avoid that, as the quantizer's own documentation asks for such CPUs.
    config = get_default_x86_inductor_quantization_config(reduce_range=not vnni())
    try:
        prepared = prepare_pt2e(graph, X86InductorQuantizer().set_global(config))
        with torch.no_grad():
            for batch in calibration:  # the observers record each quantized input's range: it fixes its scale
                prepared(batch)
        converted = convert_pt2e(prepared)
    except Exception as exc:
        known = ""
        if "more than one output node" in str(exc):
            known = (" The quantizer's fusion patterns cannot take a module that the forward calls more than once "
                     "(torchvision's ResNet blocks call one ReLU twice): pytorch/ao#4478.")
        raise QuantizationError(
            f"PT2E could not quantize model {model_name!r} ({type(exc).__name__}: {first_line(exc)}).{known} "
            "method='dynamic' needs no graph, but quantizes only the Linear layers.") from exc
    drop_unused_weights(converted)
    seconds = time.perf_counter() - start
    return Variant(converted, METHOD_TEXT["static"], torch.float32, seconds, static_layers(model, converted))


def drop_unused_weights(graph: torch.fx.GraphModule) -> None:
    """convert_pt2e leaves the original fp32 weights attached to the graph, unused (the graph reads their int8
    copies and the BatchNorm-folded biases): without this they would be saved with it and count in its size."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(graph.get_submodule(owner), attribute)


def static_layers(model: nn.Module, converted: torch.fx.GraphModule) -> pd.DataFrame:
    """Each Conv2d and Linear of the model, read off the converted graph: int8 when its weight comes from a
    dequantize of int8 values and its input from a dequantize of uint8 activations."""
    int8 = {}
    for node in converted.graph.nodes:
        if node.op == "call_function" and node.target in (torch.ops.aten.conv2d.default,
                                                          torch.ops.aten.linear.default):
            stack = node.meta.get("nn_module_stack") or {}
            if not stack:
                continue
            name = list(stack.values())[-1][0]  # the innermost module: the layer this op came from
            x, weight = node.args[0], node.args[1]
            int8[name] = all(isinstance(arg, torch.fx.Node) and "dequantize" in str(arg.target) for arg in (x, weight))
    rows = [layer_row(name, module, model, int8.get(name, False), "uint8, calibrated scale" if int8.get(name) else
                      "fp32") for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def layer_row(name: str, module: nn.Module, original: nn.Module, int8: bool, activations: str) -> dict[str, Any]:
    return {"layer": name, "type": type(module).__name__, "params": original.get_submodule(name).weight.numel(),
            "quantized": bool(int8), "weights": "int8" if int8 else "fp32", "activations": activations}


def vnni() -> bool:
    """Whether this CPU has a fast int8 dot product (AVX512-VNNI, AVX-VNNI or AMX); True where torch cannot tell."""
    return getattr(torch.cpu, "_is_vnni_supported", lambda: True)() or "amx_int8" in devices.cpu_flags()


def threads_text(threads: int) -> str:
    return f"{threads} thread" + ("s" if threads != 1 else "")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---- what the measurements say -------------------------------------------------------------------------------
def verdicts(table: pd.DataFrame, layers: pd.DataFrame, method: str, large_batch: int) -> list[str]:
    """The notes: int8 (and bf16) against fp32 in speed, size and accuracy, and which layers stayed fp32."""
    rows = {row["variant"]: row for row in table.to_dict("records")}
    notes = []
    fp32 = rows.get("fp32")
    for name in ("int8", "bf16"):
        row = rows.get(name)
        if fp32 is None or row is None:
            continue
        for batch, column in ((1, "latency_ms_b1"), (large_batch, "latency_ms_large")):
            ratio = row[column] / fp32[column]
            if ratio > 1.1:
                verdict = f"{ratio:.2f}x slower than"
            elif ratio < 1 / 1.1:
                verdict = f"{1 / ratio:.2f}x faster than"
            else:
                verdict = "as fast as"
            notes.append(f"{name} is {verdict} fp32 at batch {batch} here ({row[column]:.2f} ms against "
                         f"{fp32[column]:.2f} ms per batch)")
        if name == "int8":
            notes.append(f"int8 is {row['size_bytes'] / fp32['size_bytes']:.2f}x fp32's size on disk "
                         f"({row['size_bytes'] / 1024:,.1f} KiB against {fp32['size_bytes'] / 1024:,.1f} KiB); "
                         f"accuracy {row['accuracy']:.1%} against {fp32['accuracy']:.1%} "
                         f"({(row['accuracy'] - fp32['accuracy']) * 100:+.1f} points)")
    int8 = rows.get("int8")
    if int8 is not None and fp32 is not None and any(int8[c] > 1.1 * fp32[c] for c in ("latency_ms_b1",
                                                                                         "latency_ms_large")):
        notes.append(SLOWER["eager" if method == "static" and not int8["compiled"] else method])
    if len(layers):
        kept = layers[~layers["quantized"]]
        share = layers.loc[layers["quantized"], "params"].sum() / max(1, layers["params"].sum())
        percent = f"{share:.0%}" if share == 0 or share >= 0.01 else "under 1%"
        text = f"{int(layers['quantized'].sum())} of {len(layers)} layers are int8, {percent} of their weights"
        if len(kept):
            names = ", ".join(f"{r.layer} ({r.type})" for r in kept.head(6).itertuples())
            text += f"; stayed fp32: {names}" + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")
        if method == "dynamic" and share < 0.5:
            text += ("; dynamic int8 quantizes Linear layers only, and here the convolutions hold the weights: "
                     "method='static' quantizes them")
        notes.append(text)
    return notes


SLOWER = {  # why int8 can be slower, by what ran: compiled static, dynamic (eager or compiled), eager static
    "static": "why int8 can be slower: each int8 layer quantizes its input and dequantizes its output, fixed costs "
              "that small convolutions (and batch 1) do not repay with faster arithmetic; PT2E int8 slower than "
              "fp32 on CPUs is a public report too (pytorch/pytorch#144434)",
    "dynamic": "why int8 can be slower: dynamic int8 measures each input's range and quantizes it at every call, "
               "and a small Linear layer gains little from int8 arithmetic; torchao's dynamic int8 on CPU is "
               "reported slower than torch.ao's older dynamic quantization too (pytorch/ao#4365)",
    "eager": "why int8 is slower here: not compiled, PT2E's int8 model is its reference graph, every int8 layer "
             "dequantized back to fp32 before a float kernel runs: a simulation of the arithmetic, slower than "
             "fp32 by design; compile=True lowers it to int8 kernels",
}


# ---- the entry point -----------------------------------------------------------------------------------------
def quantize(source: int | str | os.PathLike, method: str = "static", *, store: Store | str | None = None,
             record: bool = True, calibration_batches: int = 10, batch_size: int = 64, large_batch: int = 256,
             repeats: int = 20, warmup: int = 3, test_size: int | None = None, variants: tuple[str, ...] = VARIANTS,
             compile: bool = True, progress: bool = True) -> QuantizeResult:
    """Quantize a stored model to int8 and measure it against fp32 and bf16 on the same test set, on the CPU.

    source: a run id (trained with save=True) or a checkpoint path. method: "static" (PT2E: int8 convolutions
    and Linear layers, activations calibrated on `calibration_batches` training batches of `batch_size`) or
    "dynamic" (torchao: int8 Linear layers, activations scaled per call). large_batch: the batch size timed
    besides batch 1. repeats / warmup: timed and untimed calls per latency (timed in 3 rounds, the variants
    taking turns). test_size: test images for accuracy (None: the run's own test set). variants: any of "fp32",
    "bf16", "int8". compile: measure each variant compiled by Inductor (its cost reported as compile_s), else
    eager. store: the results store where a run id is looked up and the evaluation recorded (None: the
    default); record=False records nothing.

    Returns a QuantizeResult. Raises CheckpointError for a run without a checkpoint, ValueError for a bad
    argument, QuantizationError when the model cannot be quantized (the evaluation is then recorded as failed)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a quantization method: use 'static' (int8 convolutions and "
                         "Linear layers, calibrated; PT2E) or 'dynamic' (int8 Linear layers; torchao).")
    variants = tuple(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants={variants!r}: choose one or more of {VARIANTS}.")
    for name, value, least in (("calibration_batches", calibration_batches, 1), ("batch_size", batch_size, 2),
                               ("large_batch", large_batch, 2), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}={value!r}: give an integer of at least {least}.")
    if method == "static" and "int8" in variants and platform.machine().lower() not in ("x86_64", "amd64"):
        raise ValueError(f"method='static' uses the x86 Inductor quantizer, for x86 CPUs; this machine is "
                         f"{platform.machine()}: use method='dynamic'.")
    checkpoint = checkpoints.read(source, store)
    busy = [cores_busy_elsewhere()]  # is another program competing for the CPU? (again after measuring)
    cfg = checkpoint.config
    data = data_mod.load(cfg.dataset, cfg.train_size, test_size if test_size is not None else cfg.test_size)
    calibration = calibration_batches_of(data.train, checkpoint, calibration_batches, batch_size, cfg.seed)
    test_images, test_labels = images_of(data.test, range(len(data.test)))
    test_inputs = checkpoint.normalize(test_images)
    # batch 1: the first test image; the large batch: the first test images, repeated when there are fewer
    timed_inputs = [test_inputs[:1], test_inputs[torch.arange(large_batch) % len(test_inputs)]]
    threads = torch.get_num_threads()
    settings = {"method": method, "calibration_batches": len(calibration), "batch_size": batch_size,
                "large_batch": large_batch, "repeats": repeats, "warmup": warmup, "test_images": len(test_inputs),
                "compile": compile, "variants": list(variants), "threads": threads}

    recorder = Store.of(store) if record else None
    evaluation_id = None
    with without_known_noise():
        import torchao
    if recorder is not None:
        info = {**devices.describe(torch.device("cpu")), "source_run": checkpoint.run_id,
                "checkpoint": str(checkpoint.path), "torchao": torchao.__version__, **settings}
        evaluation_id = recorder.start_run(cfg.to_dict(), info, kind="quantize")
    try:
        with without_known_noise():
            rows, layers, notes = measure(checkpoint, method, variants, calibration, test_inputs, test_labels,
                                          timed_inputs, repeats, warmup, compile, progress)
    except BaseException as exc:
        if recorder is not None:
            status = "failed" if isinstance(exc, Exception) else "stopped"  # Ctrl-C (KeyboardInterrupt): stopped
            recorder.end_run(evaluation_id, status, {"source_run": checkpoint.run_id, **settings},
                             f"{type(exc).__name__}: {exc}")
        raise
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if "fp32" in variants:
        table["size_vs_fp32"] = table["size_bytes"] / table.loc[table["variant"] == "fp32", "size_bytes"].iloc[0]
    busy.append(cores_busy_elsewhere())
    busy_text = busy_note(busy)
    notes = verdicts(table, layers, method, large_batch) + notes + ([busy_text] if busy_text else [])
    result = QuantizeResult(checkpoint.run_id, str(checkpoint.path), method, table, layers, notes, threads,
                            large_batch, evaluation_id, settings)
    if recorder is not None:
        recorder.end_run(evaluation_id, "completed", {
            "source_run": checkpoint.run_id, **settings, "table": table.to_dict("records"),
            "layers": layers.to_dict("records"), "notes": notes}, None)
    return result


def measure(checkpoint, method, variants, calibration, test_inputs, test_labels, timed_inputs, repeats, warmup,
            compile, progress) -> tuple[list[dict], pd.DataFrame, list[str]]:
    """Make every variant (int8 first: a model that cannot be quantized fails before anything is measured), then
    measure each: its rows for the table, the int8 layers and any notes on the way."""
    from tqdm.auto import tqdm

    model = checkpoint.model("cpu")
    made = {}
    if "int8" in variants:
        made["int8"] = static_int8(model, calibration, checkpoint.config.model) if method == "static" else \
            dynamic_int8(model)
    if "bf16" in variants:
        made["bf16"] = bf16_variant(model)
    made["fp32"] = Variant(model, "as trained", torch.float32, 0.0)
    notes: list[str] = []
    runs, compile_s = {}, {}
    bar = tqdm(total=2 * len(variants) + 1, desc=f"quantize ({method})", disable=not progress)
    with inference():
        for name in variants:
            bar.set_postfix_str(f"compile {name}" if compile else name)
            runs[name], compile_s[name] = made[name].model, None
            if compile:
                try:
                    runs[name], compile_s[name] = compiled(made[name], timed_inputs)
                except Exception as exc:  # measured eager instead, and said so
                    notes.append(f"torch.compile failed for {name} ({type(exc).__name__}: {first_line(exc)}): "
                                 f"{name} is measured eager")
            bar.update()
        bar.set_postfix_str("latency")
        latency = latencies_ms({(name, i): (runs[name], x.to(made[name].dtype)) for name in variants
                                for i, x in enumerate(timed_inputs)}, warmup, repeats)
        bar.update()
        large = len(timed_inputs[-1])
        rows = []
        for name in variants:
            bar.set_postfix_str(f"accuracy {name}")
            variant, b1, big = made[name], latency[name, 0], latency[name, 1]
            rows.append({
                "variant": name, "method": variant.method, "compiled": compile_s[name] is not None,
                "accuracy": accuracy(runs[name], test_inputs, test_labels, large, variant.dtype),
                "size_bytes": saved_bytes(variant.model), "size_vs_fp32": None,
                "latency_ms_b1": b1, "latency_ms_large": big,
                "images_per_s_b1": 1e3 / b1, "images_per_s_large": large * 1e3 / big,
                "prepare_s": variant.prepare_s, "compile_s": compile_s[name],
                "quantized_layers": 0 if variant.layers is None else int(variant.layers["quantized"].sum())})
            bar.update()
    bar.close()
    if "bf16" in variants and not devices.precisions(torch.device("cpu"))["bf16"].native:
        notes.append("bf16 is emulated on this CPU (no AVX512-BF16 or AMX-BF16 units): it computes in fp32 after "
                     "converting, so expect it slower than fp32")
    layers = made["int8"].layers if "int8" in made else pd.DataFrame(columns=LAYER_COLUMNS)
    return rows, layers, notes


def cores_busy_elsewhere(seconds: float = 0.25) -> float | None:
    """Cores' worth of CPU time that other work used over `seconds` while this thread sleeps (Linux /proc/stat;
    None elsewhere). Unlike the load average it does not count this process's own work of the last minute."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4]

    try:
        total, idle = sample()
        time.sleep(seconds)
        total_after, idle_after = sample()
    except (OSError, ValueError):
        return None
    elapsed = total_after - total
    return (1 - (idle_after - idle) / elapsed) * (os.cpu_count() or 1) if elapsed > 0 else None


def busy_note(busy: list[float | None]) -> str | None:
    """A note when other work kept half a core or more busy before or after the measurement: latencies then read
    high and vary (with every core in use, a thread that waits for a busy one can make a call ten times slower)."""
    most = max((b for b in busy if b is not None), default=0.0)
    if most < 0.5:
        return None
    return (f"other work kept {most:.1f} of the {os.cpu_count()} cores busy around the measurement: latencies read "
            "high and vary; re-measure when the machine is quiet")


# ---- data ----------------------------------------------------------------------------------------------------
def images_of(split, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels at `indices` of a split: tensors (labkit.data.Split) or an image folder's Dataset,
    decoded one image at a time."""
    indices = list(indices)
    if isinstance(split, data_mod.Split):
        index = torch.tensor(indices, dtype=torch.long)
        return split.images[index], split.labels[index]
    pairs = [split[i] for i in indices]
    return torch.stack([image for image, _ in pairs]), torch.tensor([label for _, label in pairs])


def calibration_batches_of(train, checkpoint, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """`batches` training batches of `batch_size` normalised images, drawn at random (the run's seed) without
    augmentation: what the model saw in training, as it will see inputs at inference."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    chosen = order[: batches * batch_size].tolist()
    images, _ = images_of(train, chosen)
    inputs = checkpoint.normalize(images)
    return [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size) if len(inputs[i:i + batch_size]) > 1]
