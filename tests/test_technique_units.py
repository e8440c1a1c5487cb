"""The standard checks every registered technique gets from its entry in tests/technique_settings.py: it completes
on the CPU, is deterministic under a seed, is stored and shown (`labkit runs` columns, the plots' hover text), and
a live change, where allowed, starts a segment. Then each new technique's own behaviour."""
import math

import pytest
import torch

import labkit
from labkit import Controls, RunConfig, Store, Trainer, cli
from labkit.config import COLUMNS, KNOB
from labkit.lab import plots
from labkit.techniques import TECHNIQUES, channels_last, grad_accum, torch_compile
from technique_settings import SETTINGS, params

TINY = dict(train_size=256, test_size=64, epochs=1, batch_size=32, log_every=2, timing_warmup=1)


def test_every_registered_technique_has_test_settings():
    assert sorted(SETTINGS) == sorted(t.name for t in TECHNIQUES)


def test_knob_names_are_unique_and_declared_once():
    names = [k.name for t in TECHNIQUES for k in t.knobs]
    assert len(names) == len(set(names)) and set(names) <= set(KNOB)


@pytest.mark.parametrize("technique, settings", params())
def test_completes_is_deterministic_and_is_stored_and_shown(technique, settings, tmp_path, capsys):
    store = Store(tmp_path / "runs.db")
    config = {k: v() if callable(v) else v for k, v in settings["config"].items()}
    first = labkit.run(**TINY, progress=False, **config, store=store)
    second = labkit.run(**TINY, progress=False, **config, store=False)
    assert first.status == "completed", first.error
    assert first.steps == 256 // (32 * first.config.grad_accum)
    assert all(math.isfinite(v) for v in first.history["loss"]) and 0.0 <= first.accuracy <= 1.0
    assert first.history["loss"].tolist() == second.history["loss"].tolist()  # the same seed, the same run
    assert first.accuracy == second.accuracy

    stored = store.runs().iloc[-1]
    for name, value in config.items():
        assert stored[name] == value, name
    shown = [k for k in technique.names if k in COLUMNS]
    cli.main(["runs", "--db", str(store.path)])
    header, row = capsys.readouterr().out.strip().splitlines()[:2]
    hover = plots.comparison_figure(store).data[0].hovertext[0]
    for name in shown:
        label = "precision" if name == "amp" else name
        assert label in header.split(), name
        assert f"{name}={stored[name]}" in hover, name


@pytest.mark.parametrize("technique, settings", params(only_live=True))
def test_a_live_change_starts_a_segment(technique, settings):
    controls = Controls()
    segments, asked_at = [], []

    def listen(event):
        if event.kind == "logged" and not asked_at:
            controls.request(**settings["live"])
            asked_at.append(event.step)
        if event.kind == "segment_started":
            segments.append(event)
    result = Trainer(RunConfig(**{**TINY, "epochs": 2}), listeners=[listen], controls=controls).run()
    assert result.status == "completed", result.error
    assert len(segments) == 2 and set(segments[1].changes) == set(settings["live"])
    assert segments[1].step == asked_at[0] == result.segments.iloc[1]["start_step"]  # applied at that boundary


@pytest.mark.parametrize("technique", [t for t in TECHNIQUES if not any(k.live for k in t.knobs)], ids=lambda t: t.name)
def test_a_knob_that_cannot_change_mid_run_is_refused(technique):
    trainer = Trainer(RunConfig(**TINY))
    knob = technique.knobs[0]
    with pytest.raises(ValueError, match="cannot change during a run"):
        trainer.check_change({knob.name: knob.default})


# ---- gradient accumulation -------------------------------------------------------------------------------
EXACT = dict(train_size=512, test_size=128, epochs=1, augment="none", optimizer="sgd", schedule="constant",
             norm="group", log_every=1, timing_warmup=0, seed=3, store=False, progress=False)


