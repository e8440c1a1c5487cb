"""The lab: the widget panel, the live dashboard, static plots and the progress bar. ipywidgets and plotly load
here, on first use; the core (config, train, live, store) never imports this package."""
from __future__ import annotations

from .panel import Lab

__all__ = ["Lab"]
