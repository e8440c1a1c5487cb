"""Datasets in their real on-disk formats, written tiny into tmp_path and loaded through labkit.data.

CIFAR-10: the python pickles of cifar-10-python.tar.gz (`cifar-10-batches-py/data_batch_1..5`, `test_batch`,
`batches.meta`); FashionMNIST: the four uncompressed big-endian idx files in `FashionMNIST/raw/`; image
folders of PNGs in both layouts. Nothing here touches the network (LABKIT_OFFLINE=1 throughout).
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import labkit
from labkit import data
from labkit.data import DeviceBatches, LoaderBatches, MissingData, Split
from labkit.train import Trainer

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_OFFLINE", "1")
    monkeypatch.setenv("LABKIT_DB", str(tmp_path / "labkit.db"))


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- writers for the real formats ---------------------------------------------------------------------------
def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 10, seed: int = 0):
    """cifar-10-batches-py as the python version of CIFAR-10 has it: pickled dicts whose 'data' is uint8
    (N, 3072) rows (1024 red, 1024 green, 1024 blue values, each 32x32 row-major) and 'labels' a list of ints;
    batches.meta holds 'label_names'. (The originals are Python 2 pickles of str keys, which Python 3 reads
    with encoding='latin1' as str keys; protocol 2 with str keys reads back the same way.)"""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        batch = {"batch_label": f"training batch {i} of 5", "labels": y, "data": x,
                 "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]}
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        train_x.append(x)
        train_y += y
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = rng.integers(0, 10, n_test).tolist()
    (base / "test_batch").write_bytes(pickle.dumps(
        {"batch_label": "testing batch 1 of 1", "labels": test_y, "data": test_x,
         "filenames": [f"test_{j}.png" for j in range(n_test)]}, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps(
        {"num_cases_per_batch": per_batch, "label_names": CIFAR_CLASSES, "num_vis": 3072}, protocol=2))
    return (np.concatenate(train_x).reshape(-1, 3, 32, 32), np.array(train_y),
            test_x.reshape(-1, 3, 32, 32), np.array(test_y))


def _idx(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes: magic 0x00000800 + number of dimensions, then each size, big-endian."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashionmnist(root: Path, n_train: int = 24, n_test: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(x))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(y))
        out += [x, y]
    return out


def _png(path: Path, index: int, rng: np.random.Generator, size=(32, 32), mode: str = "RGB") -> np.ndarray:
    """A PNG whose first pixel encodes `index` (so a loaded image can be traced back); returns its RGB pixels."""
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    pixels[0, 0] = (index // 256, index % 256, 7)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return np.array(Image.fromarray(pixels).convert(mode).convert("RGB"))


def write_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 10, split: bool = False,
                       test_name: str = "test", seed: int = 0) -> dict[int, tuple[np.ndarray, str]]:
    """Class folders of 32x32 PNGs, in root/ (split=False) or in root/train and root/<test_name> (split=True).
    Returns {index: (RGB pixels, class name)}."""
    rng = np.random.default_rng(seed)
    images, index = {}, 0
    for c in classes:
        for j in range(per_class):
            where = root / c if not split else root / ("train" if j < per_class - 2 else test_name) / c
            images[index] = (_png(where / f"{j:03d}.png", index, rng), c)
            index += 1
    return images


def _trace(img: torch.Tensor) -> int:
    return int(img[0, 0, 0]) * 256 + int(img[1, 0, 0])


def _as_tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A split (Split or torch Dataset) as the uint8 images and int64 labels the training device would hold."""
    batches = DeviceBatches(split, torch.device("cpu"))
    return batches.images, batches.labels


# ---- CIFAR-10 -----------------------------------------------------------------------------------------------
def test_cifar_fixture_is_in_torchvisions_format(tmp_path):
    """The writer's files are read by torchvision's own CIFAR-10 code (its md5 checks aside), so a failure
    of labkit to load them below is labkit's, not the fixture's."""
    import torchvision

    train_x, train_y, _, _ = write_cifar10(tmp_path)

    class Unchecked(torchvision.datasets.CIFAR10):
        def _check_integrity(self):
            return True

        def _load_meta(self):
            with open(Path(self.root) / self.base_folder / "batches.meta", "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")["label_names"]

    ds = Unchecked(str(tmp_path), train=True)
    assert np.array_equal(ds.data, train_x.transpose(0, 2, 3, 1))
    assert ds.targets == train_y.tolist() and ds.classes == CIFAR_CLASSES


