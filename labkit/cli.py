"""The command line: `labkit run --amp bf16 --batch-size 256`, `labkit runs`. Flags are RunConfig's fields."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .config import COLUMNS, KNOBS, RunConfig, field_names
from .techniques.base import Allowed, run_or_path
from .signals import exit_code, stop_on_signals

EXIT_FAILED, EXIT_USAGE = 1, 2


_BOOLEANS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}


def _parser_for(allowed: Allowed) -> Callable[[str], Any]:
    """Parse a flag's text as the knob declares (int, float, bool or str); 'none' gives None where allowed."""
    def parse(text: str) -> Any:
        if allowed.optional and text.lower() == "none":
            return None
        if allowed.parse is bool:
            if text.lower() not in _BOOLEANS:
                raise argparse.ArgumentTypeError(f"{text!r} is not on/off (or true/false)")
            return _BOOLEANS[text.lower()]
        try:
            return allowed.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if allowed.parse is int else 'a number'}")
    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run configuration (RunConfig fields)")
    for knob in KNOBS:
        switch = dict(nargs="?", const=True) if knob.allowed.parse is bool else {}  # `--save` alone means on
        group.add_argument("--" + knob.name.replace("_", "-"), dest=knob.name, default=knob.default,
                           metavar=knob.name.upper(), type=_parser_for(knob.allowed), **switch,
                           help=f"{knob.help}; {knob.allowed.text} (default: {knob.default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description="Measure what training-efficiency knobs do.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="train one configuration and record it",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_config_flags(run_p)
    _add_store_flags(run_p)
    dist_p = run_p.add_argument_group("several machines (with --nproc: processes per machine)")
    dist_p.add_argument("--nnodes", type=int, default=1, help="machines taking part")
    dist_p.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                        help="machine 0's address for torchrun's rendezvous (with --nnodes > 1)")
    dist_p.add_argument("--print-launch", action="store_true",
                        help="print the torchrun command for each machine instead of training")

    runs_p = sub.add_parser("runs", help="list recorded runs")
    runs_p.add_argument("--db", default=None, help="results store (default: $LABKIT_DB or data/labkit.db)")
    runs_p.add_argument("--last", type=int, default=20, help="show the last N runs (0: all)")
    runs_p.add_argument("--status", choices=["running", "completed", "failed", "stopped", "interrupted"], default=None)
    runs_p.add_argument("--study", default=None, help="only the trials of this tuning study (labkit tune)")
    runs_p.add_argument("--kind", choices=["train", "find_lr", "find_batch_size", "quantize"], default="train",
                        help="training runs, the finders' records, or quantize evaluations")

    lr_p = sub.add_parser("find-lr", help="LR range test: sweep the lr over ~100 steps, print the suggestions",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_config_flags(lr_p)
    lr_p.add_argument("--start-lr", type=float, default=1e-5, help="the sweep's first lr")
    lr_p.add_argument("--end-lr", type=float, default=10.0, help="the sweep's last lr")
    lr_p.add_argument("--steps", type=int, default=100, help="optimizer steps in the sweep")
    lr_p.add_argument("--plot", metavar="FILE.html", default=None, help="also write the curve as a Plotly page")
    _add_store_flags(lr_p)

    bs_p = sub.add_parser("find-batch-size", help="throughput and memory by batch size; the fastest with a margin",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_config_flags(bs_p)
    bs_p.add_argument("--max-batch-size", type=int, default=4096, help="largest size to try")
    bs_p.add_argument("--margin", type=float, default=0.2, help="share of the device's memory to keep free")
    bs_p.add_argument("--time-limit", type=float, default=60.0, help="seconds: stop going up past this")
    bs_p.add_argument("--plot", metavar="FILE.html", default=None, help="also write the figure as a Plotly page")
    _add_store_flags(bs_p)

    tune_p = sub.add_parser("tune", help="search a space of knobs with Optuna; every trial a stored run",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    search = tune_p.add_argument_group("the search (labkit.tune)")
    search.add_argument("--space", default=None, metavar="space.json",
                        help='JSON: knob -> a list of choices or a range {"low": .., "high": .., "log": ..}, '
                             'e.g. {"lr": {"low": 0.01, "high": 1.0}, "batch_size": [64, 128, 256]}; without it, '
                             '--study joins that existing study (its space and settings come from the storage)')
    search.add_argument("--objectives", default="accuracy",
                        help="comma-separated: accuracy, throughput, time_to_accuracy, peak_memory")
    search.add_argument("--sampler", default="tpe", help="grid, random, tpe, gp or nsga2")
    search.add_argument("--trials", type=int, default=20, help="trials to run")
    search.add_argument("--timeout", type=float, default=None, help="seconds after which no trial starts")
    search.add_argument("--sampler-seed", type=int, default=0, help="the sampler's seed (--seed is the runs')")
    search.add_argument("--target-accuracy", type=float, default=None, help="for time_to_accuracy")
    search.add_argument("--pruner", default="auto", help="auto, median or none")
    search.add_argument("--workers", type=int, default=1, help="processes training trials at once")
    search.add_argument("--storage", default=None,
                        help="Optuna storage URL (default: the results store's SQLite file); journal:PATH for "
                             "Optuna's journal file")
    search.add_argument("--study", default=None, help="study name; an existing study is continued")
    _add_config_flags(tune_p)
    _add_store_flags(tune_p)

    q_p = sub.add_parser("quantize", help="int8 post-training quantization of a saved run, measured against fp32 "
                         "and bf16: accuracy, size, latency", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q_p.add_argument("source", type=run_or_path().parse, metavar="RUN_ID",
                     help="a run trained with --save (or a checkpoint file's path)")
    q_p.add_argument("--method", choices=["static", "dynamic"], default="static",
                     help="static: int8 convolutions and Linear layers, calibrated (PT2E); dynamic: int8 Linear "
                          "layers, activations scaled per call (torchao)")
    q_p.add_argument("--calibration-batches", type=int, default=10, help="training batches run to calibrate (static)")
    q_p.add_argument("--batch-size", type=int, default=64, help="images per calibration batch")
    q_p.add_argument("--large-batch", type=int, default=256, help="the batch size timed besides batch 1")
    q_p.add_argument("--repeats", type=int, default=20, help="timed calls per latency (the median is reported)")
    q_p.add_argument("--test-size", type=int, default=None, help="test images for accuracy (default: the run's)")
    q_p.add_argument("--no-compile", action="store_true",
                     help="measure eager models (static int8 then runs its slow reference graph)")
    q_p.add_argument("--plot", metavar="FILE.html", default=None, help="also write the figure as a Plotly page")
    _add_store_flags(q_p)

    sub.add_parser("knobs", help="print the table of knobs (Markdown): defaults, allowed values, mid-run changes")

    from .lessons import runner  # the lessons' headless runner (papermill); its flags live there
    runner.add_arguments(sub.add_parser("notebooks", help="re-run the lesson notebooks and check their figures"))
    _add_workshop_commands(sub)
    return parser


def _store(args: argparse.Namespace):
    """What --db and --no-store ask for: a store path, None for the default, False for none."""
    return False if args.no_store else args.db


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="results store (default: $LABKIT_DB or data/labkit.db)")
    parser.add_argument("--no-store", action="store_true", help="do not record it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_workshop_commands(sub) -> None:
    """The workshop kit (labkit/workshop/): doctor before class, export after it, report for the instructor."""
    doctor_p = sub.add_parser("doctor", help="check this machine is ready for a class: one line per check, a verdict",
                              description="Check the device, precisions, data cache, Jupyter kernel and widgets, "
                              "disk, results store, and train a tiny model (~10 s). Exit 1 when not ready.")
    doctor_p.add_argument("--quick", action="store_true", help="skip the ~10 s smoke run")
    doctor_p.add_argument("--json", action="store_true", help="print the results as JSON")

    export_p = sub.add_parser("export", help="write your runs and lesson figures to one JSON file (for the class "
                              "report)")
    export_p.add_argument("-o", "--output", required=True, metavar="FILE.json", help="the file to write")
    export_p.add_argument("--student", default=None, help="your name in the class report (default: your login)")
    export_p.add_argument("--db", default=None, help="results store (default: $LABKIT_DB or data/labkit.db)")
    export_p.add_argument("--lessons", default=None, metavar="DIR",
                          help="where lessons run in Jupyter wrote their figures (default: data/lessons)")
    export_p.add_argument("--metrics", action="append", default=[], metavar="DIR",
                          help="another folder of <lesson>.metrics.json files, e.g. build/notebooks (repeatable)")

    report_p = sub.add_parser("report", help="merge the class's exports into one self-contained HTML page")
    report_p.add_argument("files", nargs="+", metavar="FILE.json", help="exports written by `labkit export`")
    report_p.add_argument("-o", "--output", required=True, metavar="class.html", help="the page to write")


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{knob.name: getattr(args, knob.name) for knob in KNOBS})


def _cmd_find_lr(args: argparse.Namespace) -> int:
    from .finders import find_lr

    finding = find_lr(_config(args), start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                      store=_store(args), progress=not args.quiet)
    print(finding)
    _write_plot(finding, args.plot)
    return 0


def _cmd_find_batch_size(args: argparse.Namespace) -> int:
    from .finders import find_batch_size

    finding = find_batch_size(_config(args), max_batch_size=args.max_batch_size, margin=args.margin,
                              time_limit_s=args.time_limit, store=_store(args),
                              progress=not args.quiet)
    print(finding)
    _write_plot(finding, args.plot)
    return 0 if finding.recommended is not None else EXIT_FAILED


def _write_plot(finding, path: str | None) -> None:
    if path:
        finding.figure().write_html(path, include_plotlyjs=True)
        print(f"wrote {path}")


def _cmd_tune(args: argparse.Namespace) -> int:
    import json

    from .tuning import Tuner, tune

    if args.no_store:
        raise ValueError("--no-store: every trial is a stored run; give --db PATH for another store instead.")
    if args.space is None:  # one more worker for an existing study, e.g. on another machine
        if args.study is None:
            raise ValueError("give --space space.json to start a study, or --study NAME (and its --storage) to join "
                             "one")
        tuner = Tuner.joining(args.study, args.storage, trials=args.trials,
                              seed=args.sampler_seed, store=args.db, progress=not args.quiet, workers=args.workers)
        result = tuner.run()
        print(result.summary())
        return 0 if len(result.completed) else EXIT_FAILED
    try:
        with open(args.space) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--space {args.space}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--space {args.space}: give a JSON object, knob -> [choices] or "
                         '{"low": .., "high": ..}')
    fixed = {k.name: getattr(args, k.name) for k in KNOBS if getattr(args, k.name) != k.default}
    result = tune(raw, fixed, objectives=[o.strip() for o in args.objectives.split(",")], sampler=args.sampler,
                  trials=args.trials, timeout=args.timeout, seed=args.sampler_seed,
                  target_accuracy=args.target_accuracy, pruner=args.pruner, workers=args.workers,
                  store=args.db, storage=args.storage, study=args.study, progress=not args.quiet)
    print(result.summary())
    return 0 if len(result.completed) else EXIT_FAILED


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .quantization import QuantizationError, quantize

    try:
        result = quantize(args.source, method=args.method, calibration_batches=args.calibration_batches,
                          batch_size=args.batch_size, large_batch=args.large_batch, repeats=args.repeats,
                          test_size=args.test_size, compile=not args.no_compile, store=args.db,
                          record=not args.no_store, progress=not args.quiet)
    except (CheckpointError, QuantizationError) as exc:  # nothing to measure: the run failed, not its flags
        print(f"labkit: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(result.summary())
    _write_plot(result, args.plot)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import run  # torch loads here, not for --help

    config = _config(args).validate()
    if args.print_launch:
        from .dist.launch import launch_commands
        from .store import Store

        print("\n\n".join(launch_commands(config, args.nnodes, args.rdzv_endpoint,
                                           None if args.no_store else Store.of(args.db).path)))
        return 0
    if args.nnodes > 1:
        raise ValueError(f"--nnodes {args.nnodes}: each machine starts its own processes; add --print-launch "
                         "and run the printed command on each machine.")
    result = run(config, store=_store(args), progress=not args.quiet)
    print(result.summary())
    return 0 if result.status == "completed" else EXIT_FAILED


# The knobs come from their declarations (labkit.config.COLUMNS); amp shows as the precision it computed in.
RUNS_COLUMNS = ["id", "status", "started", *[("precision" if k == "amp" else k) for k in COLUMNS],
                "throughput", "accuracy", "time_s", "error"]


def _precision(amp, precision, native) -> str:
    """What a run computed in, marked when emulated; runs stored before labkit recorded it show their amp."""
    import pandas as pd

    from .devices import AMP_DTYPE_NAMES

    if not isinstance(precision, str):
        return AMP_DTYPE_NAMES.get(amp, amp)
    emulated = not pd.isna(native) and not bool(native)
    return f"{precision} (emulated)" if emulated else precision


def _cmd_runs(args: argparse.Namespace) -> int:
    import pandas as pd

    from .api import runs

    # a study's runs are picked first, then the last ones of them
    table = runs(args.db, status=args.status, last=None if args.study else args.last or None, kind=args.kind)
    if table.empty:
        print("no runs recorded yet: try `labkit run`" if args.kind == "train" else f"no {args.kind} records yet")
        return 0
    if args.kind != "train":  # a finder's record: its configuration's changes and its findings
        table["settings"] = [", ".join(f"{k}={v}" for k, v in RunConfig.from_dict(
            {k: row[k] for k in field_names() if k in row}).changed().items()) for _, row in table.iterrows()]
        table["found"] = [_found(summary) for summary in table["summary"]]
        print(table[["id", "status", "started", "settings", "found"]].to_string(index=False))
        return 0
    table["precision"] = [_precision(*row) for row in
                          table.reindex(columns=["amp", "precision", "precision_native"]).itertuples(index=False)]
    if args.study is not None:
        table = table[table["study"] == args.study]
        table = table.tail(args.last) if args.last else table
        if table.empty:
            print(f"no runs of study {args.study!r}")
            return 0
    tuned = ["study", "trial"] if table["study"].notna().any() else []  # runs of a `labkit tune` study
    table["trial"] = table["trial"].astype("Int64")
    table = table[[c for c in RUNS_COLUMNS[:3] + tuned + RUNS_COLUMNS[3:] if c in table.columns]].copy()
    table["started"] = table["started"].dt.strftime("%Y-%m-%d %H:%M")
    table["throughput"] = table["throughput"].map(lambda v: "-" if pd.isna(v) else f"{v:,.0f}")
    table["accuracy"] = table["accuracy"].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    table["time_s"] = table["time_s"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
    table["error"] = table["error"].fillna("")
    table = table.astype(object).where(table.notna(), "-")  # a knob added after a run was stored
    print(table.to_string(index=False))
    return 0


def _found(summary: dict) -> str:
    if "table" in summary:  # a quantize evaluation: each variant's accuracy and size
        return f"run {summary.get('source_run')}, {summary.get('method')}: " + ", ".join(
            f"{row['variant']} {row['accuracy']:.1%} {row['size_bytes'] / 1024:,.0f} KiB" for row in summary["table"])
    if "suggestions" in summary:
        return ", ".join(f"{k} {v:.3g}" for k, v in summary["suggestions"].items()) or "no suggestion"
    return f"batch_size {summary.get('recommended')} (largest that fits {summary.get('largest_that_fits')})"


def _cmd_notebooks(args: argparse.Namespace) -> int:
    from .lessons import runner

    return runner.command(args)


def _cmd_knobs(args: argparse.Namespace) -> int:
    from .config import knob_table

    print(knob_table())
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .workshop import doctor

    return doctor.command(quick=args.quick, as_json=args.json)


def _cmd_export(args: argparse.Namespace) -> int:
    from .workshop import export

    doc = export.export(args.output, store=args.db, lessons_dir=args.lessons, student=args.student,
                        metrics_dirs=args.metrics)
    print(export.summary(doc, args.output))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .workshop import report

    out = report.build(args.files, args.output)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB, {len(args.files)} exports): open it in a browser, "
          "no network needed")
    return 0


COMMANDS = {"run": _cmd_run, "runs": _cmd_runs, "knobs": _cmd_knobs, "notebooks": _cmd_notebooks,
            "find-lr": _cmd_find_lr, "tune": _cmd_tune, "find-batch-size": _cmd_find_batch_size,
            "doctor": _cmd_doctor, "export": _cmd_export, "report": _cmd_report, "quantize": _cmd_quantize}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Installed here, not inherited: a shell's background job starts with SIGINT ignored, and SIGTERM would
        # otherwise end the process with the run still "running" in the store.
        with stop_on_signals():
            return COMMANDS[args.command](args)
    except ValueError as exc:  # a setting the user can fix: one line, no traceback
        print(f"labkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        what = getattr(exc, "signal_name", "Ctrl-C")
        print(f"labkit: stopped by {what}; a run in progress is recorded as stopped", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
