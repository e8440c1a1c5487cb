"""Checkpoints: a trained model that outlives its run.

A run with `save=True` leaves one file beside the results store (`checkpoints/<store>-run-<id>.pt`), written
atomically, its path and size in the runs table. The file holds plain values and tensors only: the run's
configuration, what the data looked like (classes, image shape, normalisation), the architecture as the run
left it (channel pruning removes channels, so each layer's sizes are kept) and the weights (unstructured
pruning's masks folded in: a pruned weight is a stored zero). It is always read with
`torch.load(weights_only=True)`, so a file that holds anything else (a pickled object, which could run code
when loaded) is refused, never executed.

    model = labkit.load_model(run_id)    # the trained network, in eval mode, pruned architecture included
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as data_mod, models
from .config import RunConfig
from .paths import write_atomically

FORMAT = "labkit-checkpoint/1"
# Each layer type's sizes: what channel pruning changes and a rebuilt model must take back.
SIZES = {nn.Conv2d: ("in_channels", "out_channels", "groups"), nn.Linear: ("in_features", "out_features"),
         nn.BatchNorm2d: ("num_features",), nn.GroupNorm: ("num_groups", "num_channels")}


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read safely or used as asked; the message names the fix."""


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state on the CPU with pruning masks folded in: `w_orig * w_mask` becomes a plain `w`."""
    state = model.state_dict()
    plain = {}
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            key, value = key[: -len("_orig")], value * state[key[: -len("_orig")] + "_mask"]
        plain[key] = value.detach().to("cpu", copy=True).contiguous()
    return plain


def architecture(model: nn.Module) -> dict[str, dict[str, int]]:
    """Each sized layer's sizes by module name (see SIZES)."""
    return {name: {a: int(getattr(m, a)) for a in SIZES[type(m)]}
            for name, m in model.named_modules() if type(m) in SIZES}


def payload(model: nn.Module, config: RunConfig, data) -> dict[str, Any]:
    """What a checkpoint file holds, from a run's raw model, configuration and data (labkit.data.ImageData)."""
    return {"format": FORMAT, "config": config.to_dict(), "classes": list(data.classes),
            "image_shape": tuple(data.image_shape), "mean": data.mean.detach().cpu().float(),
            "std": data.std.detach().cpu().float(), "architecture": architecture(model), "weights": weights(model)}


def write(path: str | os.PathLike, content: dict[str, Any]) -> int:
    """Save atomically (a temporary file renamed into place: never half a checkpoint); returns its bytes."""
    return write_atomically(path, lambda file: torch.save(content, file)).stat().st_size


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """A file's content, loaded with weights_only=True; anything that needs unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: give the path of a saved file, or the id "
                              "of a run trained with save=True.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "a pickled object")
        raise CheckpointError(
            f"{str(path)!r} was refused: it holds more than tensors and plain values ({found}). Loading such "
            "a file could run code it contains, so labkit never unpickles it. Save the weights alone, e.g. "
            "torch.save(model.state_dict(), path), or use a checkpoint labkit wrote.") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable torch file ({exc}): it may be truncated or not a "
                              "checkpoint at all.") from None


@dataclass
class Checkpoint:
    """A labkit checkpoint, read and checked. `model()` rebuilds the trained network."""

    path: Path
    config: RunConfig
    classes: list[str]
    image_shape: tuple[int, int, int]
    mean: torch.Tensor  # per channel, 0..255: what the run normalised its images with
    std: torch.Tensor
    architecture: dict[str, dict[str, int]]
    weights: dict[str, torch.Tensor]
    run_id: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network as the run left it, in eval mode: built from the configuration, then `load_into` it."""
        cfg = self.config
        model = models.build(cfg.model, self.num_classes, self.image_shape[0], cfg.width, cfg.depth, cfg.norm)
        self.load_into(model)
        return model.to(device).eval()

    def load_into(self, model: nn.Module, without: str | None = None) -> dict[str, torch.Tensor]:
        """Load the weights into a network built from the same settings: each layer resized to its recorded sizes
        (a channel-pruned network is smaller), then the weights loaded strictly; `without` names a layer left as
        it is (a classifier for other classes). Returns what was loaded."""
        skip = without + "." if without else None
        weights = {k: v for k, v in self.weights.items() if not (skip and k.startswith(skip))}
        resize(model, {k: v for k, v in self.architecture.items() if k != without}, weights)
        model.load_state_dict(weights, strict=without is None)
        return weights

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the float input the model was trained on."""
        return data_mod.normalize(images, self)


def resize(model: nn.Module, sizes: dict[str, dict[str, int]], state: dict[str, torch.Tensor]) -> None:
    """Give each layer the recorded sizes, and each parameter and buffer the shape it has in `state` (the new
    tensors are empty: load the state next)."""
    for name, attributes in sizes.items():
        module = model.get_submodule(name)
        for attribute, value in attributes.items():
            setattr(module, attribute, value)
    for key, tensor in state.items():
        owner, _, attribute = key.rpartition(".")
        module = model.get_submodule(owner)
        current = getattr(module, attribute, None)
        if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            empty = torch.empty(tensor.shape, dtype=current.dtype, device=current.device)
            if isinstance(current, nn.Parameter):
                setattr(module, attribute, nn.Parameter(empty, requires_grad=current.requires_grad))
            else:
                module.register_buffer(attribute, empty)


def read(source: int | str | os.PathLike, store=None) -> Checkpoint:
    """A checkpoint by run id (looked up in `store`, default the results store) or by file path."""
    path, run_id = resolve(source, store)
    return from_content(read_file(path), path, run_id)


def is_checkpoint(content: Any) -> bool:
    """True for what labkit saves; a plain state dict (torchvision's weights, say) is not one."""
    return isinstance(content, dict) and content.get("format") == FORMAT


def from_content(content: Any, path: Path, run_id: int | None = None) -> Checkpoint:
    if not is_checkpoint(content):
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{str(path)!r} is not a labkit checkpoint (format {found!r}, expected {FORMAT!r}): "
                              "a plain state dict (torchvision's weights, say) works as init=, not as a model "
                              "labkit can rebuild.")
    return Checkpoint(path, RunConfig.from_dict(content["config"]), list(content["classes"]),
                      tuple(content["image_shape"]), content["mean"], content["std"], content["architecture"],
                      content["weights"], run_id)


def resolve(source: int | str | os.PathLike, store=None) -> tuple[Path, int | None]:
    """(path, run id) of a checkpoint given as a run id or a path; clear errors for a run that kept none."""
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise CheckpointError(f"{source!r} is neither a run id nor a checkpoint path.")
    if isinstance(source, int):
        from .store import Store

        store = Store.of(store)
        record = store.run_record(source)
        if record is None:
            raise CheckpointError(f"run {source} is not in the store {str(store.path)!r}: list the runs with "
                                  "labkit.runs() (or `labkit runs`).")
        path = record["summary"].get("checkpoint")
        if not path:
            why = (f"it ended {record['status']!r}" if record["status"] not in ("completed", "stopped")
                   else "it was trained without save=True")
            raise CheckpointError(f"run {source} kept no checkpoint ({why}): train it again with save=True "
                                  "(--save on the command line).")
        return Path(path), source
    return Path(source), None


def load_model(source: int | str | os.PathLike, store=None, device: str | torch.device = "cpu") -> nn.Module:
    """The trained network of a run kept with save=True (by run id) or of a checkpoint file, in eval mode."""
    return read(source, store).model(device)
