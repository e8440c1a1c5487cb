"""The embedded datasets: 32x32 RGB images of blob-shaped classes, generated deterministically, no download.

`synthetic` has 10 classes. `synthetic-b` is a second task for transfer learning: 5 other classes, drawn from
another seed, in the same kind of images (backgrounds, distractors, noise), so features learned on one help on
the other the way ImageNet features help on a smaller photo dataset.

Each class is a coloured blob shape with 8 variants. An image shows one variant near the centre, shifted and
mirrored at random, on a smooth random background, with a fainter object of another class anywhere, brightness
changes and pixel noise. A small training set does not cover every variant in every position and orientation,
so, as on CIFAR-10, flip-and-crop augmentation helps a network generalise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..techniques.augment import crop_at

VERSION = 2  # bump when the generator changes, so stale caches are not reused
CLASSES = ("blot", "comet", "crescent", "dumbbell", "fork", "hook", "kite", "ring", "spiral", "wedge")
TRAIN_SIZE, TEST_SIZE = 50_000, 10_000
CLASSES_B = ("arc", "bean", "claw", "drop", "leaf")
# dataset name -> (its classes, the seed that draws their shapes and colours, train and test sizes)
TASKS = {"synthetic": (CLASSES, 20261122, TRAIN_SIZE, TEST_SIZE),
         "synthetic-b": (CLASSES_B, 20261124, 10_000, 2_000)}
IMAGE, OBJECT, VARIANTS = 32, 16, 8
# Difficulty, tuned so that the default CNN reaches 80-90% in 2 epochs on the full split (72-74% on a quarter of it,
# which tests/test_train.py checks), and on 2,000 training images flip-crop augmentation beats none by 3-7 points
# (on 512 images seen 25 times by a width-8 cnn, 8-16 points: tests/test_train.py checks it).
CLASS_COLOUR = 0.6  # share of an object's colour that is its class's own (the rest is its texture)
DISTRACTOR = (0.4, 0.3)  # opacity of the faint other-class object: low + high * U(0, 1)
VARIANT_SHARE = 0.4  # how much a class's variants differ from its base shape
SHIFT = 6  # the object sits within +-SHIFT pixels of the centre (the distractor anywhere)
NOISE = 0.15  # pixel noise (std, on a 0..1 scale)


def _smooth_noise(n: int, channels: int, low: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random values on a low x low grid, upsampled: smooth blobs."""
    coarse = torch.rand(n, channels, low, low, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _class_objects(k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour, alpha) per class variant: shapes (k, VARIANTS, 3, 16, 16) and (k, VARIANTS, 1, 16, 16)."""
    base_shape = _smooth_noise(k, 1, 5, OBJECT, gen)
    variant_shape = _smooth_noise(k * VARIANTS, 1, 5, OBJECT, gen).view(k, VARIANTS, 1, OBJECT, OBJECT)
    shape = (1 - VARIANT_SHARE) * base_shape[:, None] + VARIANT_SHARE * variant_shape
    alpha = ((shape - 0.5) * 12).sigmoid()  # soft-edged mask of the blob
    class_colour = torch.rand(k, 1, 3, 1, 1, generator=gen)
    texture = _smooth_noise(k * VARIANTS, 3, 4, OBJECT, gen).view(k, VARIANTS, 3, OBJECT, OBJECT)
    return (CLASS_COLOUR * class_colour + (1 - CLASS_COLOUR) * texture).clamp(0, 1), alpha


def _paste(canvas, colour, alpha, gen, strength, shift):
    """Blend objects (N, 3, 16, 16) into canvases (N, 3, 32, 32), shifted up to +-shift pixels from the
    centre and mirrored half the time."""
    n = canvas.shape[0]
    mirror = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
    colour = torch.where(mirror, colour.flip(3), colour)
    alpha = torch.where(mirror, alpha.flip(3), alpha) * strength.view(n, 1, 1, 1)
    # Place each object by cropping a 32x32 window out of a 48x48 frame with the object in its middle.
    margin = IMAGE - OBJECT
    frame_colour = F.pad(colour, (margin, margin, margin, margin))
    frame_alpha = F.pad(alpha, (margin, margin, margin, margin))
    top = margin // 2 + torch.randint(-shift, shift + 1, (n,), generator=gen)
    left = margin // 2 + torch.randint(-shift, shift + 1, (n,), generator=gen)
    placed_colour = crop_at(frame_colour, top, left, IMAGE, IMAGE)
    placed_alpha = crop_at(frame_alpha, top, left, IMAGE, IMAGE)
    return canvas * (1 - placed_alpha) + placed_colour * placed_alpha


def generate(n: int, seed: int, chunk: int = 5000, task: str = "synthetic") -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images of `task` as uint8 (n, 3, 32, 32) and their labels (n,), the same for the same seed."""
    classes, world_seed = TASKS[task][:2]  # the world seed fixes the classes; the images come from `seed`
    k = len(classes)
    colour, alpha = _class_objects(k, torch.Generator().manual_seed(world_seed))
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        y = torch.randint(0, k, (m,), generator=gen)
        variant = torch.randint(0, VARIANTS, (m,), generator=gen)
        canvas = 0.25 + 0.5 * _smooth_noise(m, 3, 2, IMAGE, gen)
        # A faint object of a random other class: a distractor the network must learn to discount.
        other = (y + torch.randint(1, k, (m,), generator=gen)) % k
        other_variant = torch.randint(0, VARIANTS, (m,), generator=gen)
        canvas = _paste(canvas, colour[other, other_variant], alpha[other, other_variant], gen,
                        DISTRACTOR[0] + DISTRACTOR[1] * torch.rand(m, generator=gen), shift=(IMAGE - OBJECT) // 2)
        canvas = _paste(canvas, colour[y, variant], alpha[y, variant], gen, 0.7 + 0.3 * torch.rand(m, generator=gen),
                        shift=SHIFT)
        brightness = 0.7 + 0.6 * torch.rand(m, 1, 1, 1, generator=gen)
        canvas = canvas * brightness + NOISE * torch.randn(canvas.shape, generator=gen)
        images.append((canvas.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def train_and_test(task: str = "synthetic", train_seed: int = 1, test_seed: int = 2):
    """A task's standard split (synthetic: 50,000 training and 10,000 test images; synthetic-b: 10,000 and 2,000)."""
    _, _, train_size, test_size = TASKS[task]
    return generate(train_size, train_seed, task=task), generate(test_size, test_seed, task=task)


JPEG_QUALITY = 90


def export(path, train_size: int | None = 10_000, test_size: int | None = 2_000, image_size: int = 96,
           progress: bool = True):
    """Write the synthetic dataset as an image folder of JPEGs (quality 90): `path/train/<class>/*.jpg` and
    `path/test/<class>/*.jpg`, each image upscaled to `image_size` pixels (stored images are usually larger than
    the resolution a model trains at). Train on it with `dataset="imagefolder:<path>"`: every image is then read,
    decoded and resized to 32 px on the CPU, per image, as in a real input pipeline (lesson 09). Sizes cut the
    splits (the same fixed subsets as train_size/test_size); None writes a whole split. Returns the path.
    The folder is written under a temporary name and renamed when complete, with a manifest of what it holds;
    an existing export of the same data is reused, one of other data is refused (delete it or pick another path)."""
    import json
    import os
    from pathlib import Path

    from PIL import Image  # what ImageFolder decodes with (torchvision.io's codecs are deprecated)
    from tqdm.auto import tqdm

    from . import load

    path = Path(path)
    manifest = {"generator_version": VERSION, "train_size": train_size, "test_size": test_size,
                "image_size": image_size, "format": "jpeg", "quality": JPEG_QUALITY}
    if path.exists():
        try:
            found = json.loads((path / "labkit-export.json").read_text())
        except (OSError, ValueError):
            found = None
        if found == manifest:
            return path  # the same export: reused
        raise ValueError(f"{path} already exists and holds " + (f"another export ({found})" if found else
                         "something labkit did not export") + f", not {manifest}: delete it, or export to "
                         "another path (e.g. one named after the sizes).")
    data = load("synthetic", train_size, test_size)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # two first exports never share a folder
    splits = (("train", data.train), ("test", data.test))
    bar = tqdm(total=sum(len(s) for _, s in splits), desc=f"writing {path.name}", unit="img", disable=not progress)
    for split_name, split in splits:
        for name in CLASSES:
            (partial / split_name / name).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(split), 512):
            images = split.images[start:start + 512]
            if image_size != images.shape[-1]:
                images = F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic",
                                       align_corners=False).round().clamp(0, 255).to(torch.uint8)
            pixels = images.permute(0, 2, 3, 1).numpy()  # HWC, as image files hold them
            for i, (image, label) in enumerate(zip(pixels, split.labels[start:start + 512].tolist())):
                target = partial / split_name / CLASSES[label] / f"{start + i:06d}.jpg"
                Image.fromarray(image).save(target, quality=JPEG_QUALITY)
            bar.update(len(images))
    bar.close()
    (partial / "labkit-export.json").write_text(json.dumps(manifest, indent=1))
    try:
        partial.rename(path)
    except OSError:  # another process finished the same export first: use it
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return path
