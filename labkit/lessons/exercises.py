"""Fill-in exercises: the student writes the few lines that make a technique, a check compares them with the real
thing (PyTorch's or labkit's own implementation) on fixed cases.

    def to_bf16(x):
        ...                                   # the student's code
    lessons.check("bf16_round", to_bf16)      # ok / which case differs / not attempted yet

A function that still raises NotImplementedError is "not attempted": the check says so and the lesson goes on
(headless runs of the unsolved lesson pass). `strict=True` (the worked solutions) raises on anything but a pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..techniques._lazy import lazy_import

torch = lazy_import("torch")


@dataclass(frozen=True)
class Exercise:
    name: str
    task: str  # what the student's function does, in one line
    cases: Callable[[], Iterator[tuple[str, tuple, Any]]]  # (label, arguments, expected result)
    atol: float = 0.0  # 0: exactly equal


# ---- lesson 01: bf16 rounding, the loss scale's update rule ----------------------------------------------------
def _bf16_cases():
    gen = torch.Generator().manual_seed(0)
    normals = torch.randn(1000, generator=gen)
    wide = torch.randn(1000, generator=gen) * 10.0 ** torch.randint(-30, 30, (1000,), generator=gen)
    # 1 + 2^-8 lies exactly halfway between two bf16 values: ties go to the even one (1.0); 1 + 3 * 2^-8 goes up
    ties = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 0.0, -0.0])
    for label, x in (("random normals", normals), ("wide range", wide), ("ties to even", ties)):
        yield label, (x,), x.to(torch.bfloat16).float()  # PyTorch's own conversion


def _scale_cases():
    """Sequences of (found_inf per step) through torch's own scale update (the kernel GradScaler.update calls)."""
    for label, infs, interval in (("no overflow", [False] * 7, 3), ("overflow then recovery", [True, False, False,
                                  True, False, False, False, False], 2), ("overflows in a row", [True] * 4, 2)):
        scale = torch.tensor([65536.0])
        tracker = torch.tensor([0], dtype=torch.int32)
        expected = []
        for inf in infs:
            torch._amp_update_scale_(scale, tracker, torch.tensor([float(inf)]), 2.0, 0.5, interval)
            expected.append((scale.item(), int(tracker.item())))
        yield label, (infs, 65536.0, interval), expected


def _run_scale(student):
    def run(infs, scale, interval):
        good, out = 0, []
        for inf in infs:
            scale, good = student(scale, good, inf, interval)
            out.append((float(scale), int(good)))
        return out
    return run


# ---- lesson 02: warm-up ----------------------------------------------------------------------------------------
def _warmup_cases():
    from ..techniques.schedule import lr_factor

    for warmup in (0.1, 0.3):
        progress = [i / 40 for i in range(41)]
        yield f"warmup={warmup}", (progress, 0.5, warmup), [0.5 * lr_factor(p, "onecycle", warmup) for p in progress]


def _run_warmup(student):
    return lambda progress, peak_lr, warmup: [student(p, peak_lr, warmup) for p in progress]


# ---- lesson 03: mixup on a batch -------------------------------------------------------------------------------
def _mixup_cases():
    from ..techniques.augment import blend

    gen = torch.Generator().manual_seed(3)
    for n, lam in ((8, 0.7), (5, 0.05)):
        x = torch.randn(n, 3, 4, 4, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        perm = torch.randperm(n, generator=gen)
        soft = torch.nn.functional.one_hot(y, 10).float()
        yield f"batch of {n}, lam={lam}", (x, y, lam, perm, 10), blend(x, soft, lam, perm)


# ---- lesson 04: a global magnitude mask ------------------------------------------------------------------------
def _mask_cases():
    from torch.nn.utils import prune

    gen = torch.Generator().manual_seed(4)
    for amount in (0.5, 0.9):
        layers = [torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 16, 3), torch.nn.Linear(64, 10)]
        for layer in layers:
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * torch.rand((), generator=gen))
        weights = [layer.weight.detach().clone() for layer in layers]
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                                  amount=amount)
        yield f"3 layers, amount={amount}", (weights, amount), [layer.weight_mask.bool() for layer in layers]