def test_cifar10_round_trips_pixels_labels_and_classes(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path, per_batch=6, n_test=10)
    d = data.load("cifar10", root=tmp_path)
    assert d.name == "cifar10" and d.classes == CIFAR_CLASSES and d.num_classes == 10
    assert d.image_shape == (3, 32, 32)
    for split, x, y in ((d.train, train_x, train_y), (d.test, test_x, test_y)):
        assert isinstance(split, Split)
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(y), 3, 32, 32)
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(y),)
        assert torch.equal(split.images, torch.from_numpy(x))
        assert torch.equal(split.labels, torch.from_numpy(y).to(torch.int64))
    assert torch.allclose(d.mean, torch.from_numpy(train_x).float().mean(dim=(0, 2, 3)))


def test_cifar10_fixed_subset_is_the_same_every_time(tmp_path):
    train_x, train_y, _, _ = write_cifar10(tmp_path, per_batch=6, n_test=10)
    full = {bytes(x.tobytes()): int(y) for x, y in zip(train_x, train_y)}
    torch.manual_seed(1)
    a = data.load("cifar10", train_size=11, test_size=4, root=tmp_path)
    torch.manual_seed(2)
    b = data.load("cifar10", train_size=11, test_size=4, root=tmp_path)
    assert len(a.train) == 11 and len(a.test) == 4
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.images, b.test.images)
    seen = {bytes(img.numpy().tobytes()): int(lbl) for img, lbl in zip(a.train.images, a.train.labels)}
    assert len(seen) == 11 and all(full[k] == v for k, v in seen.items())  # distinct, real, labels kept


