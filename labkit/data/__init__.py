"""Datasets and the batch pipeline.

Every dataset arrives as uint8 images (N, C, H, W) and int64 labels. Two ways feed the training loop:
- `DeviceBatches`: the whole split lives on the training device as uint8 (CIFAR-10's 50,000 images are
  150 MB) and a batch is one index operation, so no worker process and no per-image Python run in the loop;
- `LoaderBatches`: a torch DataLoader, for data that does not fit (or to study data loading).
Both yield uint8 batches on the device; `normalize` turns them into float batches there, a whole batch at once
(augmentation is a technique: labkit.techniques.augment).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset as TorchDataset, Subset, TensorDataset
from torchvision.transforms import v2

from . import synthetic
from ..paths import data_dir

EVAL_BATCH = 1024


class MissingData(ValueError):
    """The dataset's files are not where labkit looks, and could not be downloaded."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> "Split":
        """A fixed subset of n examples (the same for every run and seed), or the whole split for None."""
        if n is None or n >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:n]
        return Split(self.images[keep], self.labels[keep])


@dataclass
class ImageData:
    """A dataset ready for training: its two splits (tensors or torch Datasets of uint8 images) and stats."""

    name: str
    train: Split | TorchDataset
    test: Split | TorchDataset
    classes: list[str]
    image_shape: tuple[int, int, int]
    mean: torch.Tensor  # per channel, in 0..255
    std: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sample = images[:10_000].float()
    return sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3)).clamp_min(1.0)


def _from_splits(name, train: Split, test: Split, classes, train_size, test_size) -> ImageData:
    train, test = train.subset(train_size), test.subset(test_size)
    mean, std = _channel_stats(train.images)
    return ImageData(name, train, test, list(classes), tuple(train.images.shape[1:]), mean, std)


def _offline() -> bool:
    return os.environ.get("LABKIT_OFFLINE", "") not in ("", "0")


def load_synthetic(root: Path, task: str = "synthetic") -> tuple[Split, Split]:
    """A generated dataset, cached in `root` after the first call (synthetic: about 10 s to make, under 1 s to
    load; synthetic-b: about 2 s)."""
    cache = root / f"{task}-v{synthetic.VERSION}.pt"
    if cache.exists():
        saved = torch.load(cache)
    else:
        (train_x, train_y), (test_x, test_y) = synthetic.train_and_test(task)
        saved = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
        root.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(saved, partial)
        os.replace(partial, cache)  # atomic: concurrent first runs never read a half-written cache
    return Split(saved["train_x"], saved["train_y"]), Split(saved["test_x"], saved["test_y"])


class _CIFAR10(torchvision.datasets.CIFAR10):
    # torchvision checks the md5 of every file on each load. A download is checked by its archive's md5; on
    # load, checking that the files exist lets re-packed copies and test files in the same format load too.
    def _check_integrity(self) -> bool:
        base = Path(self.root) / self.base_folder
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all((base / name).is_file() for name in names)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def _torchvision_split(cls, root: Path, train: bool, missing_hint: str):
    try:
        return cls(root=str(root), train=train, download=False)
    except RuntimeError:
        if _offline():
            raise MissingData(missing_hint) from None
    try:
        return cls(root=str(root), train=train, download=True)
    except Exception as exc:  # no network, proxy, disk full...: say what to do by hand
        raise MissingData(f"{missing_hint} (the download failed: {exc})") from None


def load_cifar10(root: Path) -> tuple[Split, Split, list[str]]:
    hint = (f"cifar10 is not in {root / 'cifar-10-batches-py'}: put data_batch_1 ... data_batch_5, test_batch "
            f"and batches.meta there (extract cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html into " + str(root) + ")")
    splits = []
    for train in (True, False):
        ds = _torchvision_split(_CIFAR10, root, train, hint)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(Split(images, torch.tensor(ds.targets, dtype=torch.int64)))
    return splits[0], splits[1], ds.classes


def load_fashionmnist(root: Path) -> tuple[Split, Split, list[str]]:
    raw = root / "FashionMNIST" / "raw"
    hint = (f"fashionmnist is not in {raw}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there (gunzip the four files from "
            "https://github.com/zalandoresearch/fashion-mnist)")
    splits = []
    for train in (True, False):
        ds = _torchvision_split(torchvision.datasets.FashionMNIST, root, train, hint)
        splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)))
    return splits[0], splits[1], ds.classes