# ---- lesson 05: AdamW by hand ----------------------------------------------------------------------------------
def _adamw_cases():
    gen = torch.Generator().manual_seed(5)
    for lr, wd in ((1e-2, 0.0), (3e-3, 0.1)):
        start = torch.randn(20, generator=gen)
        grads = [torch.randn(20, generator=gen) for _ in range(4)]
        param = torch.nn.Parameter(start.clone())
        opt = torch.optim.AdamW([param], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
        for g in grads:
            param.grad = g.clone()
            opt.step()
        yield f"4 steps, lr={lr}, weight_decay={wd}", (start.clone(), grads, lr, wd), param.detach().clone()


def _run_adamw(student):
    def run(start, grads, lr, wd):
        p, m, v = start, torch.zeros_like(start), torch.zeros_like(start)
        for t, g in enumerate(grads, 1):
            p, m, v = student(p, g, m, v, t, lr, wd)
        return p
    return run


# ---- lesson 06: channels_last strides ---------------------------------------------------------------------------
def _strides_cases():
    for shape in ((2, 3, 4, 4), (8, 16, 32, 32), (1, 64, 7, 5)):
        yield f"shape {shape}", (shape,), torch.empty(shape).contiguous(memory_format=torch.channels_last).stride()


# ---- lesson 07: gradient accumulation --------------------------------------------------------------------------
def _accum_cases():
    gen = torch.Generator().manual_seed(7)
    for n, k in ((32, 4), (30, 3)):
        x, y = torch.randn(n, 12, generator=gen), torch.randint(0, 5, (n,), generator=gen)
        torch.manual_seed(7)
        net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
        torch.nn.functional.cross_entropy(net(x), y).backward()  # one batch of n: the gradient to match
        yield f"{n} images in {k} micro-batches", (x, y, k), [p.grad.clone() for p in net.parameters()]


def _run_accum(student):
    def run(x, y, k):
        torch.manual_seed(7)
        net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
        student(net, x, y, k)
        return [p.grad for p in net.parameters()]
    return run


# ---- lesson 08: cosine with warm-up ------------------------------------------------------------------------------
def _cosine_cases():
    from ..techniques.schedule import lr_factor

    grid = [i / 40 for i in range(41)]  # 0 (the 1% floor), the end of warm-up exactly, 1.0 (zero)
    for label, warmup, progress in (("warmup=0.2", 0.2, grid + [0.001, 0.999]), ("warmup=0.05", 0.05, grid),
                                    ("no warm-up (warmup=0)", 0.0, grid)):
        yield label, (progress, warmup), [lr_factor(p, "cosine", warmup) for p in progress]


def _run_cosine(student):
    return lambda progress, warmup: [student(p, warmup) for p in progress]


# ---- lesson 09: how much of each step waits for data -----------------------------------------------------------
def _data_wait_cases():
    """Per-step (data_start, compute_start, end) times, as the trainer marks them; the share and the kind of run
    from labkit's own accounting (measure.data_share, measure.input_verdict)."""
    from .. import measure

    def steps(data_ms, compute_ms, n=12, gap_ms=0.0, gap_every=4, start=100.0):
        marks, t = [], start
        for i in range(n):
            d, c = data_ms[i % len(data_ms)] / 1000, compute_ms[i % len(compute_ms)] / 1000
            marks.append((t, t + d, t + d + c))
            t += d + c + (gap_ms / 1000 if (i + 1) % gap_every == 0 else 0.0)  # logging between steps
        return marks

    for label, marks in (
            ("device-resident: indexing only", steps([0.8, 1.1, 0.9], [31.0, 29.5, 30.2], gap_ms=2.0)),
            ("2 workers keeping up, mostly", steps([2.0, 12.0, 9.0], [30.0, 31.0, 29.0], gap_ms=2.0)),
            ("0 workers: decoding in the training process", steps([55.0, 58.0], [30.0, 29.0], gap_ms=2.0)),
            ("a 5 s evaluation between steps counts for neither", steps([1.0, 4.0], [30.0], gap_ms=5000.0)),
            ("near the lines: 9.9% data", [(100.0, 100.5, 105.0), (105.0, 105.49, 110.0)]),
            ("near the lines: 10.1% data", [(0.0, 1.01, 10.0)]),
            ("near the lines: 30.2% data", [(8.0, 11.02, 18.0)])):
        data_s = sum(b - a for a, b, _ in marks)
        compute_s = sum(c - b for _, b, c in marks)
        share = measure.data_share(data_s, compute_s)
        kind = measure.input_verdict(share, True, 0, 2).split(":")[0]
        yield label, (marks,), (share, kind)


# ---- lesson 10: symmetric int8 quantization of a weight ----------------------------------------------------------
def _int8_cases():
    """Weights quantized to symmetric int8 (-127..127, zero point 0), one scale per tensor or per output channel:
    the integers and scales from torchao's own primitives (choose_qparams_affine, quantize_affine), the library
    labkit.quantize builds on."""
    from ..quantization import without_known_noise

    with without_known_noise():  # torchao's import warns about torch's API, not about this
        from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

    def reference(w, per_channel):
        block = (1, *w.shape[1:]) if per_channel else tuple(w.shape)
        scale, zero = choose_qparams_affine(w, MappingType.SYMMETRIC, block, torch.int8, -127, 127,
                                            eps=torch.finfo(torch.float32).eps)
        return quantize_affine(w, block, scale, zero, torch.int8, -127, 127), scale.reshape(-1)

    gen = torch.Generator().manual_seed(10)
    conv = torch.randn(16, 3, 3, 3, generator=gen) * 0.2 * torch.rand(16, 1, 1, 1, generator=gen)
    head = torch.randn(10, 256, generator=gen) * 0.05
    outlier = torch.randn(8, 32, generator=gen) * 0.1
    outlier[2, 5] = 5.0  # one weight 50x the typical size
    pruned = torch.randn(12, 4, 3, 3, generator=gen) * 0.1
    pruned[7] = 0.0  # an output channel removed by magnitude pruning
    ties = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 0.0])  # scale 1: exactly halfway
    for label, w, per_channel in (
            ("a conv weight (16, 3, 3, 3), one scale for the whole tensor", conv, False),
            ("the same conv weight, one scale per output channel", conv, True),
            ("a Linear head (10, 256), one scale per output channel", head, True),
            ("one weight 50x the others, one scale for the tensor: the rest round to a few levels", outlier, False),
            ("the same weights per channel: the outlier coarsens only its own channel", outlier, True),
            ("an all-zero (pruned) output channel: its scale is eps, its integers 0", pruned, True),
            ("values exactly halfway between two levels: round half to even, as torch.round", ties, False)):
        yield label, (w.clone(), per_channel), reference(w, per_channel)


