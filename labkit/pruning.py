"""Pruning: unstructured masks (torch.nn.utils.prune) and channel removal (torch-pruning).

Unstructured global magnitude pruning zeroes the smallest weights across all conv and linear layers. The
masks are re-applied at every forward pass, so pruned weights stay zero while training goes on, but the
dense kernels still multiply the zeros: no speed-up. Channel pruning removes whole output channels (and the
inputs that read them) by model surgery: the network is physically smaller and faster, and its parameters
are new tensors, so the optimizer must be rebuilt afterwards.
"""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from .models import classifier


def prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def nonzero_weights(model: nn.Module) -> int:
    """Non-zero entries in the effective weights of the prunable layers (masked weights count as zero)."""
    return sum(int(torch.count_nonzero(m.weight)) for m in prunable(model))


def total_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable(model))


def masked_weights(model: nn.Module) -> int:
    """Weights held at zero by masks (or zero otherwise) in layers that still have them."""
    return total_weights(model) - nonzero_weights(model)


def sparsity(model: nn.Module, dense_weights: int) -> float:
    """Fraction of the dense model's prunable weights that are now zero or removed."""
    return 1.0 - nonzero_weights(model) / dense_weights


def prune_unstructured(model: nn.Module, target: float) -> None:
    """Global L1-magnitude pruning until `target` of the prunable weights are masked.

    Pruning again later only adds to the masks: PyTorch combines the new mask with the old one."""
    total = total_weights(model)
    already = total - nonzero_weights(model)
    extra = round(target * total) - already
    if extra <= 0:
        return
    prune.global_unstructured([(m, "weight") for m in prunable(model)], pruning_method=prune.L1Unstructured,
                              amount=extra)


def prune_channels(model: nn.Module, ratio: float, example_input: torch.Tensor) -> None:
    """Remove `ratio` of the output channels of every prunable layer, smallest L2 norm first.

    torch-pruning follows the dependencies (batch norms, the next layer's inputs, residual additions),
    and leaves the classifier's outputs whole."""
    if ratio <= 0:
        return
    was_training = model.training
    model.eval()  # tracing runs a forward pass: keep the batch-norm statistics untouched
    pruner = tp.pruner.MagnitudePruner(model, example_input, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[classifier(model)])
    pruner.step()
    model.train(was_training)


def apply(model: nn.Module, method: str, target: float, current: float, example_input: torch.Tensor) -> None:
    """Prune from fraction `current` to `target` (the fraction counts weights, or channels for 'channels')."""
    if target < current:
        raise ValueError(f"prune={target} is below the {current} already applied: pruning only adds; "
                         "start a new run for less.")
    if method == "unstructured":
        prune_unstructured(model, target)
    else:
        # Channels kept so far are (1 - current); keeping (1 - target) of the original needs this ratio of them.
        prune_channels(model, 1.0 - (1.0 - target) / (1.0 - current), example_input)
