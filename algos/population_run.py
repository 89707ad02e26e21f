"""Population runs: `klip train --seeds 0-7 --sweep tau=0.01,0.03` and its run directories.

Layout of `--out DIR`:

    DIR/population.yaml          what the population is (shared options, seeds, sweep)
    DIR/checkpoints/last.ckpt    one checkpoint of every agent (exact resume)
    DIR/<agent>/                 one ordinary run directory per agent: config.yaml (that agent's
                                 seed and shape parameters), metrics.csv, episodes.csv,
                                 summary.json, eval.json, learning_curve.png
    DIR/population_summary.csv   final return (and evaluation) of every agent
    DIR/population_summary.json  the same, plus mean +- std per sweep value
    DIR/population_curves.png    every agent's curve, mean +- std per sweep value

Every input is checked before anything is written: a bad `--seeds`/`--sweep`, duplicate
agents, a parameter the shape does not have or a value outside its range, or `--resume` of a
population with other seeds or values is one `ValueError` line (exit code 2 in the CLI).

`train_population_agents(configs, out)` is the population seam for studies: it trains a list of agent
configurations (differing only in seed and shape parameters) as one population and returns
per-agent results.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import re
import resource
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

from klip.algos.callbacks import TrainingProgress, evaluate, truncate_metrics
from klip.algos.config import ConfigError, TrainConfig, load_config_file
from klip.algos.plots import plot_learning_curve, read_metrics
from klip.algos.population import PopulationModule, check_population_configs
from klip.algos.ppo import build_shape
from klip.algos.resolve import resolve_config, with_options_added_later
from klip.algos.train import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    PARAMETERS_FILE,
    RunError,
    final_return,
    quiet_lightning,
    refuse_envpool_resume,
    save_parameters,
    write_run_config,
)
from klip.envs import get_normalization_state

POPULATION_FILE = "population.yaml"
SUMMARY_CSV = "population_summary.csv"
SUMMARY_JSON = "population_summary.json"
CURVES_FIGURE = "population_curves.png"

_SEED_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class PopulationError(ValueError):
    """Bad population input, told in one line."""


# -- parsing ------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """`"0-7"` -> 0..7, `"0,3,5"` -> [0, 3, 5]; ranges and lists mix (`"0-3,8"`)."""
    if not text or not text.strip():
        raise PopulationError("--seeds is empty; give e.g. 0-7 or 0,3,5")
    seeds: list[int] = []
    for item in text.split(","):
        match = _SEED_ITEM.match(item)
        if match is None:
            raise PopulationError(f"--seeds {text!r}: {item.strip()!r} is not a seed or a range "
                                  "like 0-7 (non-negative integers)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise PopulationError(f"--seeds {text!r}: range {item.strip()!r} is empty")
        seeds.extend(range(first, last + 1))
    duplicates = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if duplicates:
        raise PopulationError(f"--seeds {text!r} names seed(s) {duplicates} more than once "
                              "(duplicate agents)")
    return seeds


def parse_sweep(items: list[str]) -> dict[str, list[float]]:
    """`["tau=0.01,0.03", "eps=0.1,0.2"]` -> `{"tau": [0.01, 0.03], "eps": [0.1, 0.2]}`."""
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
                value = float(raw)
            except ValueError:
                raise PopulationError(f"--sweep {item!r}: {raw.strip()!r} is not a number") from None
            if not math.isfinite(value):
                raise PopulationError(f"--sweep {item!r}: {raw.strip()!r} is not finite")
            values.append(value)
        if len(set(values)) != len(values):
            raise PopulationError(f"--sweep {item!r} repeats a value (duplicate agents)")
        sweep[name] = values
    return sweep


def agent_name(seed: int, params: dict[str, float]) -> str:
    """Directory name of one agent: `s3` or `s3-tau0.01-eps0.2`."""
    return "-".join([f"s{seed}", *(f"{key}{value:g}" for key, value in params.items())])


@dataclass
class PopulationSpec:
    """What a population is: options shared by every agent, seeds, and swept shape parameters."""

    base: TrainConfig
    seeds: list[int]
    sweep: dict[str, list[float]]

    def agents(self) -> list[tuple[str, TrainConfig]]:
        """Seeds x sweep values (every combination), each a full single-run config."""
        keys = list(self.sweep)
        agents = []
        for values in itertools.product(*(self.sweep[key] for key in keys)):
            swept = dict(zip(keys, values, strict=True))
            for seed in self.seeds:
                config = dataclasses.replace(self.base, seed=seed,
                                             shape_params={**self.base.shape_params, **swept})
                agents.append((agent_name(seed, swept), config))
        return agents

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "seeds": list(self.seeds),
                "sweep": {key: list(values) for key, values in self.sweep.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PopulationSpec:
        return cls(TrainConfig.from_dict(dict(data["base"])), [int(s) for s in data["seeds"]],
                   {str(k): [float(v) for v in values] for k, values in data["sweep"].items()})


def validate_spec(spec: PopulationSpec) -> list[tuple[str, TrainConfig]]:
    """Every agent's config, or a `PopulationError`/`ConfigError` line; nothing is written."""
    spec.base.validate()
    if spec.sweep and spec.base.loss != "klip":
        raise PopulationError(f"--sweep sweeps shape parameters; --loss {spec.base.loss} has no shape")
    if spec.sweep and spec.base.shape_file:
        raise PopulationError("--sweep cannot change the parameters of a --shape-file shape")
    if spec.base.loss == "klip":
        shape_class = type(build_shape(spec.base))
        for key, values in spec.sweep.items():
            if key not in shape_class.params:
                known = ", ".join(shape_class.params) or "none"
                raise PopulationError(f"--sweep {key}: shape {spec.base.shape!r} has no parameter "
                                      f"{key!r}; its parameters are: {known}")
            declared = shape_class.params[key]
            for value in values:
                if not declared.contains(value):
                    raise PopulationError(f"--sweep {key}={value:g} is outside the allowed range "
                                          f"{declared.describe_range()} of shape {spec.base.shape!r}")
    agents = spec.agents()
    check_population_configs([config for _, config in agents])
    return agents