def _image_folder(path: Path, image_size: int) -> torchvision.datasets.ImageFolder:
    to_uint8 = v2.Compose([v2.ToImage(), v2.RGB(), v2.Resize(image_size), v2.CenterCrop(image_size)])
    return torchvision.datasets.ImageFolder(str(path), transform=to_uint8)


def load_image_folder(path: Path, image_size: int = 32) -> tuple[TorchDataset, TorchDataset, list[str]]:
    """`path/train/<class>/*` and `path/test/<class>/*` (or `val/`); or `path/<class>/*`, split 90/10."""
    test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    try:
        if (path / "train").is_dir() and test_dir is not None:
            train, test = _image_folder(path / "train", image_size), _image_folder(test_dir, image_size)
            if train.classes != test.classes:
                raise MissingData(f"imagefolder:{path}: train/ has classes {train.classes} but {test_dir.name}/ "
                                  f"has {test.classes}; give both the same class folders.")
            return train, test, train.classes
        full = _image_folder(path, image_size)
    except FileNotFoundError as exc:  # a class folder without images, or no class folders at all
        raise MissingData(f"imagefolder:{path}: {exc}. Put images in one sub-folder per class.") from None
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
    n_test = max(1, len(full) // 10)
    return Subset(full, order[n_test:]), Subset(full, order[:n_test]), full.classes


def _stack(ds: TorchDataset, limit: int) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(min(limit, len(ds)))])


def _fixed_subset(ds: TorchDataset, n: int | None) -> TorchDataset:
    if n is None or n >= len(ds):
        return ds
    return Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist())


def load(name: str, train_size: int | None = None, test_size: int | None = None,
         root: str | Path | None = None) -> ImageData:
    """Load a dataset by its `dataset` setting, cut to the requested sizes."""
    root = Path(root) if root is not None else data_dir()
    if name in synthetic.TASKS:
        train, test = load_synthetic(root, name)
        return _from_splits(name, train, test, synthetic.TASKS[name][0], train_size, test_size)
    if name == "cifar10":
        return _from_splits(name, *load_cifar10(root), train_size, test_size)
    if name == "fashionmnist":
        return _from_splits(name, *load_fashionmnist(root), train_size, test_size)
    if name.startswith("imagefolder:"):
        train, test, classes = load_image_folder(Path(name.split(":", 1)[1]))
        train, test = _fixed_subset(train, train_size), _fixed_subset(test, test_size)
        sample = _stack(train, 2000)
        mean, std = _channel_stats(sample)
        return ImageData(name, train, test, list(classes), tuple(sample.shape[1:]), mean, std)
    raise ValueError(f"dataset={name!r} is not allowed: use 'synthetic', 'synthetic-b', 'cifar10', 'fashionmnist' "
                     "or 'imagefolder:<path>'.")


def whole(n: int) -> slice:
    """A single process's share of n items: all of them (labkit.dist.ranks.Ranks.share splits them)."""
    return slice(0, n)


def _index_batches(order, batch_size: Callable[[], int], share: Callable[[int], slice]) -> Iterator:
    """This process's share of each batch of `order` (a tensor or a list); the batch size is read before each
    batch (it may change mid-epoch) and the last partial batch is dropped. Every process draws the same order."""
    start, size = 0, batch_size()
    while start + size <= len(order):
        yield order[start:start + size][share(size)]
        start, size = start + size, batch_size()


def _eval_part(n: int, limit: int | None, share: Callable[[int], slice]) -> slice:
    """This process's part of the first `limit` of n items (all n when limit is None)."""
    return share(n if limit is None else min(limit, n))