def _run_int8(student):
    def run(w, per_channel):
        q, scale = student(w, per_channel)
        if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
            raise TypeError(f"q should be a torch.int8 tensor (1 byte per weight), not {_describe(q)}")
        return q, torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    return run


# ---- lesson 15: what a ring all-reduce sends -----------------------------------------------------------------
def _ring_allreduce_cases():
    """Bytes each process sends per step in a ring all-reduce of a model's gradients, 2 (N-1)/N of them: the
    gradients counted by labkit (models.count_params over what trains), at the parameters' element size."""
    from .. import models

    def sent(params, nproc, dtype=torch.float32):
        return 2 * (nproc - 1) / nproc * params * torch.empty((), dtype=dtype).element_size()

    torch.manual_seed(15)
    cnn = models.build("cnn", 10, 3, 16, 3, "group")
    for n in (2, 8):
        yield f"labkit's cnn (width 16), nproc={n}", (cnn, n), sent(models.count_params(cnn), n)
    yield "one process sends nothing", (cnn, 1), 0.0
    wide = models.build("cnn", 10, 3, 32, 3, "group").to(torch.bfloat16)
    yield "cnn of width 32 in bf16, nproc=4", (wide, 4), sent(models.count_params(wide), 4, torch.bfloat16)
    frozen = models.build("cnn", 10, 3, 16, 3, "group")
    frozen.requires_grad_(False)
    head = models.classifier(frozen).requires_grad_(True)  # fine-tuning the last layer only
    yield "only the classifier trains, nproc=3", (frozen, 3), sent(models.count_params(head), 3)


