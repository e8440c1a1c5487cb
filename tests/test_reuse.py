"""A trained model that outlives its run: checkpoints (save, load, refusal of unsafe files), knowledge
distillation (teacher) and transfer learning (init, freeze, pretrained_lr_scale), each on tiny real runs."""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

import labkit
from labkit import RunConfig, Store, Trainer, checkpoints, cli, models
from labkit import data as data_mod
from labkit.techniques import distillation, transfer

BASE = dict(width=8, depth=2, train_size=512, test_size=256, epochs=1, batch_size=64)
TINY = dict(BASE, progress=False)


def tiny_config(**changes) -> RunConfig:
    return RunConfig(**{**BASE, **changes})


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_DB", str(tmp_path / "runs.db"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A saved run that learned something (3 epochs on 2,048 images): the teacher and the init below."""
    db = tmp_path_factory.mktemp("teacher") / "runs.db"
    os.environ["LABKIT_DB"], before = str(db), os.environ.get("LABKIT_DB")
    try:
        result = labkit.run(**{**TINY, "train_size": 2048, "epochs": 3, "batch_size": 128}, save=True)
    finally:
        os.environ["LABKIT_DB"] = before
    assert result.status == "completed" and result.accuracy > 0.3, (result.error, result.accuracy)
    return result


def accuracy_of(model, checkpoint, dataset="synthetic", test_size=256):
    data = data_mod.load(dataset, None, test_size)
    with torch.no_grad():
        return (model(checkpoint.normalize(data.test.images)).argmax(1) == data.test.labels).float().mean().item()


# ---- checkpoints -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pruning", [{}, {"prune": 0.5, "prune_at": 0.0},
                                     {"prune": 0.5, "prune_method": "channels", "prune_at": 0.0}],
                         ids=["dense", "masks", "channels"])
def test_a_saved_run_reloads_to_the_same_network_and_accuracy(pruning):
    result = labkit.run(**TINY, **pruning, save=True)
    stored = labkit.runs().iloc[-1]
    path = checkpoints.Path(result.checkpoint)
    assert path.is_file() and stored["checkpoint"] == str(path) and stored["checkpoint_bytes"] == path.stat().st_size
    assert path.parent == Store().path.parent / "checkpoints"
    assert not list(path.parent.glob("*.tmp"))  # written through a temporary file, renamed into place

    model = labkit.load_model(result.run_id)
    assert not model.training
    checkpoint = checkpoints.read(result.run_id)
    assert accuracy_of(model, checkpoint) == pytest.approx(result.accuracy, abs=1e-9)
    if pruning.get("prune_method") == "channels":  # the smaller architecture is rebuilt
        assert models.count_params(model) == result.params < result.dense_params
    if pruning and "prune_method" not in pruning:  # masks folded in: the zeros are stored weights
        zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        assert zeros / sum(m.weight.numel() for m in model.modules()
                           if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))) == pytest.approx(0.5, abs=0.01)
        assert not any(k.endswith(("_orig", "_mask")) for k in checkpoint.weights)


def test_a_pickled_payload_is_refused_never_executed(tmp_path, teacher):
    ran = tmp_path / "ran"

    class Payload:  # what unpickling it would do: create a file
        def __reduce__(self):
            return (open, (str(ran), "w"))

    content = checkpoints.read_file(teacher.checkpoint)
    content["weights"]["extra"] = Payload()
    path = tmp_path / "evil.pt"
    torch.save(content, path)
    with pytest.raises(checkpoints.CheckpointError, match="refused.*never unpickles"):
        labkit.load_model(str(path))
    with pytest.raises(checkpoints.CheckpointError, match="refused"):
        labkit.run(**TINY, init=str(path))
    assert not ran.exists()