def test_accumulating_4_micro_batches_of_32_takes_the_steps_of_one_batch_of_128():
    """GroupNorm does not mix the images of a batch, so the summed micro-batch gradients are the large batch's."""
    large = labkit.run(batch_size=128, **EXACT)
    accumulated = labkit.run(batch_size=32, grad_accum=4, **EXACT)
    small = labkit.run(batch_size=32, max_steps=4, **EXACT)
    assert accumulated.steps == large.steps == 4 and accumulated.micro_steps == 16 and large.micro_steps == 4
    diff = (accumulated.history["loss"] - large.history["loss"]).abs().max()
    assert diff < 1e-4, diff
    assert (small.history["loss"] - large.history["loss"]).abs().max() > 100 * diff  # not equal by accident
    assert accumulated.accuracy == pytest.approx(large.accuracy, abs=1 / 128)


def test_micro_batches_are_taken_whole_and_the_short_tail_dropped():
    batches = iter(range(7))
    assert grad_accum.micro_batches(batches, 3) == [0, 1, 2]
    assert grad_accum.micro_batches(batches, 3) == [3, 4, 5]
    assert grad_accum.micro_batches(batches, 3) is None  # one left: not a whole optimizer step


def test_grad_accum_larger_than_the_data_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="batch_size=64 x grad_accum=8 is larger than train_size=256"):
        RunConfig(train_size=256, batch_size=64, grad_accum=8).validate()


# ---- channels_last ---------------------------------------------------------------------------------------
def test_channels_last_converts_the_weights_and_batches_and_learns_the_same_function():
    model = labkit.models.build("cnn", 10)
    conv = model[0]
    channels_last.convert_model(model, True)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = channels_last.convert_batch(torch.randn(4, 3, 32, 32), True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    nchw = labkit.run(**TINY, progress=False, store=False, augment="none", lr=0.01)
    nhwc = labkit.run(**TINY, progress=False, store=False, augment="none", lr=0.01, channels_last=True)
    # Different kernels sum in a different order: equal up to float rounding, which grows a little per step
    # (a small lr: at the default, 0.05 at batch 32, the loss spikes and amplifies rounding chaotically).
    assert nhwc.history["loss"].tolist() == pytest.approx(nchw.history["loss"].tolist(), rel=1e-3)


# ---- compile ---------------------------------------------------------------------------------------------
def test_a_compiled_run_refuses_changes_that_would_recompile_and_takes_the_others():
    old = RunConfig(compile="default")
    for change in ({"batch_size": 128}, {"channels_last": True}, {"amp": "bf16"}, {"prune": 0.3}):
        problem = torch_compile.TECHNIQUE.check_change(old, old.replace(**change))
        assert problem and f"{next(iter(change))}=" in problem and "recompile" in problem
    for change in ({"augment": "none"}, {"lr": 0.01}, {"optimizer": "adam"}, {"grad_accum": 2}):
        assert torch_compile.TECHNIQUE.check_change(old, old.replace(**change)) is None
    with pytest.raises(ValueError, match="prune_at=0 .prune before training. or compile='off'"):
        RunConfig(compile="default", prune=0.5, prune_at=0.5).validate()


@pytest.mark.slow
def test_compile_time_is_reported_apart_from_throughput():
    torch._dynamo.reset()  # a model of this architecture compiled earlier in the process would be reused for free
    result = labkit.run(**TINY, progress=False, compile="default", store=False)
    eager = labkit.run(**TINY, progress=False, store=False)
    assert result.status == "completed" and result.compile_s > 0.2 and eager.compile_s is None
    # The compiled run's timed steps exclude the first one: its throughput is of the same order as eager's,
    # not dragged down by the compilation (which alone takes longer than all the timed steps).
    assert result.throughput > eager.throughput / 5
    assert "compile" in result.summary()


# ---- room made for what is coming ------------------------------------------------------------------------
def test_parameter_groups_keep_their_lr_scale_through_the_schedule():
    from labkit.techniques import optimizers

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    groups = [{"params": model[0].parameters(), "lr_scale": 0.1}, {"params": model[1].parameters()}]
    optimizer = optimizers.build("adamw", groups, lr=1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    optimizers.set_lr(optimizer, 0.5e-3)  # what the schedule does every step
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5e-4, 0.5e-3])


def test_the_loss_is_replaceable():
    calls = []

    def smoothed(logits, targets):
        calls.append(len(targets))
        return torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
    trainer = Trainer(RunConfig(**TINY, grad_accum=2))
    trainer.loss_fn = smoothed
    result = trainer.run()
    assert result.status == "completed" and calls == [32] * result.micro_steps