# ---- lesson 14: a technique's contribution, paired by seed -------------------------------------------------
def _contribution_cases():
    """Runs of an ablation (setting, seed, status, throughput, accuracy) with made-up figures; the contribution and
    its spread from labkit's own table (labkit.ablation: seed by seed, the full combination against the
    combination without the technique)."""
    import pandas as pd

    from .. import ablation

    figures = {"all": [(1510.0, 0.712), (1490.0, 0.695), (1535.0, 0.731)],  # (throughput, accuracy) for seeds 0-2
               "without pruning": [(1020.0, 0.725), (1002.0, 0.716), (1040.0, 0.733)],
               "without augment": [(1500.0, 0.698), (1492.0, 0.702), (1522.0, 0.709)]}

    def frame(rows):
        return pd.DataFrame(rows, columns=["setting", "seed", "status", "throughput", "accuracy"])

    def runs_for(seeds, drop=(), fail=()):
        return frame([(setting, seed, "failed" if (setting, seed) in fail else "completed",
                       *((None, None) if (setting, seed) in fail else figures[setting][i]))
                      for i, seed in enumerate(seeds) for setting in figures if (setting, seed) not in drop])

    three = runs_for([0, 1, 2])
    shuffled = three.iloc[[4, 0, 8, 2, 6, 1, 7, 3, 5]].reset_index(drop=True)  # rows no longer in seed order
    for label, runs, technique, figure in (
            ("3 seeds: accuracy, augment", three, "augment", "accuracy"),
            ("3 seeds: throughput (a ratio), pruning", three, "pruning", "throughput"),
            ("rows in another order: pair by seed, not by row", shuffled, "pruning", "accuracy"),
            ("a failed run (no figures) leaves its seed out", runs_for([0, 1, 2], fail={("without augment", 1)}),
             "augment", "accuracy"),
            ("seeds 3, 7, 11; the run without it never reached seed 11",
             runs_for([3, 7, 11], drop={("without augment", 11)}), "augment", "throughput"),
            ("one seed: no spread (0)", runs_for([0]), "pruning", "throughput")):
        table = ablation.summarise(runs, figures).set_index("setting")
        row = table.loc[f"without {technique}"]
        yield label, (runs.copy(), technique, figure), (float(row[f"{figure}_contribution"]),
                                                        float(row[f"{figure}_contribution_std"]))


