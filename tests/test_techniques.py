"""Each technique's functional core, alone: augmentation, precision, pruning, optimizers, models."""
import pytest
import torch
import torch.nn.functional as F
from pytorch_optimizer import Lamb, Lion

from labkit import models
from labkit.techniques import augment, optimizers, precision, pruning, schedule

CPU = torch.device("cpu")


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- augmentation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(augment.PRESETS))
def test_presets_keep_shape_and_are_deterministic_under_the_seed(preset):
    x, y = _batch()
    torch.manual_seed(0)
    a, ta = augment.apply(preset, x, y, _gen(1), 10)
    torch.manual_seed(0)
    b, tb = augment.apply(preset, x, y, _gen(1), 10)
    assert a.shape == x.shape and torch.equal(a, b) and torch.equal(ta, tb)
    if preset == "none":
        assert torch.equal(a, x) and torch.equal(ta, y)
    else:
        torch.manual_seed(0)
        c, _ = augment.apply(preset, x, y, _gen(2), 10)
        assert not torch.equal(a, x) and not torch.equal(a, c)  # it changes the batch, differently per seed


def test_flip_mirrors_whole_images():
    x, y = _batch(64)
    out, _ = augment.flip(x, y, _gen(0))
    mirrored = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((mirrored | kept).all()) and 16 < int(mirrored.sum()) < 48


def test_crop_shifts_by_at_most_the_padding():
    x = torch.arange(32.0).view(1, 1, 1, 32).expand(8, 3, 32, 32).contiguous()  # column index as the value
    out, _ = augment.crop(x, None, _gen(0), pad=4)
    shift = out[:, 0, 16, 16] - 16  # the centre column moved by the crop's offset
    assert shift.abs().max() <= 4 and len(shift.unique()) > 1
    assert torch.equal(augment.crop_at(x, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long), 32, 32), x)


def test_cutout_blanks_one_small_box_per_image():
    x = torch.ones(8, 3, 32, 32)
    out, _ = augment.cutout(x, None, _gen(0))
    blanked = (out == 0).all(dim=1).float().mean(dim=(1, 2))
    assert bool((blanked > 0).all()) and bool((blanked <= 81 / 1024).all())  # at most a 9x9 box of 32x32


@pytest.mark.parametrize("op", [augment.mixup, augment.cutmix])
def test_mixing_gives_soft_targets_that_sum_to_one(op):
    x, y = _batch(32)
    torch.manual_seed(0)
    out, targets = op(x, y, _gen(0), 10)
    assert targets.shape == (32, 10) and torch.allclose(targets.sum(1), torch.ones(32))
    assert F.cross_entropy(torch.zeros(32, 10), targets).item() == pytest.approx(torch.log(torch.tensor(10.0)).item())


# ---- precision --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amp, dtype", [("off", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_matmuls_in_the_chosen_dtype(amp, dtype):
    a = torch.randn(8, 8)
    with precision.autocast_context(CPU, amp):
        assert (a @ a).dtype == dtype


def test_scaler_only_for_fp16():
    assert precision.make_scaler(CPU, "fp16").is_enabled()
    assert not precision.make_scaler(CPU, "bf16").is_enabled()
    assert precision.scale_of(precision.make_scaler(CPU, "off")) is None
    assert precision.scale_of(precision.make_scaler(CPU, "fp16")) == 65536.0


# ---- pruning ----------------------------------------------------------------------------------------------
def _cnn():
    torch.manual_seed(0)
    return models.small_cnn(10, width=8)


