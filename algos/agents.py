"""Many agents: populations made from seeds x swept shape parameters, and runs one after another.

- `PopulationSpec`: what `klip train --seeds 0-7 --sweep tau=0.01,0.03` asks for: options
  shared by every agent, seeds, and swept shape parameters; `train_population` trains it
  with `klip.algos.train.train_agents` (one process, every agent bitwise its single run).
- `train_one_by_one`: a study trial's (task, seed) runs in turn, so a pruner can stop a trial
  between runs (or inside one, through its callbacks); several trials at once go through
  `train_agents` as one population (`klip study run --batch K`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from klip.algos.config import ConfigError, TrainConfig
from klip.algos.outputs import RunResult
from klip.algos.ppo import build_shape, check_population_configs
from klip.algos.train import train, train_agents


class PopulationError(ConfigError):
    """Bad population input, told in one line."""


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
    configs = [config.validate() for _, config in agents]
    check_population_configs(configs)
    return agents


def train_population(spec: PopulationSpec, out: str | Path, *, resume: bool = False, progress: bool = True,
                     stop_after_iterations: int | None = None) -> list[RunResult]:
    """Train every agent of `spec` in one process into `out`, one run directory per agent."""
    agents = validate_spec(spec)
    return train_agents([config for _, config in agents], out, names=[name for name, _ in agents],
                        record={"spec": spec.to_dict()}, sweep_keys=list(spec.sweep), resume=resume,
                        progress=progress, stop_after_iterations=stop_after_iterations)


# -- one after another -------------------------------------------------------------------
# Per-agent callbacks are built lazily: a pruning callback needs to know which
# agent (task, seed) it watches, and Lightning callbacks hold per-run state.
CallbackFactory = Callable[[int, TrainConfig], Sequence[pl.Callback]]


@dataclass
class AgentResult:
    config: TrainConfig
    out: Path
    run: RunResult
    # True when a callback asked Lightning to stop early (e.g. a pruner).
    stopped_early: bool


# Called after each agent finishes; returning False skips the remaining agents.
AfterAgent = Callable[[int, AgentResult], bool]


def train_one_by_one(
    configs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path],
    *,
    callbacks: CallbackFactory | None = None,
    after_each: AfterAgent | None = None,
    progress: bool = False,
) -> list[AgentResult]:
    """Train `configs[i]` into `out_dirs[i]`, in order; stop early when `after_each` says so."""
    if len(configs) != len(out_dirs):
        raise ValueError(f"{len(configs)} configs but {len(out_dirs)} output directories")
    results: list[AgentResult] = []
    for index, (config, out) in enumerate(zip(configs, out_dirs, strict=True)):
        extra = list(callbacks(index, config)) if callbacks else []
        run = train(config, out, progress=progress, callbacks=extra)
        stopped = run.frames < config.iterations * config.rollout_steps
        result = AgentResult(config=config, out=Path(out), run=run, stopped_early=stopped)
        results.append(result)
        if after_each is not None and not after_each(index, result):
            break
    return results


__all__ = ["AfterAgent", "AgentResult", "CallbackFactory", "PopulationError", "PopulationSpec",
           "agent_name", "train_one_by_one", "train_population", "validate_spec"]
