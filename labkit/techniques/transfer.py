"""Transfer learning: start from another run's weights, and choose which of them go on learning.

`init` loads a run kept with save=True (by id) or a weights file: a labkit checkpoint is rebuilt exactly (a
channel-pruned network included) and must be the same architecture; a plain state dict (torchvision's ResNet-18
weights, say) loads every tensor whose name and shape match, and the run's info lists the rest. When the
classes differ, the classifier is replaced by a fresh one. `freeze` stops the gradients of the early layers:
a frozen layer's weights stay as loaded (its batch-norm statistics still follow the new data), its backward
pass for the weights is skipped, and with the whole backbone frozen backward stops at the head, so steps are
cheaper (MFU still counts 3x the forward FLOPs per image, so it overstates a frozen run's utilisation). `pretrained_lr_scale` trains the loaded layers at a fraction of the peak lr (one optimizer group each),
so a fine-tune nudges them instead of overwriting them. Pretrain on one task, fine-tune on a small share of
another: `dataset="synthetic-b"` is a second task of 5 other classes made for that.
"""
from __future__ import annotations

from .base import Allowed, Control, Knob, Technique, int_or_text, number, run_or_path

FREEZE = ("none", "backbone")


def _freeze_ok(v) -> bool:
    return v in FREEZE or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def frozen_names(model, freeze) -> set[str]:
    """Parameter names `freeze` holds still: none, all but the classifier's, or all before the last N blocks."""
    from .. import models

    if freeze == "none":
        return set()
    head = models.classifier_name(model) + "."
    names = [n for n, _ in model.named_parameters() if not n.startswith(head)]
    if freeze == "backbone":
        return set(names)
    blocks = models.blocks(model)
    if freeze > len(blocks):
        raise ValueError(f"freeze={freeze}: this network has {len(blocks)} blocks before its classifier; train "
                         f"the last 1 to {len(blocks)} of them, or use freeze='none' or 'backbone'.")
    trained = tuple(name + "." for block in blocks[-freeze:] for name in block)
    return {n for n in names if not n.startswith(trained)}


def load_init(model, source, knobs, ctx) -> set[str]:
    """Load `source` into the freshly built model; returns the names of the parameters it set."""
    from .. import checkpoints

    path, run_id = checkpoints.resolve(source)
    content = checkpoints.read_file(path)
    if checkpoints.is_checkpoint(content):
        loaded = _load_checkpoint(model, checkpoints.from_content(content, path, run_id), source, knobs, ctx)
    else:
        loaded = _load_matching(model, content, source, ctx)
    return {n for n, _ in model.named_parameters() if n in loaded}


def _load_checkpoint(model, checkpoint, source, knobs, ctx) -> set[str]:
    from .. import models

    cfg = checkpoint.config
    shape = ("model", "width", "depth", "norm") if cfg.model == "cnn" else ("model", "norm")
    differ = {k: getattr(cfg, k) for k in shape if getattr(cfg, k) != getattr(knobs, k)}
    if differ or checkpoint.image_shape[0] != ctx.example_input.shape[1]:
        given = ", ".join(f"{k}={v!r}" for k, v in differ.items()) or f"{checkpoint.image_shape[0]}-channel images"
        raise ValueError(f"init={source!r} is a network with {given}, which this run's does not match: set the "
                         "same model settings as the run you start from (or a dataset with its image channels).")
    head = models.classifier_name(model)
    replace_head = checkpoint.num_classes != ctx.num_classes  # another task's classes: a new classifier
    weights = checkpoint.load_into(model, without=head if replace_head else None)
    if replace_head and model.get_submodule(head).in_features != checkpoint.architecture[head]["in_features"]:
        parent, _, name = head.rpartition(".")  # channel pruning left fewer features for the head to read
        setattr(model.get_submodule(parent), name,
                models.new_head(checkpoint.architecture[head]["in_features"], ctx.num_classes).to(ctx.device))
    ctx.info["init"] = {"source": source, "from_dataset": cfg.dataset, "loaded_tensors": len(weights),
                        "head_replaced": replace_head}
    return set(weights)


def _load_matching(model, state, source, ctx) -> set[str]:
    """A plain state dict: every tensor whose name and shape match this model's."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"init={source!r} holds neither a labkit checkpoint nor a state dict (names -> tensors).")
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(f"init={source!r}: none of its {len(state)} tensors matches this network's names and "
                         f"shapes ({type(model).__name__}): is it weights for the same "
                         "architecture?")
    model.load_state_dict(matching, strict=False)
    ctx.info["init"] = {"source": source, "loaded_tensors": len(matching),
                        "skipped": sorted(set(state) - set(matching))}
    return set(matching)


def _setup(model, knobs, ctx) -> None:
    ctx.state["pretrained"] = load_init(model, knobs.init, knobs, ctx) if knobs.init is not None else set()


def _param_groups(model, knobs, ctx):
    """Frozen parameters stop needing gradients and leave the optimizer; loaded ones get their own lr scale."""
    frozen = frozen_names(model, knobs.freeze)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    pretrained = ctx.state.get("pretrained", set())
    if not frozen and (not pretrained or knobs.pretrained_lr_scale == 1.0):
        return None  # the trainer's single group
    named = [(n, p) for n, p in model.named_parameters() if n not in frozen]
    groups = [{"params": [p for n, p in named if n in pretrained], "lr_scale": knobs.pretrained_lr_scale},
              {"params": [p for n, p in named if n not in pretrained]}]
    return [g for g in groups if g["params"]]


def _check(config) -> str | None:
    if config.pretrained_lr_scale != 1.0 and config.init is None:
        return (f"pretrained_lr_scale={config.pretrained_lr_scale} scales the layers init loads, and init is None: "
                "give init (a run id or a weights file) or leave the scale at 1.")
    return None


def _check_change(old, new) -> str | None:
    if new.freeze != old.freeze and new.nproc > 1:
        return (f"freeze={new.freeze!r}: a distributed run cannot change which layers train (DDP fixed them when "
                "it wrapped the model); start a new run.")
    return None


TECHNIQUE = Technique(
    name="transfer",
    summary="start from another run's weights (init), freeze early layers or train them at a smaller lr: far "
            "better accuracy from little data when the tasks share features; none when they do not",
    knobs=(
        Knob("init", None, "start from a run kept with save=True (its id) or a weights file (never downloaded); "
             "the classifier is replaced when the classes differ", run_or_path(), column=True),
        Knob("freeze", "none", "layers that do not train: none, backbone (all but the classifier), or N (all but "
             "the last N blocks)", Allowed(_freeze_ok, "'none', 'backbone' or an integer N >= 1 (train the last N "
             "blocks and the classifier)", int_or_text, options=(*FREEZE, 1, 2, 3)),
             live="next step: the optimizer is rebuilt over the layers that train (its state starts empty)",
             control=Control("dropdown"), column=True),
        Knob("pretrained_lr_scale", 1.0, "the lr of the layers init loaded, as a fraction of the peak lr (the new "
             "classifier trains at the peak)", number(0.0, 10.0),
             live="next step: the optimizer is rebuilt with the new ratio (its state starts empty)",
             control=Control("float", step=0.1)),
    ),
    setup=_setup,
    param_groups=_param_groups,
    check=_check,
    check_change=_check_change,
    change=lambda model, old, new, ctx: {"optimizer"},
)
