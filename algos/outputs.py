"""What a finished (or interrupted, or failed) run leaves in each agent's run directory, and the
population's own summary on top.

Every agent's directory gets the same files and `summary.json` keys whatever the number of
agents: `episodes.csv`, `parameters.pt`, `learning_curve.png`, `eval.json` (finished runs
with `--eval-episodes`), `summary.json`. A population's root adds `population_summary.csv/json`
(final return and evaluation of every agent, mean +- std per swept value) and
`population_curves.png`.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import platform
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from klip.algos.callbacks import evaluate
from klip.algos.config import TrainConfig
from klip.algos.plots import plot_learning_curve, read_metrics
from klip.algos.rundir import AgentPlan, write_atomically
from klip.envs import get_normalization_state

SUMMARY_FILE = "summary.json"
EVAL_FILE = "eval.json"
EPISODES_FILE = "episodes.csv"
# The final actor and critic (keyed as in a checkpoint) with the observation statistics they
# expect: small enough to keep with a run's committed data, where checkpoints are not kept.
PARAMETERS_FILE = "parameters.pt"
# summary.json's status of a run stopped by a non-finite loss, gradient or parameter: a result
# (its last good parameters and the return it had reached), not an error.
DIVERGED = "diverged"
CURVE_FIGURE = "learning_curve.png"
POPULATION_SUMMARY_CSV = "population_summary.csv"
POPULATION_SUMMARY_JSON = "population_summary.json"
POPULATION_FIGURE = "population_curves.png"


@dataclass
class RunResult:
    """One agent's outcome: its directory, final return, evaluation and summary."""

    out: Path
    final_return: float
    wall_seconds: float
    frames: int
    eval: dict[str, Any] | None
    plot: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig | None = None
    name: str = ""

    @property
    def status(self) -> str:
        return str(self.summary.get("status", ""))


def final_return(history: list[tuple[int, float]], frames: int) -> float:
    """Mean raw return of the episodes that ended in the last 10% of training."""
    if not history:
        return float("nan")
    cutoff = 0.9 * frames
    tail = [value for frame, value in history if frame > cutoff] or [history[-1][1]]
    return float(np.mean(tail))


def process_seconds(summary: Mapping[str, Any]) -> float | None:
    """A run's share of its process's wall-clock time (`summary.json`, or a record with its
    `wall_seconds` and `population_size`): a population's agents share one process."""
    wall = summary.get("wall_seconds")
    return None if wall is None else float(wall) / int(summary.get("population_size") or 1)


