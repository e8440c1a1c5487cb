"""Pruning: unstructured masks (torch.nn.utils.prune) and channel removal (torch-pruning).

Unstructured global magnitude pruning zeroes the smallest weights across all conv and linear layers. The
masks are re-applied at every forward pass, so pruned weights stay zero while training goes on, but the
dense kernels still multiply the zeros: no speed-up. Channel pruning removes whole output channels (and the
inputs that read them) by model surgery: the network is physically smaller and faster, and its parameters
are new tensors, so the optimizer must be rebuilt afterwards.
"""
from __future__ import annotations

from ._lazy import lazy_import
from .base import Control, Knob, Technique, number, one_of

torch = lazy_import("torch")
METHODS = ("unstructured", "channels")


def _layer_types():
    return (torch.nn.Conv2d, torch.nn.Linear)


def prunable(model) -> list:
    return [m for m in model.modules() if isinstance(m, _layer_types())]


def nonzero_weights(model) -> int:
    """Non-zero entries in the effective weights of the prunable layers (masked weights count as zero)."""
    return sum(int(torch.count_nonzero(m.weight)) for m in prunable(model))


def total_weights(model) -> int:
    return sum(m.weight.numel() for m in prunable(model))


def masked_weights(model) -> int:
    """Weights held at zero by masks (or zero otherwise) in layers that still have them."""
    return total_weights(model) - nonzero_weights(model)


def sparsity(model, dense_weights: int) -> float:
    """Fraction of the dense model's prunable weights that are now zero or removed."""
    return 1.0 - nonzero_weights(model) / dense_weights


def prune_unstructured(model, target: float) -> None:
    """Global L1-magnitude pruning until `target` of the prunable weights are masked.

    Pruning again later only adds to the masks: PyTorch combines the new mask with the old one."""
    total = total_weights(model)
    already = total - nonzero_weights(model)
    extra = round(target * total) - already
    if extra <= 0:
        return
    from torch.nn.utils import prune

    prune.global_unstructured([(m, "weight") for m in prunable(model)], pruning_method=prune.L1Unstructured,
                              amount=extra)


def prune_channels(model, ratio: float, example_input) -> None:
    """Remove `ratio` of the output channels of every prunable layer, smallest L2 norm first.

    torch-pruning follows the dependencies (batch norms, the next layer's inputs, residual additions),
    and leaves the classifier's outputs whole."""
    import torch_pruning as tp

    if ratio <= 0:
        return
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]  # keeps all its outputs
    was_training = model.training
    model.eval()  # tracing runs a forward pass: keep the batch-norm statistics untouched
    pruner = tp.pruner.MagnitudePruner(model, example_input, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[classifier])
    pruner.step()
    model.train(was_training)


def apply(model, method: str, target: float, current: float, example_input) -> None:
    """Prune from fraction `current` to `target` (the fraction counts weights, or channels for 'channels')."""
    if target < current:
        raise ValueError(f"prune={target} is below the {current} already applied: pruning only adds; "
                         "start a new run for less.")
    if method == "unstructured":
        prune_unstructured(model, target)
    else:
        # Channels kept so far are (1 - current); keeping (1 - target) of the original needs this ratio of them.
        prune_channels(model, 1.0 - (1.0 - target) / (1.0 - current), example_input)


def _check_change(old, new) -> str | None:
    if new.prune < old.prune:
        return f"prune={new.prune} is below the {old.prune} already applied: pruning only adds during a run."
    if new.prune_method != old.prune_method and old.prune > 0:
        return (f"prune_method={new.prune_method!r}: this run is already pruned with {old.prune_method!r}; "
                "start a new run to change the method.")
    return None


def _change(model, old, new, ctx) -> set[str]:
    if new.prune == old.prune:
        return set()
    apply(model, new.prune_method, new.prune, old.prune, ctx.example_input)
    # Channel surgery makes new parameter tensors: the optimizer must hold the new ones.
    return {"flops", "optimizer"} if new.prune_method == "channels" else {"flops"}


TECHNIQUE = Technique(
    name="pruning",
    summary="remove weights (masks: no speed-up on dense kernels) or whole channels (a smaller, faster network) "
            "during training; accuracy drops with the share removed",
    knobs=(
        Knob("prune", 0.0, "fraction of prunable weights (unstructured) or channels (channels) to remove",
             number(0.0, 0.95), live="at once: unstructured adds masks; channels removes channels by surgery and "
             "rebuilds the optimizer; pruning only adds during a run", control=Control("slider", step=0.05, format=".0%"), column=True),
        Knob("prune_method", "unstructured", "unstructured (masks) or channels (structured, removes channels)",
             one_of(*METHODS), live="with the next prune, until the run is first pruned", control=Control("dropdown"), column=True),
        Knob("prune_at", 0.5, "fraction of the training steps after which pruning is applied (0: before training)",
             number(0.0, 1.0, high_open=True)),
    ),
    # Pruning scheduled for later starts the run dense; `due` asks for it once training has got that far.
    start=lambda config: {"prune": 0.0} if config.prune_at > 0 else {},
    setup=lambda model, knobs, ctx: apply(model, knobs.prune_method, knobs.prune, 0.0, ctx.example_input),
    due=lambda progress, config, knobs: ({"prune": config.prune} if config.prune_at > 0
                                         and progress >= config.prune_at and knobs.prune < config.prune else {}),
    check_change=_check_change,
    change=_change,
)
