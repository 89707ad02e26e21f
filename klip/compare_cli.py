"""`klip compare` and `klip compare report`: the command-line face of `klip.studies.compare`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from klip.seeds import SEEDS_HELP

ENTRY_HELP = (
    "comma-separated entries: a loss (clip, kl_fixed, kl_adaptive; options as "
    "kl_adaptive:kl_target=0.01), a shape with parameters (step, sigmoid:tau=0.03), a shape "
    ".json file, or study:NAME@STORAGE_URL (the study's best trial; study:NAME#131@URL for "
    "trial 131, study:NAME#top5@URL for the five best, one entry each)"
)


def add_compare_commands(subparsers: Any) -> None:
    """Add `compare` (and its `report`) to the `klip` command's subparsers."""
    compare = subparsers.add_parser(
        "compare", help="compare entries over tasks and seeds (a resumable grid of runs)",
        description="Train every entry on every task with every seed (seed-major order), "
                    "resuming what is finished or half done, then write DIR/report.md. "
                    "Run the same command again to continue; --out DIR alone continues DIR's grid.",
    )
    compare.add_argument("--losses", "--entries", dest="entries", metavar="ENTRIES", help=ENTRY_HELP)
    compare.add_argument("--tasks", help="comma-separated tasks, e.g. Hopper-v4,Walker2d-v4")
    compare.add_argument("--seeds", default="0-4",
                         help=f"{SEEDS_HELP} (default: 0-4); e.g. fresh seeds 5-9 to confirm a "
                              "study's best")
    compare.add_argument("--steps", type=int, default=1_000_000,
                         help="environment steps per run (default: 1000000)")
    compare.add_argument("--out", type=Path, help="grid directory")
    compare.add_argument("--config", type=Path, help="YAML file of training options shared by all runs")
    compare.add_argument("--set", dest="settings", action="append", default=[], metavar="OPTION=VALUE",
                         help="a training option shared by all runs (e.g. rollout_steps=256); repeatable")
    compare.add_argument("--workers", type=int, default=1,
                         help="local worker processes, one torch thread each (default: 1)")
    compare.add_argument("--storage", help="Optuna RDB storage URL handing out the cells to every "
                         "machine that runs this command (default: a SQLite file in the grid directory)")
    compare.add_argument("--seeds-together", action="store_true",
                         help="train each (entry, task)'s seeds as one population in one process "
                              "(faster; every agent is bitwise its own single run)")
    compare.add_argument("--reuse", action="append", type=Path, default=[], metavar="DIR",
                         help="another grid whose finished cells with the same settings (entry, task, "
                              "seed, steps, options) are linked here instead of trained; repeatable")
    compare.add_argument("--extend", action="store_true",
                         help="grow --out's grid by the entries, tasks and seeds given (steps and "
                              "options unchanged); its finished cells are kept")
    compare.add_argument("--plan", action="store_true", help="print the cells in order and exit")
    compare.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    compare.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                         help="seconds between progress lines (default: 30)")
    compare.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = compare.add_subparsers(dest="compare_command", required=False)
    report = commands.add_parser("report", help="write DIR/report.md and DIR/figures/*.png")
    report.add_argument("dir", type=Path, help="grid directory")
    report.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    axis = commands.add_parser(
        "axis", help="grids that differ in one option (e.g. epochs) side by side: OUT/report.md",
        description="Read grids that differ in exactly one training option (say one left at the "
                    "default epochs and others made with --set epochs=20, 40) as one axis: returns per "
                    "task, and per setting each entry's IQM, P(entry > step) and P(entry > itself at "
                    "the first setting), with stratified bootstrap 95%% CIs.")
    axis.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="grid directories (two or more)")
    axis.add_argument("--out", type=Path, required=True, help="where report.md and axis.png go")
    axis.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    axis.add_argument("--debug", action="store_true", help="show tracebacks")