def process_seconds_of_files(summaries: Iterable[Path]) -> tuple[float, int]:
    """The summed `process_seconds` of these `summary.json` files and how many had a timing;
    an unreadable file counts as untimed (a run killed while writing it)."""
    seconds, runs = 0.0, 0
    for path in summaries:
        try:
            share = process_seconds(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            share = None
        if share is not None:
            seconds += share
            runs += 1
    return seconds, runs


def save_parameters(path: Path, actor: torch.nn.Module, critic: torch.nn.Module,
                    normalization: dict[str, Any]) -> None:
    """Write PARAMETERS_FILE; `klip.load_run(...).load_module()` reads it where no checkpoint is."""
    import io

    # clone(): an agent's tensors are views into its population's stacked ones, and torch.save
    # writes a view's whole storage.
    state = {**{f"actor.{key}": value.clone() for key, value in actor.state_dict().items()},
             **{f"critic.{key}": value.clone() for key, value in critic.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "normalization": normalization}, buffer)
    write_atomically(path, buffer.getvalue())


def save_module_parameters(module: Any, path: Path, agent: int = 0) -> None:
    """PARAMETERS_FILE of agent `agent` of a module: its actor, critic and observation statistics."""
    member = module.agents[agent]
    statistics = get_normalization_state(module.rollouts.agent_env(agent))
    save_parameters(path, member.actor, member.critic, statistics)


def finish_agent(module: Any, index: int, plan: AgentPlan, *, status: str, error: str | None,
                 wall_seconds: float, machines: list[dict[str, Any]], eval_episodes: int) -> RunResult:
    """Write agent `index`'s outcome into its run directory; `status` is the run's, unless the
    agent itself failed."""
    agent = module.agents[index]
    config = agent.config
    if agent.failure is not None:
        status, error = DIVERGED, str(agent.failure)
    save_module_parameters(module, plan.out / PARAMETERS_FILE, index)
    history = agent.return_history
    (plan.out / EPISODES_FILE).write_text(
        "end_frame,return\n" + "".join(f"{frame},{value}\n" for frame, value in history))
    title = "  ".join(part for part in (config.task, plan.name, f"loss={config.loss}",
                                         f"shape={config.shape}") if part)
    plot = plot_learning_curve(history, plan.out / "metrics.csv", plan.out / CURVE_FIGURE, title=title)
    evaluation = None
    eval_path = plan.out / EVAL_FILE
    if status == "finished" and eval_episodes:
        evaluation = evaluate(module.evaluation_target(index), eval_episodes, seed=config.seed + 10_000)
        eval_path.write_text(json.dumps(_finite_or_none(evaluation), indent=2, allow_nan=False) + "\n")
    elif status == "finished" and eval_path.is_file():
        evaluation = json.loads(eval_path.read_text())
    summary = write_summary(plan.out, module, index, status=status, error=error, evaluation=evaluation,
                            wall_seconds=wall_seconds, machines=machines)
    return RunResult(plan.out, summary["final_return_last10pct"] or math.nan, wall_seconds, module.frames,
                     evaluation, plot, summary, config, plan.name)


def write_summary(out: Path, module: Any, index: int, *, status: str, error: str | None,
                  evaluation: dict[str, Any] | None, wall_seconds: float,
                  machines: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json: what ran, how it ended and what it scored; strict JSON (no NaN).
    `machines`: each machine the run trained on, from the frame it took over (the last: this one)."""
    agent = module.agents[index]
    config = agent.config
    # A diverged agent stopped in its failing iteration, whatever the others of its population did.
    frames = module.frames if agent.failure is None else agent.failure.iteration * config.rollout_steps
    summary = {
        "status": status,
        "error": error,
        "task": config.task,
        "loss": config.loss,
        "shape": config.shape,
        "shape_params": config.shape_params,
        "seed": config.seed,
        "frames": frames,
        "iterations": frames // config.rollout_steps,
        "episodes": len(agent.return_history),
        "final_return_last10pct": final_return(agent.return_history, frames),
        "evaluation": evaluation,
        "population_size": module.num_agents,
        "wall_seconds": wall_seconds,
        # ru_maxrss is in KiB on Linux; the process's peak, shared by a population's agents.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # Runs are bitwise reproducible on one kind of machine only (MKL picks its kernels by
        # instruction set), so a run says which machine and libraries made it; one continued on
        # another machine lists them all.
        "machine": machines[-1]["machine"],
    }
    if len(machines) > 1:
        summary["machines"] = machines
    summary = _finite_or_none(summary)
    write_atomically(out / SUMMARY_FILE, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    return summary


@functools.cache
def machine() -> dict[str, Any]:
    """The CPU (its model, the instruction set PyTorch's kernels use) and the versions of the
    libraries whose arithmetic a run's numbers depend on."""
    from importlib import metadata

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("torch", "numpy", "mujoco", "gymnasium", "torchrl"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(), "packages": versions}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


# -- a population's own summary ---------------------------------------------------------------
def _group_key(result: RunResult, sweep_keys: list[str]) -> str:
    assert result.config is not None
    return ", ".join(f"{key}={result.config.shape_params[key]:g}" for key in sweep_keys) or "all"


def write_population_summary(root: Path, results: list[RunResult], sweep_keys: list[str]) -> dict[str, Any]:
    """A table of final returns (CSV) and mean +- std per sweep value (JSON); diverged agents are
    listed with their status and left out of the means."""
    with open(root / POPULATION_SUMMARY_CSV, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["agent", "seed", *sweep_keys, "status", "final_return", "eval_return_mean"])
        for result in results:
            assert result.config is not None
            writer.writerow([result.name, result.config.seed,
                             *(result.config.shape_params[key] for key in sweep_keys), result.status,
                             result.final_return, result.eval["return_mean"] if result.eval else ""])
    groups: dict[str, list[float]] = {}
    for result in results:
        if result.status != DIVERGED:
            groups.setdefault(_group_key(result, sweep_keys), []).append(result.final_return)
    summary = {
        "agents": {r.name: {"seed": r.config.seed if r.config else None, "status": r.status,
                            "final_return": r.final_return,
                            "eval_return_mean": r.eval["return_mean"] if r.eval else None}
                   for r in results},
        "groups": {key: {"n": len(values), "final_return_mean": float(np.mean(values)),
                         "final_return_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
                   for key, values in groups.items()},
    }
    summary = _finite_or_none(summary)
    (root / POPULATION_SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def plot_population(path: Path, results: list[RunResult], sweep_keys: list[str]) -> Path:
    """Every agent's recent-return curve (thin), and mean +- std across seeds per sweep value."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(_group_key(result, sweep_keys), []).append(result)
    for index, (key, members) in enumerate(groups.items()):
        color = f"C{index % 10}"
        curves = []
        for result in members:
            if not (result.out / "metrics.csv").is_file():
                continue  # an agent that failed in its first iteration
            metrics = read_metrics(result.out / "metrics.csv")
            if "episode/return_recent" not in metrics:
                continue
            frames, returns = metrics["frames"], metrics["episode/return_recent"]
            axis.plot(frames, returns, color=color, alpha=0.25, linewidth=0.8)
            curves.append((frames, returns))
        if not curves:
            continue
        # Agents that did not fail log a row at the same frames, so the curves align row by row.
        length = min(len(frames) for frames, _ in curves)
        stacked = np.stack([returns[:length] for _, returns in curves])
        logged = np.isfinite(stacked).any(0)  # rows before any agent's first episode ended are NaN
        stacked, frames = stacked[:, logged], np.asarray(curves[0][0][:length])[logged]
        mean, std = np.nanmean(stacked, 0), np.nanstd(stacked, 0)
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


__all__ = ["DIVERGED", "PARAMETERS_FILE", "RunResult", "final_return", "finish_agent", "plot_population",
           "save_module_parameters", "save_parameters", "write_population_summary"]