class DeviceBatches:
    """A split held on the device as uint8; batches are index operations. `share(n)`: which part of each batch
    (and of the evaluation pass) is this process's, in a distributed run."""

    def __init__(self, split: Split | TorchDataset, device: torch.device, share: Callable[[int], slice] = whole):
        if not isinstance(split, Split):  # an image folder that fits: decode it once (one pass: images and labels)
            images, labels = zip(*(split[i] for i in range(len(split))))
            split = Split(torch.stack(images), torch.tensor(labels))
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.share = share

    def __len__(self) -> int:
        return len(self.labels)

    def train_batches(self, batch_size: Callable[[], int], gen: torch.Generator) -> Iterator:
        """One epoch in a random order; the batch size is read before each batch (it may change mid-epoch)."""
        order = torch.randperm(len(self), device=self.images.device, generator=gen)
        for idx in _index_batches(order, batch_size, self.share):
            yield self.images[idx], self.labels[idx]

    def eval_batches(self, limit: int | None = None) -> Iterator:
        part = _eval_part(len(self), limit, self.share)
        for start in range(part.start, part.stop, EVAL_BATCH):
            end = min(part.stop, start + EVAL_BATCH)
            yield self.images[start:end], self.labels[start:end]


class _ResizableBatches(torch.utils.data.Sampler):
    """Shuffled index batches whose size is read before each batch, as DeviceBatches does."""

    def __init__(self, n: int, batch_size: Callable[[], int], gen: torch.Generator, share: Callable[[int], slice]):
        self.n, self.batch_size, self.gen, self.share = n, batch_size, gen, share

    def __iter__(self):
        # A generator: the order is drawn at the first batch, not at iter(). A DataLoader with workers calls iter()
        # twice (on creation and on its reset), and an eager draw would give it another order than 0 workers get.
        yield from _index_batches(torch.randperm(self.n, generator=self.gen).tolist(), self.batch_size, self.share)


class LoaderBatches:
    """A split read through a torch DataLoader (images decoded by worker processes), moved to the device.
    `options` are DataLoader arguments (labkit.techniques.data_loading.loader_options); `close()` ends the
    workers (a stopped live run must not leave them behind); `share` as for DeviceBatches."""

    def __init__(self, split: Split | TorchDataset, device: torch.device, options: dict | None = None,
                 share: Callable[[int], slice] = whole):
        self.dataset = TensorDataset(split.images, split.labels) if isinstance(split, Split) else split
        self.device, self.options = device, dict(options or {})
        self.cpu_gen = torch.Generator()
        self.share = share
        self._open: list[Iterator] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def _to_device(self, loader: DataLoader) -> Iterator:
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True))

    def _start(self, loader: DataLoader) -> Iterator:
        self._open = [it for it in self._open if it.gi_frame is not None]  # drop finished ones
        batches = self._to_device(loader)
        self._open.append(batches)
        return batches

    def train_batches(self, batch_size: Callable[[], int], gen: torch.Generator) -> Iterator:
        self.cpu_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device)))
        sampler = _ResizableBatches(len(self), batch_size, self.cpu_gen, self.share)
        return self._start(DataLoader(self.dataset, batch_sampler=sampler, **self.options))

    def eval_batches(self, limit: int | None = None) -> Iterator:
        part = _eval_part(len(self), limit, self.share)
        ds = self.dataset if part == slice(0, len(self)) else Subset(self.dataset, range(part.start, part.stop))
        options = {**self.options, "persistent_workers": False}  # evaluation's workers end with the pass
        return self._start(DataLoader(ds, batch_size=EVAL_BATCH, **options))

    def close(self) -> None:
        """Close every open pass: its DataLoader iterator goes, and with it the worker processes."""
        for batches in self._open:
            batches.close()
        self._open = []


def batches(split, loader: str, device: torch.device, options: dict | None = None,
            share: Callable[[int], slice] = whole):
    """The pipeline for a split: 'device' keeps it resident, 'dataloader' streams it (DataLoader `options`);
    'auto' keeps tensors resident and streams image folders. `share`: this process's part of each batch."""
    if loader == "device" or (loader == "auto" and isinstance(split, Split)):
        return DeviceBatches(split, device, share)
    return LoaderBatches(split, device, options, share)


def normalize(images: torch.Tensor, data: ImageData) -> torch.Tensor:
    """uint8 batch -> float batch with zero mean and unit variance per channel (the training set's statistics)."""
    mean = data.mean.to(images.device).view(1, -1, 1, 1)
    std = data.std.to(images.device).view(1, -1, 1, 1)
    return (images.float() - mean) / std