def test_unstructured_reaches_the_target_and_masks_hold_through_training():
    model = _cnn()
    dense = pruning.total_weights(model)
    pruning.apply(model, "unstructured", 0.5, 0.0, torch.zeros(1, 3, 32, 32))
    assert pruning.sparsity(model, dense) == pytest.approx(0.5, abs=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    model(x)  # the mask is applied again on the forward pass
    assert pruning.sparsity(model, dense) == pytest.approx(0.5, abs=0.01)
    pruning.apply(model, "unstructured", 0.8, 0.5, torch.zeros(1, 3, 32, 32))
    assert pruning.sparsity(model, dense) == pytest.approx(0.8, abs=0.01)
    with pytest.raises(ValueError, match="pruning only adds"):
        pruning.apply(model, "unstructured", 0.3, 0.8, torch.zeros(1, 3, 32, 32))


def test_unstructured_keeps_flops_channels_cut_them():
    shape = (3, 32, 32)
    masked, removed = _cnn(), _cnn()
    dense_flops = models.flops_per_image(masked, shape, CPU)
    pruning.apply(masked, "unstructured", 0.5, 0.0, torch.zeros(1, *shape))
    pruning.apply(removed, "channels", 0.5, 0.0, torch.zeros(1, *shape))
    assert models.flops_per_image(masked, shape, CPU) == dense_flops  # masks: dense kernels, same work
    kept = models.flops_per_image(removed, shape, CPU) / dense_flops
    assert 0.2 < kept < 0.35  # half the channels in and out: about a quarter of the multiply-adds
    assert removed(torch.zeros(2, *shape)).shape == (2, 10)
    assert models.classifier(removed).out_features == 10


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_channel_pruning_follows_torchvision_dependencies(name):
    model = models.build(name, 10)
    before = models.count_params(model)
    pruning.apply(model, "channels", 0.3, 0.0, torch.zeros(1, 3, 32, 32))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert models.count_params(model) < 0.75 * before


def test_channel_pruning_in_two_steps_reaches_the_same_fraction():
    once, twice = _cnn(), _cnn()
    pruning.apply(once, "channels", 0.5, 0.0, torch.zeros(1, 3, 32, 32))
    pruning.apply(twice, "channels", 0.25, 0.0, torch.zeros(1, 3, 32, 32))
    pruning.apply(twice, "channels", 0.5, 0.25, torch.zeros(1, 3, 32, 32))
    assert [m.out_channels for m in once if isinstance(m, torch.nn.Conv2d)] == \
        [m.out_channels for m in twice if isinstance(m, torch.nn.Conv2d)]


# ---- optimizers and schedule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("nesterov", torch.optim.SGD),
                                       ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("rmsprop", torch.optim.RMSprop), ("lamb", Lamb), ("lion", Lion),
                                       ("adafactor", torch.optim.Adafactor)])
def test_each_optimizer_builds_and_steps(name, cls):
    model = torch.nn.Linear(4, 2)
    opt = optimizers.build(name, [{"params": model.parameters()}], optimizers.default_lr(name), weight_decay=1e-4)
    assert type(opt) is cls
    if name in ("sgd", "nesterov"):
        assert opt.param_groups[0]["nesterov"] == (name == "nesterov")
    before = model.weight.detach().clone()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_onecycle_warms_up_then_decays_to_zero():
    f = [schedule.lr_factor(p / 100, "onecycle", 0.2) for p in range(101)]
    assert f[20] == pytest.approx(1.0) and f[10] == pytest.approx(0.5) and f[100] == 0.0
    assert all(a <= b for a, b in zip(f[:20], f[1:21])) and all(a >= b for a, b in zip(f[20:], f[21:]))
    assert schedule.lr_factor(0.7, "constant", 0.2) == 1.0


# ---- models -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28)])
def test_models_take_small_images(name, channels, size):
    model = models.build(name, 10, in_channels=channels)
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 10)
    assert models.flops_per_image(model, (channels, size, size), CPU) > 0


def test_width_and_depth_scale_the_cnn():
    base = models.small_cnn(10, width=16, depth=3)
    wide = models.small_cnn(10, width=32, depth=3)
    deep = models.small_cnn(10, width=16, depth=4)
    flops = {k: models.flops_per_image(m, (3, 32, 32), CPU) for k, m in [("b", base), ("w", wide), ("d", deep)]}
    assert 3.5 < flops["w"] / flops["b"] < 4.5  # twice the channels in and out
    assert models.count_params(deep) > models.count_params(base)