# -- output directory -----------------------------------------------------------------------
def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    # The budget may be extended on resume; everything else must match.
    base = with_options_added_later(spec["base"])
    return {**spec, "base": {k: v for k, v in base.items() if k != "steps"}}


def prepare_population_output(out: Path, spec: PopulationSpec, resume: bool) -> Path | None:
    """Check `out` for this population; return the checkpoint to resume from, if any.

    Only reads; the caller writes after every check has passed.
    """
    spec_path = out / POPULATION_FILE
    if out.exists() and not out.is_dir():
        raise RunError(f"output path {out} exists and is not a directory")
    if spec_path.is_file():
        try:
            previous = yaml.safe_load(spec_path.read_text()) or {}
        except yaml.YAMLError:
            raise RunError(f"{spec_path} is corrupt; choose another --out") from None
        current = spec.to_dict()
        if previous.get("seeds") != current["seeds"]:
            raise PopulationError(f"{out} holds a population with seeds {previous.get('seeds')}; "
                                  f"--seeds gives {current['seeds']}")
        if previous.get("sweep") != current["sweep"]:
            raise PopulationError(f"{out} holds a population with sweep {previous.get('sweep')}; "
                                  f"--sweep gives {current['sweep']}")
        if _comparable(previous) != _comparable(current):
            changed = sorted(key for key in set(previous["base"]) | set(current["base"])
                             if key != "steps" and previous["base"].get(key) != current["base"].get(key))
            raise RunError(f"{out} already holds a different population (differs in: "
                           f"{', '.join(changed)}); choose another --out")
        if not resume:
            raise RunError(f"{out} already holds this population; pass --resume to continue it")
    elif resume:
        raise RunError(f"nothing to resume in {out}: no {POPULATION_FILE}")
    elif out.is_dir() and any(out.iterdir()):
        raise RunError(f"output directory {out} is not empty and holds no klip population")
    checkpoint = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not (resume and checkpoint.is_file()):
        return None
    refuse_envpool_resume(spec.base, out)
    return checkpoint


def _make_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise RunError(f"cannot write to output directory {out}: {error.strerror}") from None


# -- per-agent metrics ------------------------------------------------------------------------
EPISODE_COLUMNS = ("episode/return_mean", "episode/length_mean", "episode/return_recent")


