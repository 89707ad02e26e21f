"""`klip study ...`: Optuna studies over a shape's parameters (a thin layer over `klip.studies`)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Training options a study fixes for every trial get the same flags as `klip train`;
# these are decided per trial (or by --shape/--tasks/--seeds/--steps-per-task).
_PER_TRIAL = ("task", "seed", "steps", "shape", "shape_params", "shape_file", "loss")


def _train_option_arguments(parser: argparse.ArgumentParser) -> None:
    from klip.train_options import add_train_option_arguments

    group = parser.add_argument_group("training options fixed for every trial (as klip train)")
    group.add_argument("--config", type=Path, help="YAML file of training options; flags override it")
    add_train_option_arguments(group, exclude=(*_PER_TRIAL, "shape_params"))


def _storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study-name", required=True, help="the study's name in the storage")
    parser.add_argument("--storage", help="SQLAlchemy URL (sqlite:///F.db, postgresql://USER@HOST/DB) "
                                          "or a journal file path (default: sqlite:///klip-studies.db)")


def add_study_commands(subparsers: Any) -> None:
    """Register `klip study run|reference|report|export|rerun|dashboard`."""
    from klip.seeds import SEEDS_HELP
    from klip.studies.choices import DEFAULT_GRACE_PERIOD, DEFAULT_HEARTBEAT_INTERVAL, PRUNERS, SAMPLERS

    study = subparsers.add_parser("study", help="Optuna studies of a shape's parameters across tasks")
    commands = study.add_subparsers(dest="study_command", required=True)

    run = commands.add_parser("run", help="create or continue a study and run its trials")
    _storage_arguments(run)
    run.add_argument("--shape", required=True, help="registered shape whose parameters are searched")
    run.add_argument("--tasks", required=True, help="comma-separated tasks, e.g. Hopper-v4,HalfCheetah-v4")
    run.add_argument("--steps-per-task", type=int, required=True, help="training budget per (task, seed)")
    run.add_argument("--seeds", default="0", help=f"the seeds of every task: {SEEDS_HELP} (default 0)")
    run.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    run.add_argument("--search-space", type=Path, help="YAML: NAME: {low, high, log} overriding ranges")
    run.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                     help="pin a shape parameter; repeatable")
    run.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default tpe")
    run.add_argument("--sampler-seed", type=int, help="seed of the sampler (worker i uses seed+i)")
    run.add_argument("--grid-points", type=int, default=5, help="grid sampler: values per parameter")
    run.add_argument("--pruner", choices=PRUNERS, default="auto",
                     help="auto: wilcoxon with >= 4 (task, seed) instances, else median")
    run.add_argument("--pruner-startup-trials", type=int, default=5,
                     help="median: trials finished before pruning starts (default 5)")
    run.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    run.add_argument("--batch", type=int, default=0, metavar="K",
                     help="train K trials at a time, each task's (trial, seed) agents as one "
                          "population (faster; prunes between tasks only; with cmaes, a generation "
                          "is a whole number of batches). Default 0: single runs")
    run.add_argument("--study-dir", type=Path, help="trial artefacts (default runs/studies/NAME)")
    run.add_argument("--force", action="store_true", help="use a study made with other settings")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--heartbeat-interval", type=int, default=DEFAULT_HEARTBEAT_INTERVAL,
                     help=f"seconds between worker heartbeats (default {DEFAULT_HEARTBEAT_INTERVAL})")
    run.add_argument("--grace-period", type=int, default=DEFAULT_GRACE_PERIOD,
                     help=f"seconds without heartbeat before a trial is failed and retried "
                          f"(default {DEFAULT_GRACE_PERIOD})")
    _train_option_arguments(run)

    reference = commands.add_parser("reference", help="compute and cache the objective's reference scores")
    reference.add_argument("--tasks", required=True)
    reference.add_argument("--steps", type=int, required=True)
    reference.add_argument("--seeds", default="0", help=f"{SEEDS_HELP} (default 0)")
    _train_option_arguments(reference)

    report = commands.add_parser("report", help="tables, importances, plots and the best shape")
    _storage_arguments(report)
    report.add_argument("--out", type=Path, help="output directory (default runs/studies/NAME/report)")

    export = commands.add_parser("export", help="a trial's shape JSON and config YAML for klip train")
    _storage_arguments(export)
    export.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    export.add_argument("--out", type=Path, help="output directory (default runs/studies/NAME/export)")

    rerun = commands.add_parser("rerun", help="re-run one (task, seed) of a trial with klip train")
    _storage_arguments(rerun)
    rerun.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    rerun.add_argument("--task", help="task (default: the study's first)")
    rerun.add_argument("--seed", type=int, default=0)
    rerun.add_argument("--out", type=Path, help="run directory (default runs/studies/NAME/rerun-...)")
    rerun.add_argument("--no-progress", action="store_true", help="no progress bar")

    dashboard = commands.add_parser("dashboard", help="optuna-dashboard on 127.0.0.1")
    dashboard.add_argument("--storage", help="as for run (default sqlite:///klip-studies.db)")
    dashboard.add_argument("--port", type=int, default=8080)


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    from klip.studies.training import TrainConfig, load_config_file

    options: dict[str, Any] = {"eval_episodes": 0}  # the objective does not use the final evaluation
    if args.config:
        options.update(load_config_file(args.config))
    per_trial = sorted(set(options) & set(_PER_TRIAL))
    if per_trial:
        raise ValueError(f"--config {args.config}: {', '.join(per_trial)} are set per trial by the study")
    names = {field.name for field in dataclasses.fields(TrainConfig)} - set(_PER_TRIAL)
    options.update({name: getattr(args, name) for name in names if name in vars(args)})
    TrainConfig.from_dict(options)  # unknown keys from the file fail here, by name
    return options


def _tasks(text: str, options: dict[str, Any], steps: int) -> list[str]:
    from klip.studies.training import TrainConfig

    tasks = [task.strip() for task in text.split(",") if task.strip()]
    if not tasks:
        raise ValueError("--tasks needs at least one task")
    for task in tasks:  # unknown tasks and inconsistent options fail before anything is written
        TrainConfig.from_dict({**options, "task": task, "steps": steps}).validate()
    return tasks


def _settings(args: argparse.Namespace) -> Any:
    """The study's settings, checked before anything is written; what needs no torch first."""
    from klip.seeds import parse_seeds
    from klip.studies.space import load_space_file, parse_fix
    from klip.studies.storage import parse_storage

    seeds = parse_seeds(args.seeds)
    for name in ("steps_per_task", "trials", "workers", "grid_points"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    storage = parse_storage(args.storage, args.heartbeat_interval, args.grace_period)
    fixes = parse_fix(args.fix)
    overrides = load_space_file(args.search_space) if args.search_space else None
    options = _train_options(args)

    from klip.shapes.catalog import shape_declaration

    if options.get("shape_plugin"):
        from klip.shapes import load_shapes_from_file  # torch

        load_shapes_from_file(options["shape_plugin"])
    shape_declaration(args.shape)  # a built-in shape's name is checked without torch
    tasks = _tasks(args.tasks, options, args.steps_per_task)

    from klip.studies.settings import StudySettings
    from klip.studies.space import resolve_space  # torch, from here on
    space, fixed = resolve_space(args.shape, overrides, fixes,
                                 overrides_source=f"--search-space {args.search_space}")
    settings = StudySettings(
        study_name=args.study_name, shape=args.shape, tasks=tasks, steps_per_task=args.steps_per_task,
        seeds=seeds, trials=args.trials, train_options=options, space=space, fixed=fixed,
        sampler=args.sampler, pruner=args.pruner, pruner_startup_trials=args.pruner_startup_trials,
        grid_points=args.grid_points, sampler_seed=args.sampler_seed, storage=storage,
        study_dir=args.study_dir, workers=args.workers, batch=args.batch, force=args.force,
        progress=not args.no_progress,
        command=shlex.join(["klip", *getattr(args, "argv", sys.argv[1:])]),
    )
    from klip.studies.sampling import build_pruner, build_sampler, check_batch

    build_sampler(settings)  # a sampler that cannot handle the space fails before any writing
    build_pruner(settings)
    check_batch(settings)
    return settings


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)  # input errors before the training engine is imported

    from klip.preload import preload
    from klip.studies.run import StudyInterrupted, run_study

    preload()  # hours of training: one version of the code from start to end
    try:
        outcome = run_study(settings, log=lambda text: print(text, file=sys.stderr))
    except (StudyInterrupted, KeyboardInterrupt) as interrupt:
        trials = getattr(interrupt, "trials", [])
        kept = (f"trial(s) {', '.join(map(str, trials))} are queued to continue with their parameters; "
                if trials else "")
        print(f"klip: interrupted; {kept}continue with {settings.command}", file=sys.stderr)
        return 130
    best = "none" if outcome.best_value is None else f"{outcome.best_value:.4f}"
    print(f"study {settings.study_name}: {outcome.finished} finished trials, best value {best}")
    if outcome.best_params:
        print("best parameters: " + ", ".join(f"{k}={v:.6g}" for k, v in outcome.best_params.items()))
    print(f"pruned: {outcome.pruned} trials (learning curve), {outcome.partial} partial (wilcoxon); "
          f"(task, seed) instances saved: {outcome.instances_saved:.1f}")
    print(f"report: klip study report --study-name {settings.study_name} --storage "
          f"{shlex.quote(settings.storage.url)}")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from klip.seeds import format_seeds, parse_seeds
    from klip.studies.references import ensure_references, reference_file

    options = _train_options(args)
    _positive("--steps", args.steps)
    seeds = parse_seeds(args.seeds)
    tasks = _tasks(args.tasks, options, args.steps)
    references = ensure_references(tasks, args.steps, seeds, options,
                                   command=shlex.join(["klip", *getattr(args, "argv", sys.argv[1:])]),
                                   log=lambda text: print(text, file=sys.stderr))
    for task, ref in references.items():
        print(f"{task}: random {ref.random_score:.1f}, step {ref.step_score:.1f} "
              f"({args.steps} steps, seeds {format_seeds(seeds)})")
    print(f"cached in {reference_file()}")
    return 0


