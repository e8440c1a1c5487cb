"""RunConfig: round-trips, and every bad value is refused with the field, the value and what is allowed."""
import pytest
import torch

import labkit
from labkit.config import KNOB, RunConfig, field_names


def test_to_dict_from_dict_round_trip():
    config = RunConfig(amp="bf16", batch_size=64, lr=0.01, train_size=100)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert list(config.to_dict()) == field_names()


def test_defaults_are_valid_and_changed_lists_only_differences():
    assert RunConfig().validate() == RunConfig()
    assert RunConfig(amp="fp16", seed=3).changed() == {"amp": "fp16", "seed": 3}


@pytest.mark.parametrize("field, value, allowed", [
    ("batch_size", 0, ">= 1"),
    ("prune", 1.0, "[0.0, 0.95]"),
    ("prune", -0.1, "[0.0, 0.95]"),
    ("amp", "fp8", "'bf16'"),
    ("optimizer", "sgdx", "'lamb'"),
    ("augment", "rotate", "'cutmix'"),
    ("prune_method", "heads", "'channels'"),
    ("model", "vit", "'resnet18'"),
    ("dataset", "imagenet", "imagefolder:<path>"),
    ("device", "tpu", "'cuda:N'"),
    ("lr", 0.0, "or None"),
    ("epochs", 1.5, "integer"),
    ("batch_size", True, "integer"),
])
def test_bad_value_names_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as err:
        RunConfig(**{field: value}).validate()
    message = str(err.value)
    assert f"{field}={value!r}" in message and allowed in message


def test_missing_imagefolder_and_batch_larger_than_data():
    with pytest.raises(ValueError, match="'/no/such/dir' does not exist"):
        RunConfig(dataset="imagefolder:/no/such/dir").validate()
    with pytest.raises(ValueError, match="batch_size=512 is larger than train_size=100"):
        RunConfig(batch_size=512, train_size=100).validate()


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="unknown run setting"):
        RunConfig.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match="unknown run setting"):
        labkit.run(batchsize=3)


def test_run_refuses_bad_values_before_training(tmp_path):
    store = labkit.Store(tmp_path / "s.db")
    bad_values = [{"batch_size": 0}, {"prune": 1.0}, {"optimizer": "sgdx"}, {"augment": "nope"}]
    if not torch.cuda.is_available():
        bad_values.append({"device": "cuda"})
    for bad in bad_values:
        with pytest.raises(ValueError):
            labkit.run(store=store, progress=False, **bad)
    assert store.runs().empty  # nothing trained, nothing recorded


def test_option_lists_are_the_implementations():
    from labkit.techniques import augment, optimizers, torch_compile
    assert KNOB["augment"].allowed.options == tuple(augment.PRESETS)
    assert KNOB["optimizer"].allowed.options == tuple(optimizers.DEFAULT_LR)
    assert KNOB["compile"].allowed.options == torch_compile.MODES