def test_cifar10_missing_offline_names_the_files_and_folder(tmp_path):
    with pytest.raises(MissingData) as info:
        data.load("cifar10", root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(tmp_path / "cifar-10-batches-py") in message
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert name in message
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()  # offline: nothing was fetched


def test_cifar10_partly_present_is_missing_data(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(MissingData, match="test_batch"):
        data.load("cifar10", root=tmp_path)


# ---- FashionMNIST ---------------------------------------------------------------------------------------------
def test_fashionmnist_round_trips_pixels_labels_and_classes(tmp_path):
    train_x, train_y, test_x, test_y = write_fashionmnist(tmp_path, n_train=24, n_test=8)
    d = data.load("fashionmnist", root=tmp_path)
    assert d.classes == FASHION_CLASSES and d.image_shape == (1, 28, 28)
    for split, x, y in ((d.train, train_x, train_y), (d.test, test_x, test_y)):
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(y), 1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert torch.equal(split.images[:, 0], torch.from_numpy(x))
        assert torch.equal(split.labels, torch.from_numpy(y.astype(np.int64)))
    assert d.mean.shape == (1,) and d.mean.item() == pytest.approx(float(train_x.mean()), rel=1e-5)


def test_fashionmnist_fixed_subset_is_the_same_every_time(tmp_path):
    train_x, train_y, _, _ = write_fashionmnist(tmp_path, n_train=24, n_test=8)
    torch.manual_seed(5)
    a = data.load("fashionmnist", train_size=7, test_size=3, root=tmp_path)
    torch.manual_seed(6)
    b = data.load("fashionmnist", train_size=7, test_size=3, root=tmp_path)
    assert a.train.images.shape == (7, 1, 28, 28) and len(a.test) == 3
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    originals = {x.tobytes(): int(y) for x, y in zip(train_x, train_y)}
    picked = {img[0].numpy().tobytes(): int(lbl) for img, lbl in zip(a.train.images, a.train.labels)}
    assert len(picked) == 7 and all(originals[k] == v for k, v in picked.items())
    # a size at least the split's is the whole split
    assert len(data.load("fashionmnist", train_size=1000, root=tmp_path).train) == 24


def test_fashionmnist_missing_offline_names_the_files_and_folder(tmp_path):
    with pytest.raises(MissingData) as info:
        data.load("fashionmnist", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message


def test_unknown_dataset_name_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="dataset='mnist'"):
        data.load("mnist", root=tmp_path)


# ---- image folders --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("test_name", ["test", "val"])
def test_image_folder_train_test_layout(tmp_path, test_name):
    images = write_image_folder(tmp_path / "imgs", per_class=6, split=True, test_name=test_name)
    d = data.load(f"imagefolder:{tmp_path / 'imgs'}")
    assert d.classes == ["cat", "dog", "eel"] and d.image_shape == (3, 32, 32)
    assert len(d.train) == 3 * 4 and len(d.test) == 3 * 2
    for split, wanted_split in ((d.train, "train"), (d.test, "test")):
        x, y = _as_tensors(split)
        assert x.dtype == torch.uint8 and x.shape == (len(split), 3, 32, 32) and y.dtype == torch.int64
        for img, label in zip(x, y):
            pixels, cls = images[_trace(img)]
            assert torch.equal(img, torch.from_numpy(pixels).permute(2, 0, 1))  # PNG is lossless
            assert d.classes[int(label)] == cls
        # which split an image lands in follows the folders: per class, the last two files are the test ones
        in_test = {_trace(img) % 6 >= 4 for img in x}
        assert in_test == {wanted_split == "test"}


def test_image_folder_class_folders_split_90_10(tmp_path):
    images = write_image_folder(tmp_path / "imgs", classes=("b", "a"), per_class=10)
    d = data.load(f"imagefolder:{tmp_path / 'imgs'}")
    assert d.classes == ["a", "b"]  # sorted folder names
    assert len(d.train) == 18 and len(d.test) == 2
    train_x, train_y = _as_tensors(d.train)
    test_x, test_y = _as_tensors(d.test)
    train_ids, test_ids = {_trace(i) for i in train_x}, {_trace(i) for i in test_x}
    assert train_ids.isdisjoint(test_ids) and train_ids | test_ids == set(images)
    for img, label in zip(torch.cat([train_x, test_x]), torch.cat([train_y, test_y])):
        pixels, cls = images[_trace(img)]
        assert torch.equal(img, torch.from_numpy(pixels).permute(2, 0, 1)) and d.classes[int(label)] == cls
    # the split is fixed
    again = data.load(f"imagefolder:{tmp_path / 'imgs'}")
    assert {_trace(i) for i in _as_tensors(again.test)[0]} == test_ids


def test_image_folder_resizes_and_converts_any_image_to_rgb_32(tmp_path):
    rng = np.random.default_rng(1)
    _png(tmp_path / "imgs" / "grey" / "0.png", 0, rng, size=(40, 50), mode="L")
    _png(tmp_path / "imgs" / "grey" / "1.png", 1, rng, size=(64, 64), mode="RGBA")
    _png(tmp_path / "imgs" / "wide" / "0.png", 2, rng, size=(20, 90))
    _png(tmp_path / "imgs" / "wide" / "1.png", 3, rng, size=(33, 31))
    d = data.load(f"imagefolder:{tmp_path / 'imgs'}")
    x, y = _as_tensors(d.train)
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.uint8 and d.image_shape == (3, 32, 32)
    assert d.classes == ["grey", "wide"]


def test_image_folder_fixed_subset(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=10)
    torch.manual_seed(3)
    a = data.load(f"imagefolder:{tmp_path / 'imgs'}", train_size=9, test_size=2)
    torch.manual_seed(4)
    b = data.load(f"imagefolder:{tmp_path / 'imgs'}", train_size=9, test_size=2)
    assert len(a.train) == 9 and len(a.test) == 2
    ax, ay = _as_tensors(a.train)
    bx, by = _as_tensors(b.train)
    assert torch.equal(ax, bx) and torch.equal(ay, by)
    assert len({_trace(i) for i in ax}) == 9


def test_image_folder_missing_or_empty_is_missing_data(tmp_path):
    with pytest.raises(MissingData, match=str(tmp_path / "nowhere")):
        data.load(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingData, match="sub-folder per class"):
        data.load(f"imagefolder:{tmp_path / 'empty'}")


def test_image_folder_train_and_test_classes_must_match(tmp_path):
    rng = np.random.default_rng(0)
    _png(tmp_path / "imgs" / "train" / "cat" / "0.png", 0, rng)
    _png(tmp_path / "imgs" / "train" / "dog" / "0.png", 1, rng)
    _png(tmp_path / "imgs" / "test" / "cat" / "0.png", 2, rng)
    with pytest.raises(MissingData, match=r"\['cat', 'dog'\].*\['cat'\]"):
        data.load(f"imagefolder:{tmp_path / 'imgs'}")


def test_image_folder_train_test_layout_without_images_is_missing_data(tmp_path):
    rng = np.random.default_rng(0)
    _png(tmp_path / "imgs" / "train" / "cat" / "0.png", 0, rng)
    (tmp_path / "imgs" / "test" / "cat").mkdir(parents=True)  # no images in it
    with pytest.raises(MissingData):
        data.load(f"imagefolder:{tmp_path / 'imgs'}")


# ---- the two batch pipelines ----------------------------------------------------------------------------------
def _numbered_split(n: int) -> Split:
    """Image i is filled with i, its label is i: a batch shows exactly which examples it holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return Split(images, torch.arange(n, dtype=torch.int64))


def _pipelines(split):
    return {"device": DeviceBatches(split, torch.device("cpu")), "dataloader": LoaderBatches(split, torch.device("cpu"))}


@pytest.mark.parametrize("kind", ["device", "dataloader"])
def test_batch_size_read_before_each_batch(kind):
    pipeline = _pipelines(_numbered_split(40))[kind]
    sizes = iter([4, 4, 8, 3, 16, 16, 16])
    current = {"size": None}

    def batch_size():
        current["size"] = next(sizes)
        return current["size"]

    got = []
    for images, labels in pipeline.train_batches(batch_size, torch.Generator().manual_seed(0)):
        assert len(labels) == current["size"]  # the size read for this batch, not the first one
        assert images.shape == (current["size"], 3, 4, 4) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64
        assert torch.equal(images[:, 0, 0, 0].long(), labels)  # images stay with their labels
        got.append(labels)
    # 4+4+8+3+16 = 35 fit in 40; the next 16 does not: that partial batch is dropped
    assert [len(b) for b in got] == [4, 4, 8, 3, 16]
    seen = torch.cat(got)
    assert len(set(seen.tolist())) == 35  # no example twice in an epoch


@pytest.mark.parametrize("kind", ["device", "dataloader"])
def test_last_partial_batch_is_dropped_and_order_is_seeded(kind):
    pipeline = _pipelines(_numbered_split(10))[kind]
    epoch = [b[1] for b in pipeline.train_batches(lambda: 4, torch.Generator().manual_seed(7))]
    assert [len(b) for b in epoch] == [4, 4]
    again = [b[1] for b in pipeline.train_batches(lambda: 4, torch.Generator().manual_seed(7))]
    assert all(torch.equal(a, b) for a, b in zip(epoch, again))
    other = torch.cat([b[1] for b in pipeline.train_batches(lambda: 4, torch.Generator().manual_seed(8))])
    assert not torch.equal(torch.cat(epoch), other)
    # evaluation sees every example, in order, including the last partial batch
    assert torch.equal(torch.cat([y for _, y in pipeline.eval_batches()]), torch.arange(10))
    assert torch.equal(torch.cat([y for _, y in pipeline.eval_batches(limit=3)]), torch.arange(3))


def test_auto_loader_streams_image_folders_and_keeps_tensors_resident(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=4)
    folder = data.load(f"imagefolder:{tmp_path / 'imgs'}")
    cpu = torch.device("cpu")
    assert isinstance(data.batches(folder.train, "auto", cpu), LoaderBatches)
    assert isinstance(data.batches(folder.train, "device", cpu), DeviceBatches)
    assert isinstance(data.batches(_numbered_split(8), "auto", cpu), DeviceBatches)
    assert isinstance(data.batches(_numbered_split(8), "dataloader", cpu), LoaderBatches)


# ---- end to end -----------------------------------------------------------------------------------------------


def test_run_on_an_image_folder_uses_the_dataloader(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=20)  # 36 train, 4 test
    folder = str(tmp_path / "imgs")
    result = labkit.run(dataset="imagefolder:" + folder, train_size=30, epochs=1, store=False, progress=False,
                        batch_size=8, width=4, depth=1)
    assert result.status == "completed", result.error
    assert result.steps == 30 // 8  # the partial batch of 6 is dropped
    assert 0.0 <= result.accuracy <= 1.0

    config = labkit.RunConfig(dataset="imagefolder:" + folder, train_size=30, batch_size=8, epochs=1, width=4,
                              depth=1, timing_warmup=0, log_every=1)
    trainer = Trainer(config)
    result = trainer.run()
    assert result.status == "completed", result.error
    assert isinstance(trainer.train_batches, LoaderBatches) and isinstance(trainer.test_batches, LoaderBatches)
    assert len(trainer.train_batches) == 30 and len(trainer.test_batches) == 4
    assert result.history["batch_size"].tolist() == [8, 8, 8] and result.history["step"].tolist() == [1, 2, 3]
    assert result.epochs["test_accuracy"].iloc[0] in {0.0, 0.25, 0.5, 0.75, 1.0}  # 4 test images


def test_run_cifar10_through_the_dataloader(tmp_path, monkeypatch):
    write_cifar10(tmp_path, per_batch=8, n_test=8)  # 40 train images
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    config = labkit.RunConfig(dataset="cifar10", loader="dataloader", batch_size=16, epochs=1, width=4, depth=1,
                              timing_warmup=0, log_every=1)
    trainer = Trainer(config)
    result = trainer.run()
    assert result.status == "completed", result.error
    assert isinstance(trainer.train_batches, LoaderBatches)
    assert result.steps == 2 and trainer.data.classes == CIFAR_CLASSES


@pytest.mark.parametrize("loader", ["dataloader", "device"])
def test_run_fashionmnist_single_channel(tmp_path, monkeypatch, loader):
    write_fashionmnist(tmp_path, n_train=40, n_test=8)
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    trainer = Trainer(labkit.RunConfig(dataset="fashionmnist", loader=loader, batch_size=16, epochs=1, width=4,
                                       depth=1, timing_warmup=0, log_every=1))
    result = trainer.run()
    assert result.status == "completed", result.error
    assert isinstance(trainer.train_batches, LoaderBatches if loader == "dataloader" else DeviceBatches)
    assert result.steps == 2  # 40 // 16
    assert trainer.data.image_shape == (1, 28, 28) and trainer.data.classes == FASHION_CLASSES