# ---- lesson 13: the hypervolume of a two-objective front ------------------------------------------------------
def _hypervolume_cases():
    """(accuracy, throughput) points, both maximised, and a reference point (the worst values counted): the area
    the points dominate above the reference, from labkit's own labkit.tuning.hypervolume."""
    import random

    import pandas as pd

    from ..tuning import hypervolume

    staircase = [(0.8, 300.0), (0.6, 900.0), (0.4, 1500.0)]
    draw = random.Random(13)
    measured = [(round(draw.uniform(0.1, 0.7), 4), round(draw.uniform(200.0, 3000.0), 1)) for _ in range(36)]
    for label, points, reference in (
            ("one point", [(0.6, 1000.0)], (0.1, 200.0)),
            ("a staircase of three points", staircase, (0.1, 100.0)),
            ("dominated points add nothing", staircase + [(0.5, 800.0), (0.3, 200.0), (0.8, 250.0)], (0.1, 100.0)),
            ("points at or below the reference count for nothing",
             [(0.05, 2000.0), (0.5, 50.0), (0.1, 100.0), (0.7, 600.0)], (0.1, 100.0)),
            ("ties in one objective", [(0.6, 500.0), (0.6, 700.0), (0.3, 700.0)], (0.0, 0.0)),
            ("36 points in random order", measured, (0.1, 200.0)),
            ("no points", [], (0.1, 200.0))):
        frame = pd.DataFrame(points, columns=["accuracy", "throughput"])
        expected = hypervolume(frame, ("accuracy", "throughput"), {"accuracy": reference[0],
                                                                   "throughput": reference[1]})
        yield label, (list(points), reference), float(expected)


# ---- lesson 11: Hinton's distillation loss ----------------------------------------------------------------
def _distillation_cases():
    """Student and teacher logits, labels, a temperature and a mix: the loss from labkit's own
    labkit.techniques.distillation.distillation_loss (the one a run with a teacher trains on)."""
    from ..techniques.distillation import distillation_loss

    gen = torch.Generator().manual_seed(11)

    def logits(n, scale=2.0):
        return torch.randn(n, 10, generator=gen) * scale

    student, teacher, y = logits(16), logits(16), torch.randint(0, 10, (16,), generator=gen)
    for label, args in (
            ("T=4, alpha=0.5 (labkit's defaults), 16 images, 10 classes", (student, teacher, y, 4.0, 0.5)),
            ("T=1: no softening", (student, teacher, y, 1.0, 0.5)),
            ("T=20: the soft term is multiplied by T^2 = 400", (student, teacher, y, 20.0, 0.9)),
            ("alpha=0: cross-entropy with the labels alone, the teacher ignored", (student, teacher, y, 4.0, 0.0)),
            ("alpha=1: the teacher's soft targets alone, no labels", (student, teacher, y, 4.0, 1.0)),
            ("a student that already matches its teacher: the soft term is 0", (teacher, teacher, y, 4.0, 1.0)),
            ("another batch size (5): average over the images, not over images x classes",
             (logits(5), logits(5), torch.randint(0, 10, (5,), generator=gen), 3.0, 0.7)),
            ("a confident teacher (logits in the hundreds): log-softmax, not log(softmax)",
             (logits(8), logits(8, scale=80.0), torch.randint(0, 10, (8,), generator=gen), 1.0, 0.5))):
        yield label, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args), float(
            distillation_loss(*args))


def _run_distillation(student):
    return lambda s, t, y, temperature, alpha: float(student(s, t, y, temperature, alpha))


# ---- lesson 12: which parameters a freeze setting holds still --------------------------------------------------
def _frozen_names_cases():
    """Networks labkit builds (its cnn at two sizes and both norms, torchvision's ResNet-18 and MobileNetV3-small)
    and freeze settings; the frozen parameter names from labkit's own labkit.techniques.transfer.frozen_names (the
    set a run with that freeze takes out of its optimizer)."""
    from .. import models
    from ..techniques.transfer import frozen_names

    torch.manual_seed(12)
    for label, (name, classes, width, depth, norm), settings in (
            ("labkit's cnn, width 8, depth 2 (3 blocks)", ("cnn", 5, 8, 2, "batch"), ("none", "backbone", 1, 2, 3)),
            ("cnn, width 16, depth 3, GroupNorm (4 blocks)", ("cnn", 10, 16, 3, "group"), ("backbone", 1, 4)),
            ("resnet18 (5 blocks: the stem, layer1-4)", ("resnet18", 5, 16, 3, "batch"), ("backbone", 1, 2, 5)),
            ("mobilenet_v3_small (14 blocks: the 13 of features, the classifier's hidden layer)",
             ("mobilenet_v3_small", 5, 16, 3, "batch"), ("backbone", 1, 3))):
        model = models.build(name, classes, 3, width, depth, norm)
        for freeze in settings:
            yield f"{label}, freeze={freeze!r}", (model, freeze), frozen_names(model, freeze)


