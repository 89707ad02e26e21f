"""The one door from `klip.studies` into the training engine (`klip.algos`).

Studies and comparisons train runs, read their outputs and check their options; every name they
need from the engine is listed here and nowhere else in `studies/`, so that a new engine changes
this file only. Names are imported on first use (`torch` and Lightning come with most of them),
so a command that refuses its input does so before paying for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the engine module that holds it
_ENGINE: dict[str, str] = {
    # options
    "TrainConfig": "klip.algos.config",
    "ConfigError": "klip.algos.config",
    "LOSSES": "klip.algos.config",
    "load_config_file": "klip.algos.config",
    "resolve_config": "klip.algos.resolve",
    "with_options_added_later": "klip.algos.resolve",
    "recorded_config_as_today": "klip.algos.rundir",
    "POPULATION_FILE": "klip.algos.rundir",
    "can_resume": "klip.algos.rundir",
    # training: one run, or agents differing in seed and shape parameters as one population
    "train": "klip.algos.train",
    "train_agents": "klip.algos.train",
    "RunInterrupted": "klip.algos.train",
    "RunError": "klip.algos.train",
    "TrainingDiverged": "klip.algos.divergence",
    "check_population_configs": "klip.algos.ppo",
    "PopulationSpec": "klip.algos.agents",
    "train_population": "klip.algos.agents",
    # a run's outputs
    "PARAMETERS_FILE": "klip.algos.outputs",
    "DIVERGED": "klip.algos.outputs",
    "final_return": "klip.algos.outputs",
    "process_seconds": "klip.algos.outputs",
    "process_seconds_of_files": "klip.algos.outputs",
    "save_module_parameters": "klip.algos.outputs",
    "load_run": "klip.algos.run",
    "read_columns": "klip.algos.run",
    "read_episode_returns": "klip.algos.run",
    "read_metrics": "klip.algos.plots",
}

if TYPE_CHECKING:
    from klip.algos.agents import PopulationSpec, train_population
    from klip.algos.config import LOSSES, ConfigError, TrainConfig, load_config_file
    from klip.algos.divergence import TrainingDiverged
    from klip.algos.outputs import (
        DIVERGED,
        PARAMETERS_FILE,
        final_return,
        process_seconds,
        process_seconds_of_files,
        save_module_parameters,
    )
    from klip.algos.plots import read_metrics
    from klip.algos.ppo import check_population_configs
    from klip.algos.resolve import resolve_config, with_options_added_later
    from klip.algos.run import load_run, read_columns, read_episode_returns
    from klip.algos.rundir import POPULATION_FILE, can_resume, recorded_config_as_today
    from klip.algos.train import RunError, RunInterrupted, train, train_agents


def __getattr__(name: str) -> Any:
    module = _ENGINE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


__all__ = [
    "DIVERGED",
    "LOSSES",
    "PARAMETERS_FILE",
    "POPULATION_FILE",
    "ConfigError",
    "PopulationSpec",
    "RunError",
    "RunInterrupted",
    "TrainConfig",
    "TrainingDiverged",
    "can_resume",
    "check_population_configs",
    "final_return",
    "load_config_file",
    "load_run",
    "process_seconds",
    "process_seconds_of_files",
    "read_columns",
    "read_episode_returns",
    "read_metrics",
    "recorded_config_as_today",
    "resolve_config",
    "save_module_parameters",
    "train",
    "train_agents",
    "train_population",
    "with_options_added_later",
]