class AgentMetricsWriter(pl.Callback):
    """Appends each agent's row of every iteration to `<agent dir>/metrics.csv`."""

    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        for directory, row in zip(self.directories, module.rows, strict=True):
            path = directory / "metrics.csv"
            if path.is_file() and path.stat().st_size > 0:
                with open(path, newline="") as file:
                    columns = next(csv.reader(file))
            else:
                # Episode columns exist from the start: the first rows may have no episode.
                columns = [*row, *(key for key in EPISODE_COLUMNS if key not in row)]
                with open(path, "w", newline="") as file:
                    csv.writer(file).writerow(columns)
            with open(path, "a", newline="") as file:
                csv.writer(file).writerow([row.get(key, "") for key in columns])


# -- training -------------------------------------------------------------------------------
@dataclass
class AgentResult:
    name: str
    config: TrainConfig
    out: Path
    final_return: float
    eval: dict[str, Any] | None


@dataclass
class PopulationResult:
    out: Path
    agents: list[AgentResult]
    wall_seconds: float
    frames: int
    summary: dict[str, Any]
    figure: Path


def train_population(
    spec: PopulationSpec, out: str | Path, *, resume: bool = False, progress: bool = True,
    kill_after_iterations: int | None = None,
) -> PopulationResult | None:
    """Train every agent of `spec` in one process into `out` (see the module docstring).

    `kill_after_iterations` stops as a killed process would (tests): no final checkpoint and
    no outputs beyond what periodic checkpoints and metrics rows wrote; returns None then.
    """
    out = Path(out)
    agents = validate_spec(spec)
    checkpoint = prepare_population_output(out, spec, resume)
    return _run(agents, out, spec, checkpoint, progress=progress,
                kill_after_iterations=kill_after_iterations)


def train_population_agents(configs: list[TrainConfig], out: str | Path, *, progress: bool = False,
                 names: list[str] | None = None) -> list[AgentResult]:
    """The seam for studies: train `configs` (same options but seed and shape parameters) as
    one population in `out` (a new directory) and return one result per config, in order."""
    configs = [config.validate() for config in configs]
    check_population_configs(configs)
    for config in configs:
        if config.loss == "klip":
            build_shape(config)  # a bad shape fails before anything is written
    names = names or [f"agent{index}-{agent_name(c.seed, c.shape_params)}"
                      for index, c in enumerate(configs)]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"output directory {out} is not empty")
    result = _run(list(zip(names, configs, strict=True)), out, None, None, progress=progress,
                  kill_after_iterations=None)
    assert result is not None
    return result.agents


