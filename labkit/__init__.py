"""labkit: a Jupyter-first lab for training efficiency: techniques you switch on a live run, measured side by side.

The names below load on first use: `import labkit` (and `labkit --help`) stays light, and torch, the widgets
(ipywidgets) and the charts (plotly) are imported only by what needs them.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# public name -> (module, attribute); attribute None: the module itself
_EXPORTS = {
    "RunConfig": ("config", "RunConfig"),
    "RunResult": ("result", "RunResult"),
    "Store": ("store", "Store"),
    "Trainer": ("train", "Trainer"),
    "Controls": ("train", "Controls"),
    "LiveRun": ("live", "LiveRun"),
    "Lab": ("lab.panel", "Lab"),
    "run": ("api", "run"),
    "runs": ("api", "runs"),
    "find_lr": ("finders", "find_lr"),
    "find_batch_size": ("finders", "find_batch_size"),
    "tune": ("tuning", "tune"),
    "TuneResult": ("tuning", "TuneResult"),
    "TuneLab": ("lab.tune_panel", "TuneLab"),
    "ablate": ("ablation", "ablate"),
    "record": ("lessons", "record"),
    "compare": ("lessons", "compare"),
    "load_model": ("checkpoints", "load_model"),
    "quantize": ("quantization", "quantize"),
    "QuantizeResult": ("quantization", "QuantizeResult"),
    "plots": ("lab.plots", None),
    "synthetic": ("data.synthetic", None),
}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module_name, attribute = _EXPORTS[name]
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        module_name, attribute = name, None  # a submodule: labkit.devices, labkit.lessons ...
    else:
        raise AttributeError(f"module 'labkit' has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