def test_missing_and_unsaved_checkpoints_are_refused_with_the_fix(tmp_path):
    plain = labkit.run(**TINY)
    with pytest.raises(checkpoints.CheckpointError, match=f"run {plain.run_id} kept no checkpoint.*save=True"):
        labkit.load_model(plain.run_id)
    with pytest.raises(checkpoints.CheckpointError, match="run 999 is not in the store"):
        labkit.load_model(999)
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        labkit.load_model(str(tmp_path / "nothing.pt"))
    torch.save({"0.weight": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(checkpoints.CheckpointError, match="not a labkit checkpoint"):
        labkit.load_model(str(tmp_path / "plain.pt"))
    with pytest.raises(ValueError, match="save=True with store=False"):
        labkit.run(**TINY, save=True, store=False)
    diverges = dict(optimizer="sgd", lr=10.0, weight_decay=1.0, schedule="constant", batch_size=16, log_every=1,
                    max_steps=30)  # NaN within a few steps (as in tests/test_store.py)
    failed = labkit.run(**{**TINY, **diverges}, save=True)  # nothing worth keeping
    assert failed.status == "failed" and failed.checkpoint is None
    with pytest.raises(checkpoints.CheckpointError, match="ended 'failed'"):
        labkit.load_model(failed.run_id)


def test_a_checkpoint_that_cannot_be_written_loses_nothing_else():
    (Store().path.parent / "checkpoints").write_text("a file where the folder should be")
    result = labkit.run(**TINY, save=True)
    assert result.status == "completed" and result.checkpoint is None
    stored = labkit.runs().iloc[-1]
    assert stored["status"] == "completed" and stored["accuracy"] == result.accuracy
    assert "checkpoint not saved" in Store().events(result.run_id)["error"].dropna().iloc[-1]


def test_a_live_run_stopped_mid_way_keeps_what_it_learned():
    live = labkit.LiveRun(tiny_config(epochs=50, log_every=2, save=True)).start()
    try:
        wait_until = time.monotonic() + 60
        while live.step < 4 and live.running and time.monotonic() < wait_until:
            time.sleep(0.05)
    finally:
        live.stop()
    result = live.wait(60)
    assert result.status == "stopped" and result.steps < 50 * 8
    assert os.path.getsize(result.checkpoint) == result.checkpoint_bytes > 0
    assert labkit.runs().iloc[-1]["checkpoint"] == result.checkpoint


def test_the_cli_saves_and_trains_from_a_checkpoint(capsys):
    assert cli.main(["run", "--width", "8", "--depth", "2", "--train-size", "512", "--test-size", "128",
                     "--epochs", "1", "--batch-size", "64", "--save"]) == 0
    first = labkit.runs().iloc[-1]
    assert os.path.isfile(first["checkpoint"])
    assert cli.main(["run", "--width", "8", "--depth", "2", "--train-size", "256", "--test-size", "128",
                     "--epochs", "1", "--batch-size", "64", "--dataset", "synthetic-b", "--init", str(first["id"]),
                     "--freeze", "1", "--teacher", "none"]) == 0
    second = labkit.runs().iloc[-1]
    assert second["init"] == first["id"] and second["freeze"] == 1 and second["status"] == "completed"


# ---- distillation ----------------------------------------------------------------------------------------
def test_the_distillation_loss_is_hintons():
    torch.manual_seed(0)
    student, teacher, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    T = 4.0
    expected_soft = (F.softmax(teacher / T, 1) * (F.log_softmax(teacher / T, 1) - F.log_softmax(student / T, 1))
                     ).sum(1).mean() * T * T
    assert distillation.distillation_loss(student, teacher, y, T, 1.0) == pytest.approx(expected_soft.item(), rel=1e-5)
    assert distillation.distillation_loss(student, teacher, y, T, 0.0) == pytest.approx(F.cross_entropy(student, y).item())
    assert distillation.distillation_loss(teacher, teacher, y, T, 1.0) == pytest.approx(0.0, abs=1e-6)


def test_a_student_learns_from_its_teacher_and_pays_for_its_forward_pass(teacher):
    source = teacher.checkpoint  # a path works as well as a run id (which is looked up in LABKIT_DB)
    seen = []
    trainer = Trainer(tiny_config(width=4, teacher=source, kd_alpha=1.0, train_size=2048, epochs=2))
    original = distillation.distillation_loss

    def spy(student, teacher_logits, y, T, alpha):
        seen.append((teacher_logits.requires_grad, trainer.ctx.state["teacher"].training, T, alpha))
        return original(student, teacher_logits, y, T, alpha)
    distillation.distillation_loss = spy
    try:
        result = trainer.run()
    finally:
        distillation.distillation_loss = original
    assert result.status == "completed", result.error
    assert len(seen) == result.micro_steps and set(seen) == {(False, False, 4.0, 1.0)}  # no grad, eval mode, the knobs
    assert trainer.info["teacher"]["flops_per_image"] > result.flops_per_image  # a width-8 teacher, width-4 student

    # With kd_alpha=1 the student learns from the teacher alone (no labels): it learns to agree with it.
    checkpoint = checkpoints.read(source)
    data = data_mod.load("synthetic", None, 256)
    x = checkpoint.normalize(data.test.images)
    with torch.no_grad():
        agree = (trainer.model.eval()(x).argmax(1) == checkpoint.model()(x).argmax(1)).float().mean().item()
    # Measured: 25% accuracy from the teacher's soft targets alone (chance is 10%), agreeing with it on 44%.
    assert result.accuracy > 0.15 and agree > 0.3, (result.accuracy, agree)


def test_a_teacher_of_other_classes_is_refused(teacher):
    with pytest.raises(ValueError, match="a teacher must know the same classes"):
        labkit.run(**TINY, dataset="synthetic-b", teacher=teacher.checkpoint)
    stored = labkit.runs().iloc[-1]  # recorded as failed, with the reason
    assert stored["status"] == "failed" and "5 classes" in stored["error"]


# ---- transfer learning -----------------------------------------------------------------------------------
def test_init_and_freeze_keep_the_backbone_and_replace_the_head(teacher):
    checkpoint = checkpoints.read(teacher.checkpoint)
    trainer = Trainer(tiny_config(train_size=256, dataset="synthetic-b", init=teacher.checkpoint, freeze="backbone"))
    result = trainer.run()
    assert result.status == "completed", result.error
    state = trainer.model.state_dict()
    head = models.classifier_name(trainer.model)
    for name, value in checkpoint.weights.items():
        if name.startswith(head + "."):
            continue
        if "running_" in name or "num_batches" in name:  # batch-norm statistics follow the new data
            continue
        assert torch.equal(state[name].cpu(), value), name  # frozen: exactly as loaded
    assert state[head + ".weight"].shape == (5, checkpoint.architecture[head]["in_features"])  # 5 new classes
    assert trainer.info["init"]["head_replaced"] is True
    trained = [n for g in trainer.optimizer.param_groups for p in g["params"] for n, q in trainer.model.named_parameters() if p is q]
    assert trained == [head + ".weight", head + ".bias"]


def test_pretrained_layers_train_at_the_scaled_lr_and_freezing_n_blocks_counts_blocks(teacher):
    trainer = Trainer(tiny_config(init=teacher.checkpoint, dataset="synthetic-b", train_size=256, freeze=1,
                                  pretrained_lr_scale=0.1, optimizer="sgd", lr=0.1, schedule="constant"))
    trainer.setup()
    lrs = sorted(g["lr"] for g in trainer.optimizer.param_groups)
    assert lrs == pytest.approx([0.01, 0.1])  # the loaded block at a tenth, the new classifier at the peak
    blocks = models.blocks(trainer.model)  # width 8, depth 2: the stem and two blocks
    assert len(blocks) == 3
    trains = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trains == {n for n, _ in trainer.model.named_parameters()
                      if n.startswith(tuple(m + "." for m in blocks[-1]) + (models.classifier_name(trainer.model) + ".",))}
    with pytest.raises(ValueError, match="freeze=4: this network has 3 blocks"):
        transfer.frozen_names(trainer.model, 4)
    with pytest.raises(ValueError, match="pretrained_lr_scale=0.1 scales the layers init loads"):
        RunConfig(pretrained_lr_scale=0.1).validate()


def test_freeze_changes_live_and_the_optimizer_follows():
    controls = labkit.Controls()

    def listen(event):
        if event.kind == "logged" and not controls.has_pending() and event.segment == 0:
            controls.request(freeze="backbone")
    trainer = Trainer(tiny_config(log_every=2),
                      listeners=[listen], controls=controls)
    result = trainer.run()
    assert result.status == "completed" and len(result.segments) == 2
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == \
        models.classifier(trainer.model).weight.numel() + 10


def test_init_from_another_architecture_is_refused_and_a_plain_state_dict_loads_by_name(teacher, tmp_path):
    with pytest.raises(ValueError, match="init=.* is a network with width=8, which this run's does not match"):
        labkit.run(**{**TINY, "width": 16}, init=teacher.checkpoint)
    # A plain state dict (as torchvision's weight files are): tensors load where names and shapes match.
    plain = {k: v for k, v in checkpoints.read(teacher.checkpoint).weights.items()}
    plain["0.weight"] = torch.zeros(8, 3, 5, 5)  # another stem: skipped, and listed
    torch.save(plain, tmp_path / "weights.pth")
    trainer = Trainer(tiny_config(init=str(tmp_path / "weights.pth")))
    trainer.setup()
    assert trainer.info["init"]["skipped"] == ["0.weight"]
    assert torch.equal(trainer.model.state_dict()["4.weight"].cpu(), plain["4.weight"])
    assert trainer.model.state_dict()["0.weight"].abs().sum() > 0  # left at its initial values
