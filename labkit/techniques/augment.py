"""Augmentation presets, applied to whole batches on the data's device: no per-image Python.

Each op takes a float batch (N, C, H, W), its targets and a torch.Generator, and returns both. Targets are
class indices, or class probabilities once mixup/cutmix have blended images (cross-entropy accepts either).
Every preset after "flip" includes flip and crop: cutout, mixup and cutmix are added on top of flip-crop.
"""
from __future__ import annotations

from ._lazy import lazy_import
from .base import Control, Knob, Technique, one_of

torch = lazy_import("torch")


def crop_at(x, top, left, height: int, width: int):
    """Per-image crop of a batch: image i keeps rows top[i]:top[i]+height and columns left[i]:left[i]+width."""
    n, c, _, w = x.shape
    rows = (top[:, None] + torch.arange(height, device=x.device)).view(n, 1, height, 1).expand(n, c, height, w)
    x = x.gather(2, rows)
    cols = (left[:, None] + torch.arange(width, device=x.device)).view(n, 1, 1, width).expand(n, c, height, width)
    return x.gather(3, cols)


def flip(x, y, gen):
    """Mirror half of the images left-right."""
    mirror = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x), y


def crop(x, y, gen, pad: int = 4):
    """Reflect-pad by `pad` pixels and take a random crop of the original size (shifts of up to +-pad)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    top = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    left = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    return crop_at(padded, top, left, h, w), y


def _random_boxes(x, gen, size_h, size_w):
    """Boolean masks (N, 1, H, W), one box per image, centred anywhere (clipped at the edges)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=gen)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=gen)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy).abs() <= size_h // 2) & ((xs - cx).abs() <= size_w // 2)
    return inside.unsqueeze(1)


def cutout(x, y, gen):
    """Blank a square of a quarter of the side per image (to the mean: zero after normalisation)."""
    box = _random_boxes(x, gen, x.shape[2] // 4, x.shape[3] // 4)
    return x.masked_fill(box, 0.0), y


def _soft_targets(y, num_classes):
    return y if y.is_floating_point() else torch.nn.functional.one_hot(y, num_classes).float()


def blend(x, soft, lam, perm):
    """Mixup's core: image i blended with image perm[i] by weight lam, its targets by the same weight."""
    return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]


def mixup(x, y, gen, num_classes: int, alpha: float = 0.2):
    """Blend each image with another from the batch; targets blend by the same weight (Beta(alpha, alpha))."""
    # One weight per batch. torch has no Beta sampler that takes a Generator, so this draw comes from torch's
    # global RNG on the batch's device, which the run seeds; sampled there, it costs no device sync.
    conc = torch.tensor(alpha, device=x.device)
    lam = torch.distributions.Beta(conc, conc).sample()
    perm = torch.randperm(x.shape[0], device=x.device, generator=gen)
    return blend(x, _soft_targets(y, num_classes), lam, perm)


def cutmix(x, y, gen, num_classes: int):
    """Paste a box from another image of the batch; targets mix by the box's share of the image."""
    n, _, h, w = x.shape
    side = torch.rand((), generator=gen, device=x.device).sqrt()  # box side as a fraction of the image side
    box = _random_boxes(x, gen, int(h * side), int(w * side))
    perm = torch.randperm(n, device=x.device, generator=gen)
    kept = 1.0 - box.float().mean(dim=(1, 2, 3))  # per image, what stays of the original
    soft = _soft_targets(y, num_classes)
    return torch.where(box, x[perm], x), kept[:, None] * soft + (1 - kept[:, None]) * soft[perm]


PRESETS = {
    "none": (),
    "flip": (flip,),
    "flip-crop": (flip, crop),
    "cutout": (flip, crop, cutout),
    "mixup": (flip, crop, mixup),
    "cutmix": (flip, crop, cutmix),
}
_NEEDS_CLASSES = (mixup, cutmix)


def apply(preset: str, x, y, gen, num_classes: int):
    """Run the preset's ops in order on a normalised float batch; returns (images, targets)."""
    for op in PRESETS[preset]:
        x, y = op(x, y, gen, num_classes) if op in _NEEDS_CLASSES else op(x, y, gen)
    return x, y


TECHNIQUE = Technique(
    name="augment",
    summary="random flips, crops, cutout, mixup or cutmix on whole batches on the device: better accuracy on "
            "small data for a few percent of throughput; it slows learning when the run is too short",
    knobs=(Knob("augment", "flip-crop", "augmentation preset applied to whole batches on the device",
                one_of(*PRESETS), live="next batch", control=Control("dropdown"), column=True),),
    batch=lambda x, y, knobs, ctx: apply(knobs.augment, x, y, ctx.gen, ctx.num_classes),
)
