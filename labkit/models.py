"""Models for small images, and what they cost: parameters and FLOPs per image."""
from __future__ import annotations

import math

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def norm_layer(kind: str):
    """BatchNorm (normalises by the batch's statistics) or GroupNorm (by each image's own, in groups of channels:
    the result does not depend on which images share the batch, so gradient accumulation is exact)."""
    if kind == "group":
        return lambda channels: nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.BatchNorm2d


def _conv_bn(c_in: int, c_out: int, norm) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.GELU()]


def small_cnn(num_classes: int, in_channels: int = 3, width: int = 16, depth: int = 3,
              norm: str = "batch") -> nn.Sequential:
    """A fast CNN in the spirit of cifar10-airbench: a full-resolution stem, then `depth` blocks that each
    halve the resolution with a 2x2 max-pool and apply two 3x3 convolutions; channels start at `width` and
    double per block (capped at 8x width). Pooling before the convolutions keeps it cheap enough for a CPU."""
    norm = norm_layer(norm)
    layers = _conv_bn(in_channels, width, norm)
    c = width
    for i in range(depth):
        c_out = width * 2 ** min(i + 1, 3)
        layers += [nn.MaxPool2d(2), *_conv_bn(c, c_out, norm), *_conv_bn(c_out, c_out, norm)]
        c = c_out
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), new_head(c, num_classes)]
    return nn.Sequential(*layers)


def new_head(in_features: int, num_classes: int) -> nn.Linear:
    """A classifier that starts from near-uniform predictions (loss about ln 10): the max-pooled features are
    large, and a head of the default scale on them makes overconfident first steps that slow early training. Not
    zero: LAMB scales each layer's step by its weight norm, and a zero layer would take raw Adam-sized steps."""
    head = nn.Linear(in_features, num_classes)
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.zero_()
    return head


def resnet18(num_classes: int, in_channels: int = 3, norm: str = "batch") -> nn.Module:
    """torchvision's ResNet-18 for 32x32 inputs: a 3x3 stride-1 stem and no max-pool (as is usual on CIFAR)."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes, norm_layer=norm_layer(norm))
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def mobilenet_v3_small(num_classes: int, in_channels: int = 3, norm: str = "batch") -> nn.Module:
    """torchvision's MobileNetV3-Small for 32x32 inputs: the stem keeps full resolution (stride 1)."""
    kwargs = {"norm_layer": norm_layer(norm)} if norm != "batch" else {}  # keeps torchvision's BatchNorm settings
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes, **kwargs)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


def build(name: str, num_classes: int, in_channels: int = 3, width: int = 16, depth: int = 3,
          norm: str = "batch") -> nn.Module:
    if name == "cnn":
        return small_cnn(num_classes, in_channels, width, depth, norm)
    if name == "resnet18":
        return resnet18(num_classes, in_channels, norm)
    if name == "mobilenet_v3_small":
        return mobilenet_v3_small(num_classes, in_channels, norm)
    raise ValueError(f"model={name!r} is not allowed: use 'cnn', 'resnet18' or 'mobilenet_v3_small'.")


def classifier(model: nn.Module) -> nn.Linear:
    """The last Linear layer: its output size is the number of classes, so pruning leaves it whole."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def classifier_name(model: nn.Module) -> str:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def blocks(model: nn.Module) -> list[list[str]]:
    """The network's blocks from input to output, each a list of module names, the classifier left out: what
    freeze counts. cnn: the stem, then one block per max-pool; resnet18: the stem, then layer1-4;
    mobilenet_v3_small: each of `features`, then the classifier's hidden layer."""
    if isinstance(model, torchvision.models.ResNet):
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if isinstance(model, torchvision.models.MobileNetV3):
        return [[f"features.{i}"] for i in range(len(model.features))] + [["classifier.0"]]
    found: list[list[str]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.AdaptiveMaxPool2d):
            break
        if isinstance(child, nn.MaxPool2d) or not found:
            found.append([])
        found[-1].append(name)
    return found


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, image_shape: tuple[int, int, int], device: torch.device) -> int:
    """Forward FLOPs for one image, counted by torch.utils.flop_counter (a training step costs about 3x)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *image_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
