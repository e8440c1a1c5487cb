"""Which technique in a combination mattered: the full combination against each leave-one-out, over seeds.

    result = labkit.ablate(amp="bf16", augment="mixup", prune=0.5, optimizer="lamb", seeds=[0, 1, 2])

For each technique the configuration changes from its defaults (a technique is a unit of labkit.techniques: its
knobs go back to their defaults together), the same configuration runs without it, on the same seeds. "Without"
means "at its default": the default of augment is flip-crop, so `augment="none"` ablated trains with flip-crop. A
technique's contribution is, seed by seed, the full combination against the one without it: throughput as a
ratio (+25% means the technique made training 25% faster), accuracy in points. The mean over seeds is its
contribution; the spread (standard deviation of the paired differences) says whether it is more than noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .config import KNOB, RunConfig
from .measure import mean_and_spread
from .store import Store
from .techniques import TECHNIQUES

FULL = "all"


def in_combination(config: RunConfig) -> dict[str, dict[str, Any]]:
    """technique name -> its knobs that `config` changes from their defaults."""
    changed = config.changed()
    found = {t.name: {n: changed[n] for n in t.names if n in changed} for t in TECHNIQUES}
    return {name: knobs for name, knobs in found.items() if knobs}


def leave_one_out(config: RunConfig, techniques: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """label -> the changes that make it: "all" (none), and "without <technique>" (its knobs to their defaults)."""
    present = in_combination(config)
    chosen = list(present) if techniques is None else list(techniques)
    unknown = [t for t in chosen if t not in present]
    if unknown:
        raise ValueError(f"ablate: {unknown} {'is' if len(unknown) == 1 else 'are'} not in the combination: the "
                         f"configuration changes {sorted(present) or 'no technique'} from the defaults.")
    if not chosen:
        raise ValueError("ablate: the configuration changes no technique from its defaults, so there is nothing to "
                         "leave out; e.g. labkit.ablate(amp='bf16', augment='mixup', prune=0.5, optimizer='lamb').")
    settings = {FULL: {}}
    for name in chosen:
        settings[f"without {name}"] = {k: KNOB[k].default for k in present[name]}
        config.replace(**settings[f"without {name}"]).validate()  # an impossible leave-one-out fails here
    return settings


@dataclass
class Ablation:
    """`runs`: one row per run (setting, seed, figures, run id); `table`: one row per setting with the mean and
    spread of its figures and, for each left-out technique, its contribution."""
    config: RunConfig
    runs: pd.DataFrame
    table: pd.DataFrame

    def figure(self):
        from .lab.plots import ablation_figure

        return ablation_figure(self.table)

    def verdicts(self) -> list[str]:
        """A sentence per technique: its contribution to throughput and accuracy, and whether either is more than
        the seed-to-seed spread (twice the spread of the paired differences)."""
        lines = []
        for row in self.table[self.table["left_out"].notna()].to_dict("records"):
            parts = []
            for figure, scale, unit in (("throughput", 100, "%"), ("accuracy", 100, " pts")):
                mean, std = row[f"{figure}_contribution"], row[f"{figure}_contribution_std"]
                if not math.isfinite(mean):
                    parts.append(f"{figure} not measured")
                    continue
                said = f"{figure} {mean * scale:+.1f}{unit}"
                if row["runs"] < 2:
                    parts.append(said + " (one seed: no spread)")
                elif abs(mean) > 2 * std:
                    parts.append(said + f" (beyond the noise, +-{std * scale:.1f}{unit})")
                else:
                    parts.append(said + f" (within the noise, +-{std * scale:.1f}{unit})")
            lines.append(f"{row['left_out']}: " + "; ".join(parts))
        return lines

    def summary(self) -> str:
        full = self.table[self.table["setting"] == FULL].iloc[0]
        head = (f"all ({', '.join(f'{k}={v}' for k, v in self.config.changed().items() if k != 'seed')}): "
                f"{full['throughput']:,.0f} img/s, accuracy {full['accuracy']:.1%} over {int(full['runs'])} seed(s)")
        return "\n".join([head, *self.verdicts()])


def ablate(config: RunConfig | dict | None = None, *, techniques: Iterable[str] | None = None,
           seeds: Iterable[int] = (0, 1, 2), store: Store | str | Path | None = None, progress: bool = True,
           quiet: bool = False, **overrides: Any) -> Ablation:
    """Run the combination and each leave-one-out on every seed; returns an Ablation (table, runs, figure).

    `techniques`: which to leave out (default: every technique the configuration changes). The settings take turns
    within a seed, starting one further along at each seed, so a slow moment of a shared machine falls on all of
    them. Every run is recorded in the store (`store=False`: none). A failed run counts as missing (NaN), and its
    error is in `runs`; Ctrl-C stops the ablation (the run in progress is recorded as stopped)."""
    from tqdm.auto import tqdm

    from .api import run

    config = RunConfig.of(config).replace(**overrides)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("ablate: seeds=[] runs nothing; give at least one seed, e.g. seeds=[0, 1, 2].")
    settings = leave_one_out(config.validate(), techniques)
    rows = []
    with tqdm(total=len(seeds) * len(settings), unit="run", desc="ablation", disable=not progress) as bar:
        labels = list(settings)
        for turn, seed in enumerate(seeds):
            for label in labels[turn % len(labels):] + labels[:turn % len(labels)]:
                try:
                    result = run(config.replace(seed=seed, **settings[label]), store=store, progress=False)
                    row = {"status": result.status, "throughput": result.throughput, "accuracy": result.accuracy,
                           "run_id": result.run_id, "error": result.error}
                except Exception as exc:  # noqa: BLE001 - recorded as failed by the run; the ablation goes on
                    row = {"status": "failed", "throughput": None, "accuracy": None, "run_id": None,
                           "error": f"{type(exc).__name__}: {exc}"}
                rows.append({"setting": label, "seed": seed, **row})
                bar.update(1)
                if not quiet:
                    bar.write(_line(rows[-1]))
    runs = pd.DataFrame(rows)
    return Ablation(config, runs, summarise(runs, settings))


def _line(row: dict[str, Any]) -> str:
    if row["status"] != "completed":
        return f"{row['setting']} (seed {row['seed']}): {row['status']} ({row['error']})"
    return (f"{row['setting']} (seed {row['seed']}): {row['throughput']:,.0f} img/s, "
            f"accuracy {row['accuracy']:.1%}")


def summarise(runs: pd.DataFrame, settings: Iterable[str]) -> pd.DataFrame:
    """The Ablation's table from its runs (setting, seed, throughput, accuracy), one row per setting in order."""
    def figure(setting: str, name: str) -> dict[int, float]:
        part = runs[runs["setting"] == setting]
        return {s: (math.nan if v is None or pd.isna(v) else float(v)) for s, v in zip(part["seed"], part[name])}

    rows = []
    for setting in settings:
        row: dict[str, Any] = {"setting": setting, "left_out": None if setting == FULL else setting[len("without "):],
                               "runs": int((runs["setting"] == setting).sum())}
        for name in ("throughput", "accuracy"):
            row[name], row[f"{name}_std"] = mean_and_spread(list(figure(setting, name).values()))
            if setting != FULL:  # seed by seed: with the technique against without it
                full, without = figure(FULL, name), figure(setting, name)
                paired = [(full[s] / without[s] - 1) if name == "throughput" else (full[s] - without[s])
                          for s in full if s in without]
                row[f"{name}_contribution"], row[f"{name}_contribution_std"] = mean_and_spread(paired)
            else:
                row[f"{name}_contribution"] = row[f"{name}_contribution_std"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)
