"""`klip train`: one run, or a population (`--seeds`, `--sweep`), through one engine.

Parsing and printing only; the training is `klip.algos.train.train_agents`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

POPULATION_FILE = "population.yaml"


def parse_sweep(items: list[str]) -> dict[str, list[float]]:
    """`["tau=0.01,0.03", "eps=0.1,0.2"]` -> `{"tau": [0.01, 0.03], "eps": [0.1, 0.2]}`."""
    from klip.algos.agents import PopulationError
    from klip.shapes.params import finite_number

    sweep: dict[str, list[float]] = {}
    for item in items:
        name, sep, raw_values = item.partition("=")
        name = name.strip()
        if not sep or not name or not raw_values.strip():
            raise PopulationError(f"--sweep {item!r} must look like NAME=V1,V2,...")
        if name in sweep:
            raise PopulationError(f"--sweep names {name!r} twice; give all its values in one --sweep")
        values: list[float] = []
        for raw in raw_values.split(","):
            try:
                values.append(finite_number(raw))
            except ValueError as reason:
                raise PopulationError(f"--sweep {item!r}: {raw.strip()!r} {reason}") from None
        if len(set(values)) != len(values):
            raise PopulationError(f"--sweep {item!r} repeats a value (duplicate agents)")
        sweep[name] = values
    return sweep


def is_population_request(args: argparse.Namespace) -> bool:
    """`--seeds`/`--sweep` given, or `--resume` of a directory holding a population."""
    if args.seeds is not None or args.sweep:
        return True
    return bool(args.resume and args.out is not None and (Path(args.out) / POPULATION_FILE).is_file())


def _options(args: argparse.Namespace, stored: dict[str, Any]) -> dict[str, Any]:
    from klip.algos.config import TrainConfig, load_config_file
    from klip.shapes import parse_param_assignments

    options = dict(stored)
    if args.config:
        options.update(load_config_file(args.config))
    given = {field.name for field in dataclasses.fields(TrainConfig)} & set(vars(args))
    options.update({name: getattr(args, name) for name in given})
    if args.shape_param_list:
        options["shape_params"] = {**options.get("shape_params", {}),
                                   **parse_param_assignments(args.shape_param_list)}
    return options


def population_spec(args: argparse.Namespace) -> Any:
    """The population the command line asks for (with `--resume`, the stored one, updated)."""
    from klip.algos.agents import PopulationError, PopulationSpec
    from klip.algos.config import TrainConfig
    from klip.algos.rundir import RunError
    from klip.seeds import SeedsError, parse_seeds

    stored: PopulationSpec | None = None
    spec_path = Path(args.out) / POPULATION_FILE if args.out is not None else None
    if args.resume and spec_path is not None and spec_path.is_file():
        try:
            stored = PopulationSpec.from_dict(yaml.safe_load(spec_path.read_text())["spec"])
        except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError):
            raise RunError(f"{spec_path} is corrupt or from an older klip; choose another --out") from None
    if "seed" in vars(args) and args.seeds is not None:
        raise PopulationError("give --seed or --seeds, not both")
    options = _options(args, stored.base.to_dict() if stored else {})
    sweep = parse_sweep(args.sweep) if args.sweep else (stored.sweep if stored else {})
    overlap = sorted(set(sweep) & set(options.get("shape_params", {})))
    if overlap:
        raise PopulationError(f"--sweep and --shape-param both set {', '.join(overlap)}")
    base = TrainConfig.from_dict(options)
    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else (
            stored.seeds if stored is not None else [base.seed])
    except SeedsError as error:
        raise PopulationError(str(error)) from None
    return PopulationSpec(dataclasses.replace(base, seed=seeds[0]), seeds, sweep)


def check_before_torch(args: argparse.Namespace) -> None:
    """Raise the input error `run_train(args)` would raise first, where that needs no torch
    (options, task, a built-in shape's name and parameters); `klip` calls it before importing
    the engine. Populations and `--resume` are left to `run_train`."""
    from klip.algos.config import TrainConfig
    from klip.algos.resolve import check_before_torch as check_config

    if args.resume or is_population_request(args):
        return
    check_config(TrainConfig.from_dict(_options(args, {})))


def run_train(args: argparse.Namespace) -> int:
    """`klip train`: a single run, or a population; one table of outcomes either way."""
    from klip.algos.agents import train_population
    from klip.algos.config import TrainConfig, load_config_file
    from klip.algos.resolve import resolve_config, run_name
    from klip.algos.rundir import config_with_run_paths
    from klip.algos.train import train

    if is_population_request(args):
        spec = population_spec(args)
        base = spec.base
        out = args.out or Path("runs") / f"{base.task}-{base.loss}-{base.shape}-population"
        results = train_population(spec, out, resume=args.resume, progress=not args.no_progress)
        _print_population(results, out)
        return 0
    stored = {}
    if args.resume and args.out and (args.out / "config.yaml").is_file():
        # `--resume --out DIR` alone continues DIR's run with its own options and shape copies.
        stored = config_with_run_paths(args.out, load_config_file(args.out / "config.yaml"))
    config = TrainConfig.from_dict(_options(args, stored))
    if args.out is None:
        args.out = Path("runs") / run_name(resolve_config(config)[0])
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"final return (mean over last 10% of training): {result.final_return:.1f}")
    if result.eval is not None:
        print(f"deterministic evaluation: {result.eval['return_mean']:.1f} "
              f"+- {result.eval['return_std']:.1f} over {result.eval['episodes']} episodes")
    print(f"wall time: {result.wall_seconds:.0f} s for {result.frames} steps")
    print(f"outputs in {result.out}/ (metrics.csv, summary.json, eval.json, checkpoints/, tensorboard/)")
    print(f"learning curve: {result.plot}")
    return 0


def _print_population(results: list[Any], out: Path) -> None:
    print(f"{'agent':24s} {'final return':>14s} {'eval':>10s}")
    for result in results:
        evaluation = f"{result.eval['return_mean']:.1f}" if result.eval else "-"
        print(f"{result.name:24s} {result.final_return:14.1f} {evaluation:>10s}")
    print(f"wall time: {results[0].wall_seconds:.0f} s for {results[0].frames} steps per agent, "
          f"{len(results)} agents")
    print(f"outputs in {out}/ (population_summary.csv, population_curves.png, one directory per agent)")


__all__ = ["check_before_torch", "is_population_request", "parse_sweep", "population_spec", "run_train"]
