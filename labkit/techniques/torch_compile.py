"""torch.compile: TorchDynamo captures the training model's forward (and AOTAutograd its backward) and Inductor
generates fused kernels for them. The first step pays the compilation (tens of seconds on a small CPU, less
on a warm cache, next to nothing when the same architecture was compiled earlier in the same process, since
Dynamo reuses that graph); the run reports it as `compile_s`, apart from throughput, which never includes it.

Only the model that trains is compiled: evaluation, FLOP counting and pruning use the raw model, so switching
to eval mode never recompiles. A compiled graph is specialised to the shapes, memory format, autocast dtype and
module structure it saw; a live change of any of those would recompile (or, past Dynamo's cache limit, fall
back to eager without saying so), so such changes are refused with the reason instead.
"""
from __future__ import annotations

from ._lazy import lazy_import
from .base import Control, Knob, Technique, one_of

torch = lazy_import("torch")

MODES = ("off", "default", "reduce-overhead", "max-autotune")
# Live knobs whose change the compiled graph never sees; changing any other live knob would recompile it.
GRAPH_SAFE = ("augment", "lr", "optimizer", "grad_accum")


def wrap(model, mode: str):
    """The model that trains: `model` itself when off, else its compiled form (compiled on the first call)."""
    if mode == "off":
        return model
    return torch.compile(model, mode=mode, dynamic=False)


def _check_change(old, new) -> str | None:
    if old.compile == "off":
        return None
    changed = [n for n in vars(new) if getattr(old, n) != getattr(new, n) and n not in GRAPH_SAFE]
    if changed:
        return (f"{changed[0]}={getattr(new, changed[0])!r} cannot change on a compiled run (compile="
                f"{old.compile!r}): the compiled graph is specialised to it, and a change would recompile it. "
                "Start a new run for the new value, or use compile='off' to change it live.")
    return None


def _check(config) -> str | None:
    if config.compile != "off" and config.prune > 0 and config.prune_at > 0:
        return (f"compile={config.compile!r} with prune={config.prune} at prune_at={config.prune_at}: pruning "
                "mid-run changes the model and would recompile it; use prune_at=0 (prune before training) or "
                "compile='off'.")
    return None


TECHNIQUE = Technique(
    name="compile",
    summary="torch.compile of the training model: fused kernels, faster steps once compiled, for a compilation "
            "paid on the first step; small runs and launch-bound tiny models may never earn it back",
    knobs=(Knob("compile", "off", "torch.compile the training model: off, or a mode (default, reduce-overhead, "
                "max-autotune); the compile time is reported as compile_s", one_of(*MODES),
                control=Control("dropdown"), column=True),),
    wrap=lambda model, knobs: wrap(model, knobs.compile),
    check_change=_check_change,
    check=_check,
)
