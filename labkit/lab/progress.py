"""A tqdm progress bar that listens to the training loop (a widget in notebooks, text in terminals)."""
from __future__ import annotations

from tqdm.auto import tqdm


class ProgressBar:
    def __init__(self, **tqdm_options):
        self.options = tqdm_options
        self.bar = None

    def __call__(self, event) -> None:
        kind = event.kind
        if kind == "run_started":
            self.bar = tqdm(total=event.total_steps, unit="step", desc=event.info["device"], **self.options)
        elif kind == "logged":
            self.bar.update(event.step - self.bar.n)
            postfix = {"loss": f"{event.loss:.3f}"}
            if event.throughput is not None:
                postfix["img/s"] = f"{event.throughput:,.0f}"
            self.bar.set_postfix(postfix, refresh=False)
        elif kind == "epoch_ended":
            self.bar.set_description(f"epoch {event.epoch} acc {event.test_accuracy:.1%}")
        elif kind == "run_ended":
            self.bar.close()