def _run_frozen_names(student):
    return lambda model, freeze: set(student(model, freeze))


EXERCISES = {e.name: e for e in (
    Exercise("bf16_round", "to_bf16(x): each fp32 value rounded to the nearest bf16 (ties to even), as fp32",
             _bf16_cases),
    Exercise("loss_scale", "next_scale(scale, good_steps, found_inf, interval) -> (scale, good_steps): "
             "GradScaler's update rule", _scale_cases),
    Exercise("warmup", "lr_at(progress, peak_lr, warmup): linear warm-up to peak_lr, then linear decay to 0",
             _warmup_cases, atol=1e-9),
    Exercise("mixup", "mixup(x, y, lam, perm, num_classes) -> (images, soft targets): each image blended with "
             "image perm[i]", _mixup_cases, atol=1e-6),
    Exercise("global_mask", "global_masks(weights, amount) -> boolean masks: keep all but the `amount` smallest "
             "|w| across all layers together", _mask_cases),
    Exercise("adamw", "adamw_step(p, g, m, v, t, lr, weight_decay) -> (p, m, v): one AdamW step (betas 0.9, "
             "0.999, eps 1e-8)", _adamw_cases, atol=1e-6),
    Exercise("nhwc_strides", "nhwc_strides(shape) -> strides (in elements) of an (N, C, H, W) tensor stored "
             "channels_last", _strides_cases),
    Exercise("grad_accum", "accumulate_grads(model, x, y, k): backward over k equal micro-batches of (x, y), leaving "
             "in .grad the gradient of the mean cross-entropy over all of x", _accum_cases, atol=1e-6),
    Exercise("cosine", "cosine_factor(progress, warmup): the multiplier on the peak lr, a linear warm-up over the "
             "first `warmup` of training (never below 0.01), then half a cosine from 1 down to 0 at progress 1",
             _cosine_cases, atol=1e-9),
    Exercise("data_wait", "data_wait(marks) -> (share, kind): from per-step (data_start, compute_start, end) times, "
             "the share of step time spent getting batches, and 'compute-bound' (below 10%), 'partly input-bound' "
             "or 'input-bound' (30% or more)", _data_wait_cases, atol=1e-9),
    Exercise("int8_quantize", "quantize_int8(w, per_channel) -> (q, scale): symmetric int8, scale = max|w| / 127 "
             "over the whole tensor or, per_channel, over each output channel (dim 0), at least "
             "torch.finfo(torch.float32).eps; q = clamp(round(w / scale), -127, 127) as torch.int8",
             _int8_cases, atol=1e-9),
    Exercise("ring_allreduce", "allreduce_bytes(model, nproc) -> bytes each of nproc processes sends per optimizer "
             "step in a ring all-reduce of the model's gradients: 2 (nproc - 1) / nproc x the bytes of every "
             "parameter that requires a gradient", _ring_allreduce_cases, atol=1e-3),
    Exercise("contribution", "contribution(runs, technique, figure) -> (mean, spread): seed by seed, the 'all' run "
             "against the 'without <technique>' run (throughput: all / without - 1; accuracy: all - without), over "
             "the seeds where both have the figure; the mean of those differences and their sample standard "
             "deviation (0 for a single seed)", _contribution_cases, atol=1e-9),
    Exercise("hypervolume", "hypervolume(points, reference) -> the area that (accuracy, throughput) points, both "
             "maximised, dominate above the reference point (the worst values counted); dominated points and "
             "points not above the reference in both objectives add nothing", _hypervolume_cases, atol=1e-6),
    Exercise("distillation", "kd_loss(student_logits, teacher_logits, targets, T, alpha) -> the loss: alpha x T^2 x "
             "KL(softmax(teacher / T) || softmax(student / T)), averaged over the images, + (1 - alpha) x "
             "cross-entropy with the labels", _distillation_cases, atol=1e-4),
    Exercise("frozen_names", "frozen_names(model, freeze) -> the set of parameter names that do not train: none for "
             "'none'; every one outside the classifier (the last Linear) for 'backbone'; for an int N, every one "
             "outside the classifier and the last N blocks (labkit.models.blocks)", _frozen_names_cases),
)}
# Exercises whose student function is one step of a sequence: the check runs the sequence.
_DRIVERS = {"loss_scale": _run_scale, "warmup": _run_warmup, "adamw": _run_adamw, "grad_accum": _run_accum,
            "cosine": _run_cosine,
            "int8_quantize": _run_int8, "distillation": _run_distillation, "frozen_names": _run_frozen_names}