def _load(args: argparse.Namespace) -> Any:
    from klip.studies.report import load_existing_study
    from klip.studies.storage import parse_storage

    return load_existing_study(args.study_name, parse_storage(args.storage))


def _report(args: argparse.Namespace) -> int:
    from klip.studies.report import write_report

    study = _load(args)
    out = args.out or Path("runs") / "studies" / args.study_name / "report"
    for line in write_report(study, out):
        print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    from klip.studies.report import export_trial

    study = _load(args)
    out = args.out or Path("runs") / "studies" / args.study_name / "export"
    shape_path, config_path, tasks = export_trial(study, out, args.trial)
    print(f"shape: {shape_path}")
    print(f"config: {config_path}")
    for task in tasks:
        print(f"  klip train --config {config_path} --shape-file {shape_path} --task {task}")
    return 0


def _rerun(args: argparse.Namespace) -> int:
    """`klip train --from-trial STUDY:NUMBER`, as a study command: the trial's exported config."""
    from klip.studies.report import export_trial
    from klip.studies.training import TrainConfig, load_config_file, train

    study = _load(args)
    base = Path("runs") / "studies" / args.study_name
    shape_path, config_path, tasks = export_trial(study, base / "export", args.trial)
    options = load_config_file(config_path)
    task = args.task or options["task"]
    if tasks and task not in tasks:
        raise ValueError(f"task {task!r} is not one of the study's tasks: {', '.join(tasks)}")
    config = TrainConfig.from_dict({**options, "task": task, "seed": args.seed}).validate()
    out = args.out or base / f"rerun-{config_path.stem.removesuffix('-config')}-{task}-s{args.seed}"
    result = train(config, out, progress=not args.no_progress)
    print(f"final return (mean over last 10% of training): {result.final_return:.1f}")
    print(f"outputs in {result.out}/ (shape {shape_path}, config {config_path})")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from klip.studies.storage import parse_storage

    storage = parse_storage(args.storage)
    missing = storage.missing_file()
    if missing is not None:  # optuna-dashboard would create an empty database and fail on it
        raise FileNotFoundError(f"no study database at {missing}; run klip study run first, or name "
                                "the database with --storage")
    executable = shutil.which("optuna-dashboard")
    if executable is None:
        raise RuntimeError("optuna-dashboard is not installed: pip install optuna-dashboard, then "
                           f"optuna-dashboard {storage.url} --host 127.0.0.1 --port {args.port}")
    return subprocess.call([executable, storage.url, "--host", "127.0.0.1", "--port", str(args.port)])


def run_study_command(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run a `klip study` subcommand; `argv` (the command's words after `klip`) is recorded."""
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handlers = {"run": _run, "reference": _reference, "report": _report, "export": _export, "rerun": _rerun,
                "dashboard": _dashboard}
    return handlers[args.study_command](args)


__all__ = ["add_study_commands", "run_study_command"]
