"""Test settings for every registered technique (in the spirit of Composer's algorithm_settings.py): what to set
to exercise it, and a change a live run can make (None: it cannot change mid-run). tests/test_technique_units.py
runs the standard checks on each entry; a registered technique without an entry fails them.
"""
import pytest

_saved: dict[str, str] = {}


def saved_checkpoint() -> str:
    """The checkpoint of a tiny run kept with save=True, trained once per session: a teacher, or an init."""
    if "path" not in _saved:
        import labkit

        result = labkit.run(train_size=256, test_size=64, epochs=1, batch_size=32, save=True, progress=False)
        _saved["path"] = result.checkpoint
    return _saved["path"]


# A value may be a function: called when the test runs (a checkpoint to start from is trained then).
SETTINGS = {
    "precision": dict(config={"amp": "bf16"}, live={"amp": "bf16"}),
    "grad_accum": dict(config={"grad_accum": 2}, live={"grad_accum": 2}),
    "augment": dict(config={"augment": "cutmix"}, live={"augment": "mixup"}),
    "transfer": dict(config={"init": saved_checkpoint, "freeze": "backbone", "pretrained_lr_scale": 0.5},
                     live={"freeze": 1}),
    "distillation": dict(config={"teacher": saved_checkpoint, "kd_alpha": 0.7}, live={"kd_alpha": 0.9}),
    "pruning": dict(config={"prune": 0.5, "prune_method": "channels", "prune_at": 0.0}, live={"prune": 0.5}),
    "optimizer": dict(config={"optimizer": "adafactor"}, live={"optimizer": "adafactor"}),
    "schedule": dict(config={"schedule": "cosine"}, live={"schedule": "step"}),
    "channels_last": dict(config={"channels_last": True}, live={"channels_last": True}),
    # A cold compile of the tiny CNN takes 25-35 s on 2 cores; the second run finds Inductor's cache warm.
    "compile": dict(config={"compile": "default"}, live=None, marks=[pytest.mark.slow]),
    # Two processes started with torchrun (gloo on the CPU); tests/test_distributed.py checks the rest.
    "distributed": dict(config={"nproc": 2}, live=None),
    # One worker process streams the batches: the DataLoader path with its start method, timeout and clean-up.
    "data_loading": dict(config={"loader": "dataloader", "num_workers": 1, "persistent_workers": True}, live=None),
}


def params(only_live: bool = False):
    """pytest parameters over the registry, one per technique (ids are the technique names)."""
    from labkit.techniques import TECHNIQUES

    return [pytest.param(t, SETTINGS.get(t.name), id=t.name, marks=(SETTINGS.get(t.name) or {}).get("marks", []))
            for t in TECHNIQUES if not only_live or any(k.live for k in t.knobs)]
