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
    # single runs
    "train": "klip.algos.train",
    "RunInterrupted": "klip.algos.train",
    "PARAMETERS_FILE": "klip.algos.train",
    "final_return": "klip.algos.train",
    "save_module_parameters": "klip.algos.train",
    "recorded_config_as_today": "klip.algos.train",
    "train_agents": "klip.algos.agents",
    "AgentResult": "klip.algos.agents",
    # populations
    "check_population_configs": "klip.algos.population",
    "POPULATION_FILE": "klip.algos.population_run",
    "PopulationSpec": "klip.algos.population_run",
    "train_population": "klip.algos.population_run",
    "train_population_agents": "klip.algos.population_run",
    # a run's outputs
    "load_run": "klip.algos.run",
    "read_columns": "klip.algos.run",
    "read_episode_returns": "klip.algos.run",
    "read_metrics": "klip.algos.plots",
}

if TYPE_CHECKING:
    from klip.algos.agents import AgentResult, train_agents
    from klip.algos.config import LOSSES, ConfigError, TrainConfig, load_config_file
    from klip.algos.plots import read_metrics
    from klip.algos.population import check_population_configs
    from klip.algos.population_run import (
        POPULATION_FILE,
        PopulationSpec,
        train_population,
        train_population_agents,
    )
    from klip.algos.resolve import resolve_config, with_options_added_later
    from klip.algos.run import load_run, read_columns, read_episode_returns
    from klip.algos.train import (
        PARAMETERS_FILE,
        RunInterrupted,
        final_return,
        recorded_config_as_today,
        save_module_parameters,
        train,
    )


def __getattr__(name: str) -> Any:
    module = _ENGINE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


__all__ = [
    "LOSSES",
    "PARAMETERS_FILE",
    "POPULATION_FILE",
    "AgentResult",
    "ConfigError",
    "PopulationSpec",
    "RunInterrupted",
    "TrainConfig",
    "check_population_configs",
    "final_return",
    "load_config_file",
    "load_run",
    "read_columns",
    "read_episode_returns",
    "read_metrics",
    "recorded_config_as_today",
    "resolve_config",
    "save_module_parameters",
    "train",
    "train_agents",
    "train_population",
    "train_population_agents",
    "with_options_added_later",
]