def _split(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _base_options(args: argparse.Namespace) -> dict[str, Any]:
    from klip.studies.entries import CompareError, parse_option_value
    from klip.studies.training import load_config_file

    options = load_config_file(args.config) if args.config else {}
    given: set[str] = set()
    for item in args.settings:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CompareError(f"--set {item!r} must look like OPTION=VALUE")
        if key in given:
            raise CompareError(f"--set {key} is given twice")
        given.add(key)
        # One number syntax: what `klip train --OPTION VALUE` accepts (1e-3, 0.001, none).
        options[key] = parse_option_value(key, raw, "--set")
    return options


def _spec(args: argparse.Namespace) -> Any:
    from klip.studies.compare import CompareError, GridSpec, load_grid, parse_entries, split_entries
    from klip.studies.training import TrainConfig

    if args.out is None:
        raise CompareError("--out DIR is required")
    if args.entries is None and args.tasks is None:
        # `klip compare --out DIR` continues the grid DIR holds.
        return load_grid(args.out)
    if not args.entries or not args.tasks:
        raise CompareError("--losses and --tasks are both required (or neither, to continue --out's grid)")
    seeds = _seeds(args.seeds)
    base = _base_options(args)
    try:
        TrainConfig.from_dict(base)
    except (TypeError, ValueError) as error:
        raise CompareError(f"base options: {error}") from None
    if base.get("shape_plugin"):
        from klip.shapes import load_shapes_from_file  # torch

        load_shapes_from_file(base["shape_plugin"])
    entries = parse_entries(split_entries(args.entries), args.out)
    return GridSpec(entries, _split(args.tasks), seeds, args.steps, base,
                    seeds_together=args.seeds_together, root=args.out).validate()


def _seeds(text: str) -> list[int]:
    """`--seeds`: seeds named as a range or list (`klip.seeds`), as every klip command takes them."""
    from klip.seeds import SeedsError, parse_seeds
    from klip.studies.compare import CompareError

    try:
        return parse_seeds(text)
    except SeedsError as error:
        raise CompareError(str(error)) from None


def run_compare(args: argparse.Namespace) -> int:
    """Handler of `klip compare ...`; returns the exit code."""
    from klip.studies.compare import job_key, run_grid
    from klip.studies.files import WriteError, describe_os_error

    if args.compare_command == "report":
        from klip.studies.compare_report import write_report

        try:
            print(f"report written to {write_report(args.dir, n_resamples=args.resamples)}")
        except OSError as error:  # a full disk, a read-only directory: one line naming the path
            raise WriteError(describe_os_error(error, args.dir)) from None
        return 0
    if args.compare_command == "axis":
        from klip.studies.compare_axis import write_axis_report

        try:
            print(f"report written to {write_axis_report(args.dirs, args.out, n_resamples=args.resamples)}")
        except OSError as error:
            raise WriteError(describe_os_error(error, args.out)) from None
        return 0
    spec = _spec(args)  # input errors before the training engine is imported
    if args.plan:
        jobs = spec.jobs()
        print(f"{len(spec.cells())} cells in {len(jobs)} jobs, in this order:")
        for job in jobs:
            print(f"  {job_key(job)}")
        return 0
    from klip.preload import preload

    preload()  # hours of training: one version of the code from start to end
    try:
        outcome = run_grid(spec, args.out, storage=args.storage, workers=args.workers,
                           write_report=not args.no_report, progress_interval=args.progress_every,
                           extend=args.extend, reuse=args.reuse)
    except KeyboardInterrupt:
        print("klip: interrupted; run the same command again to continue the grid", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a read-only directory: one line naming the path
        raise WriteError(describe_os_error(error, args.out)) from None
    except Exception as error:  # the storage's own errors (a full disk under SQLite): one line
        import optuna
        import sqlalchemy.exc

        if not isinstance(error, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
            raise
        from klip.studies.storage import hide_passwords, storage_write_error

        where = hide_passwords(args.storage) if args.storage else f"{args.out}/cells.sqlite3"
        raise storage_write_error(error, where) from None
    print(f"{outcome.done}/{outcome.total} cells done in {args.out}")
    if outcome.report is not None:
        print(f"report: {outcome.report}")
    if outcome.failed:
        print(f"not finished ({len(outcome.failed)} jobs; run the same command again): "
              + ", ".join(outcome.failed[:10]) + (" ..." if len(outcome.failed) > 10 else ""))
        return 1
    return 0


__all__ = ["add_compare_commands", "run_compare"]