def _same(got: Any, expected: Any, atol: float) -> bool:
    if isinstance(expected, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(expected)
                and all(_same(g, e, atol) for g, e in zip(got, expected)))
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return False
        if expected.dtype == torch.bool:
            return bool(torch.equal(got.bool(), expected))
        return bool(torch.allclose(got.float(), expected.float(), rtol=0.0 if atol == 0 else 1e-5, atol=atol))
    if isinstance(expected, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and abs(got - expected) <= max(atol, 1e-12 * abs(expected))
    return got == expected


def _mismatch(got: Any, expected: Any, atol: float, where: str = "the result") -> str:
    """Where `got` first differs from `expected`, in words."""
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return f"{where} should be a sequence of {len(expected)} items, got {_describe(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            if not _same(g, e, atol):
                return _mismatch(g, e, atol, f"item {i} of {where}")
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return f"{where} should be {_describe(expected)}, got {_describe(got)}"
        wrong = (got.bool() != expected) if expected.dtype == torch.bool else (got.float() - expected.float()).abs()
        first = tuple(int(i) for i in (wrong > atol).nonzero()[0]) if (wrong > atol).any() else ()
        return (f"{where}: {int((wrong > atol).sum())} of {expected.numel()} values differ, first at index "
                f"{first}: got {got[first].item():.6g}, expected {expected[first].item():.6g}")
    return f"{where}: got {_describe(got)}, expected {_describe(expected)}"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


class ExerciseNotPassed(AssertionError):
    """A worked solution (strict check) that does not match."""


def check(name: str, solution: Callable, *, strict: bool = False) -> bool:
    """Check the student's `solution` for exercise `name` on its cases; prints one line per outcome and returns
    True when every case matches. Not attempted (NotImplementedError) and wrong answers print what to do next;
    with `strict` they raise instead (for the worked solutions in notebooks/solutions/)."""
    if name not in EXERCISES:
        raise ValueError(f"check: no exercise {name!r}; the exercises are {sorted(EXERCISES)}")
    exercise = EXERCISES[name]
    call = _DRIVERS[name](solution) if name in _DRIVERS else solution
    cases = list(exercise.cases())
    for label, args, expected in cases:
        try:
            got = call(*args)
        except NotImplementedError:
            return _outcome(f"{name}: not attempted yet - fill in the function ({exercise.task}) and run this "
                            "cell again", strict)
        except Exception as exc:  # noqa: BLE001 - the student's code: say what failed, keep the kernel
            return _outcome(f"{name}: case '{label}' raised {type(exc).__name__}: {exc}", strict)
        if not _same(got, expected, exercise.atol):
            return _outcome(f"{name}: case '{label}' differs - {_mismatch(got, expected, exercise.atol)}. "
                            f"Task: {exercise.task}", strict)
    print(f"{name}: correct - matches the reference on all {len(cases)} cases")
    return True


def _outcome(message: str, strict: bool) -> bool:
    if strict:
        raise ExerciseNotPassed(message)
    print(message)
    return False
