"""Knowledge distillation (Hinton, Vinyals and Dean, 2015): a student learns from a trained teacher's soft targets.

The teacher's logits, softened by a temperature T, say how alike the classes look to it (a "comet" is more like
a "kite" than a "ring"): more to learn from per image than a one-hot label. The loss mixes the two:

    loss = kd_alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - kd_alpha) * cross_entropy

T^2 keeps the soft term's gradients at the hard term's scale whatever T is. The teacher (a run kept with
save=True) runs in eval mode without gradients, under the step's autocast, on the same augmented batch. Its
forward pass is part of every step, so throughput counts it; the run's info records the teacher's FLOPs per
image. A gain is often no larger than the spread between seeds: compare over several (labkit.lessons.compare).
"""
from __future__ import annotations

from ._lazy import lazy_import
from .base import Control, Knob, Technique, number, run_or_path

torch = lazy_import("torch")


def distillation_loss(student_logits, teacher_logits, targets, temperature: float, alpha: float):
    """Hinton's loss: soft targets at `temperature` (scaled by its square) mixed with the hard-label loss."""
    F = torch.nn.functional
    soft = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=1),
                    F.log_softmax(teacher_logits.float() / temperature, dim=1),
                    log_target=True, reduction="batchmean") * temperature ** 2
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, targets)  # targets may be mixup's soft ones


def load_teacher(source, ctx):
    """The teacher's network on the run's device, in eval mode and without gradients; its figures go to info."""
    from .. import checkpoints, models

    checkpoint = checkpoints.read(source)
    if checkpoint.num_classes != ctx.num_classes or tuple(checkpoint.image_shape) != tuple(ctx.example_input.shape[1:]):
        raise ValueError(f"teacher={source!r} was trained on {checkpoint.config.dataset!r} ({checkpoint.num_classes} "
                         f"classes, images {tuple(checkpoint.image_shape)}); this run's data has {ctx.num_classes} "
                         f"classes, images {tuple(ctx.example_input.shape[1:])}: a teacher must know the same classes.")
    teacher = checkpoint.model(ctx.device).requires_grad_(False)
    ctx.info["teacher"] = {"source": source, "model": checkpoint.config.model, "width": checkpoint.config.width,
                           "params": models.count_params(teacher),
                           "flops_per_image": models.flops_per_image(teacher, checkpoint.image_shape, ctx.device)}
    return teacher


def _setup(model, knobs, ctx) -> None:
    if knobs.teacher is not None:
        ctx.state["teacher"] = load_teacher(knobs.teacher, ctx)


def _loss(logits, y, x, knobs, ctx):
    if knobs.teacher is None:
        return None
    with torch.no_grad():
        teacher_logits = ctx.state["teacher"](x)
    return distillation_loss(logits, teacher_logits, y, knobs.kd_temperature, knobs.kd_alpha)


TECHNIQUE = Technique(
    name="distillation",
    summary="learn from a trained teacher's softened predictions as well as the labels: often a few points for a "
            "small student, at the cost of the teacher's forward pass in every step",
    knobs=(
        Knob("teacher", None, "a run kept with save=True (its id) or a checkpoint file to distil from; None: no "
             "teacher. Throughput includes the teacher's forward pass", run_or_path(), column=True),
        Knob("kd_temperature", 4.0, "distillation: the temperature that softens both models' predictions",
             number(1.0, 20.0), live="next step: the loss uses it", control=Control("float", step=0.5)),
        Knob("kd_alpha", 0.5, "distillation: the soft (teacher) term's share of the loss; the rest is "
             "cross-entropy with the labels", number(0.0, 1.0), live="next step: the loss uses it",
             control=Control("slider", step=0.05)),
    ),
    setup=_setup,
    loss=_loss,
)