def _run(
    agents: list[tuple[str, TrainConfig]], out: Path, spec: PopulationSpec | None,
    checkpoint: Path | None, *, progress: bool, kill_after_iterations: int | None,
) -> PopulationResult | None:
    _make_writable(out)
    directories = [out / name for name, _ in agents]
    frames_done = 0
    if checkpoint is not None:
        frames_done = int(torch.load(checkpoint, map_location="cpu", weights_only=True)
                          ["klip_population"]["frames"])
    for directory, (_, config) in zip(directories, agents, strict=True):
        directory.mkdir(exist_ok=True)
        # Rows logged after the checkpoint are redone on resume, so they are dropped.
        truncate_metrics(directory / "metrics.csv", frames_done)
        if checkpoint is None:
            (directory / "metrics.csv").unlink(missing_ok=True)
        # As a single run records it: the resolved options and a copy of the shape.
        write_run_config(directory, *resolve_config(config))
    if spec is not None:
        (out / POPULATION_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))

    torch.set_num_threads(1)
    quiet_lightning()
    configs = [config for _, config in agents]
    base = configs[0]
    module = PopulationModule([config.to_dict() for config in configs])
    max_epochs = base.iterations
    if kill_after_iterations is not None:
        max_epochs = min(max_epochs, kill_after_iterations)
    checkpoints = ModelCheckpoint(
        dirpath=out / CHECKPOINT_DIR, filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        every_n_epochs=base.checkpoint_every, save_top_k=1, save_last=False,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
        callbacks=[checkpoints, AgentMetricsWriter(directories),
                   TrainingProgress(base.iterations * base.rollout_steps, enabled=progress)],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        deterministic=False,
    )
    started = time.perf_counter()
    trainer.fit(module, ckpt_path=str(checkpoint) if checkpoint else None, weights_only=True)
    wall = time.perf_counter() - started
    if kill_after_iterations is not None:
        for env in module.envs:
            env.close()
        return None
    trainer.save_checkpoint(out / CHECKPOINT_DIR / LAST_CHECKPOINT)

    results = []
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for agent, ((name, config), directory) in enumerate(zip(agents, directories, strict=True)):
        history = module.return_history[agent]
        final = final_return(history, module.frames)
        evaluation = None
        actor, critic = module.agent_modules(agent)
        if config.eval_episodes:
            view = types.SimpleNamespace(config=config, env=module.rollouts.agent_env(agent), actor=actor,
                                         frames=module.frames)
            evaluation = evaluate(view, config.eval_episodes, seed=config.seed + 10_000)
            (directory / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        summary = {"final_return_last10pct": final, "frames": module.frames,
                   "wall_seconds": wall, "episodes": len(history),
                   "population_size": len(agents), "peak_rss_mib": peak_rss_mib}
        save_parameters(directory / PARAMETERS_FILE, actor, critic,
                        get_normalization_state(module.rollouts.agent_env(agent)))
        (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (directory / "episodes.csv").write_text(
            "end_frame,return\n" + "".join(f"{f},{r}\n" for f, r in history))
        plot_learning_curve(history, directory / "metrics.csv", directory / "learning_curve.png",
                            title=f"{config.task}  {name}  loss={config.loss}  shape={config.shape}")
        results.append(AgentResult(name, config, directory, final, evaluation))
    for env in module.envs:
        env.close()
    summary = write_population_summary(out, results, list(spec.sweep) if spec else [])
    figure = plot_population(out / CURVES_FIGURE, results, list(spec.sweep) if spec else [])
    return PopulationResult(out, results, wall, module.frames, summary, figure)


# -- population summary -----------------------------------------------------------------------
def _group_key(result: AgentResult, sweep_keys: list[str]) -> str:
    return ", ".join(f"{key}={result.config.shape_params[key]:g}" for key in sweep_keys) or "all"


def write_population_summary(out: Path, results: list[AgentResult], sweep_keys: list[str]) -> dict[str, Any]:
    """A table of final returns (CSV) and mean +- std per sweep value (JSON)."""
    with open(out / SUMMARY_CSV, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["agent", "seed", *sweep_keys, "final_return", "eval_return_mean"])
        for result in results:
            writer.writerow([result.name, result.config.seed,
                             *(result.config.shape_params[key] for key in sweep_keys),
                             result.final_return,
                             result.eval["return_mean"] if result.eval else ""])
    groups: dict[str, list[float]] = {}
    for result in results:
        groups.setdefault(_group_key(result, sweep_keys), []).append(result.final_return)
    summary = {
        "agents": {r.name: {"seed": r.config.seed, "final_return": r.final_return,
                            "eval_return_mean": r.eval["return_mean"] if r.eval else None}
                   for r in results},
        "groups": {key: {"n": len(values), "final_return_mean": float(np.mean(values)),
                         "final_return_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
                   for key, values in groups.items()},
    }
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def plot_population(path: Path, results: list[AgentResult], sweep_keys: list[str]) -> Path:
    """Every agent's recent-return curve (thin), and mean +- std across seeds per sweep value."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    groups: dict[str, list[AgentResult]] = {}
    for result in results:
        groups.setdefault(_group_key(result, sweep_keys), []).append(result)
    for index, (key, members) in enumerate(groups.items()):
        color = f"C{index % 10}"
        curves = []
        for result in members:
            metrics = read_metrics(result.out / "metrics.csv")
            if "episode/return_recent" not in metrics:
                continue
            frames, returns = metrics["frames"], metrics["episode/return_recent"]
            axis.plot(frames, returns, color=color, alpha=0.25, linewidth=0.8)
            curves.append((frames, returns))
        if not curves:
            continue
        # Every agent logs a row at the same frames, so the curves align row by row.
        length = min(len(frames) for frames, _ in curves)
        stacked = np.stack([returns[:length] for _, returns in curves])
        mean, std = np.nanmean(stacked, 0), np.nanstd(stacked, 0)
        frames = curves[0][0][:length]
        axis.plot(frames, mean, color=color, linewidth=2.2, label=f"{key} (n={len(curves)})")
        axis.fill_between(frames, mean - std, mean + std, color=color, alpha=0.2)
    axis.set_xlabel("environment steps per agent")
    axis.set_ylabel("recent raw episode return (20 episodes)")
    axis.set_title("population: every agent, mean +- std per sweep value")
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# -- command line ------------------------------------------------------------------------------
def is_population_request(args: Any) -> bool:
    """`--seeds`/`--sweep` given, or `--resume` of a directory holding a population."""
    if getattr(args, "seeds", None) is not None or getattr(args, "sweep", None):
        return True
    out = getattr(args, "out", None)
    resuming = bool(getattr(args, "resume", False))
    return resuming and out is not None and (Path(out) / POPULATION_FILE).is_file()


def spec_from_args(args: Any) -> PopulationSpec:
    """The population the command line asks for (with `--resume`, the stored one, updated)."""
    from klip.shapes import parse_param_assignments

    options: dict[str, Any] = {}
    stored: PopulationSpec | None = None
    spec_path = Path(args.out) / POPULATION_FILE if args.out is not None else None
    if args.resume and spec_path is not None and spec_path.is_file():
        try:
            stored = PopulationSpec.from_dict(yaml.safe_load(spec_path.read_text()))
        except (yaml.YAMLError, KeyError, TypeError, AttributeError):
            raise RunError(f"{spec_path} is corrupt; choose another --out") from None
        options.update(stored.base.to_dict())
    if args.config:
        options.update(load_config_file(args.config))
    given = {field.name for field in dataclasses.fields(TrainConfig)} & set(vars(args))
    if "seed" in given and args.seeds is not None:
        raise PopulationError("give --seed or --seeds, not both")
    options.update({name: getattr(args, name) for name in given})
    if args.shape_param_list:
        options["shape_params"] = {**options.get("shape_params", {}),
                                   **parse_param_assignments(args.shape_param_list)}
    sweep = parse_sweep(args.sweep) if args.sweep else (stored.sweep if stored else {})
    overlap = sorted(set(sweep) & set(options.get("shape_params", {})))
    if overlap:
        raise PopulationError(f"--sweep and --shape-param both set {', '.join(overlap)}")
    base = TrainConfig.from_dict(options)
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
    elif stored is not None:
        seeds = stored.seeds
    else:
        seeds = [base.seed]
    base = dataclasses.replace(base, seed=seeds[0])
    return PopulationSpec(base, seeds, sweep)


def train_population_from_args(args: Any) -> int:
    """`klip train` with `--seeds`/`--sweep` (or `--resume` of a population)."""
    try:
        spec = spec_from_args(args)
    except ConfigError as error:
        raise PopulationError(str(error)) from None
    out = args.out or Path("runs") / f"{spec.base.task}-{spec.base.loss}-{spec.base.shape}-population"
    result = train_population(spec, out, resume=args.resume, progress=not args.no_progress)
    assert result is not None
    print(f"{'agent':24s} {'final return':>14s} {'eval':>10s}")
    for agent in result.agents:
        evaluation = f"{agent.eval['return_mean']:.1f}" if agent.eval else "-"
        print(f"{agent.name:24s} {agent.final_return:14.1f} {evaluation:>10s}")
    for key, group in result.summary["groups"].items():
        print(f"{key}: {group['final_return_mean']:.1f} +- {group['final_return_std']:.1f} "
              f"(n={group['n']})")
    print(f"wall time: {result.wall_seconds:.0f} s for {result.frames} steps per agent, "
          f"{len(result.agents)} agents")
    print(f"outputs in {result.out}/ ({SUMMARY_CSV}, {CURVES_FIGURE}, one directory per agent)")
    return 0


__all__ = [
    "AgentResult",
    "PopulationError",
    "PopulationResult",
    "PopulationSpec",
    "agent_name",
    "is_population_request",
    "parse_seeds",
    "parse_sweep",
    "spec_from_args",
    "train_population",
    "train_population_agents",
    "train_population_from_args",
    "validate_spec",
]
