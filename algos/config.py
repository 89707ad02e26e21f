"""Training configuration: one dataclass whose defaults are the paper's protocol."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from klip.envs import KNOWN_TASKS

LOSSES: tuple[str, ...] = ("klip", "clip", "kl_fixed", "kl_adaptive")
COLLECTORS: tuple[str, ...] = ("torchrl", "fast")


OPTION_HELP: dict[str, str] = {
    "task": "task name (see envs.KNOWN_TASKS)",
    "loss": "klip (a coefficient shape), clip (TorchRL's ClipPPOLoss), kl_fixed, kl_adaptive",
    "shape": "registered shape name for --loss klip",
    "shape_params": "shape parameters (command line: --shape-param NAME=VALUE)",
    "shape_file": "shape JSON file (overrides --shape)",
    "shape_plugin": ".py file registering shapes, imported before the shape is built",
    "steps": "total environment steps (rounded down to whole rollouts)",
    "seed": "seed of networks, environments and sampling",
    "num_envs": "sub-environments stepped together; rollout_steps is split across them",
    "rollout_steps": "frames per PPO iteration, all sub-environments together",
    "epochs": "passes over each rollout",
    "minibatch_size": "samples per gradient step",
    "lr": "Adam learning rate",
    "anneal_lr": "anneal the learning rate linearly to 0",
    "adam_eps": "Adam epsilon",
    "gamma": "discount",
    "gae_lambda": "GAE lambda",
    "clip_eps": "clip radius of --loss clip",
    "value_clip": "value-clipping radius, or none",
    "critic_coeff": "critic loss coefficient (on TorchRL's un-halved MSE)",
    "entropy_coeff": "entropy bonus coefficient",
    "max_grad_norm": "global gradient-norm clip",
    "normalize_advantage": "standardise advantages per minibatch",
    "kl_beta": "initial beta of the scalar-beta losses",
    "kl_target": "KL target of --loss kl_adaptive",
    "hidden": "hidden width of the 2-layer tanh MLPs",
    "collector": "fast (lean loop, bitwise equal to TorchRL's) or torchrl (TorchRL's Collector)",
    "compile": "torch.compile the minibatch loss and its backward (1-8 s; not bitwise equal to eager)",
    "fused_adam": "fused Adam kernel (faster; rounds differently from the default)",
    "eval_episodes": "deterministic evaluation episodes at the end (0: none)",
    "checkpoint_every": "iterations between checkpoints",
    "diagnostics": "log the shape diagnostics (region fractions, gate, beta, k3 KL)",
}


class ConfigError(ValueError):
    """A bad configuration value; the message names the option."""


@dataclass
class TrainConfig:
    """Every option of a training run. Defaults follow the CleanRL / SB3 MuJoCo PPO protocol."""

    task: str = "Hopper-v4"
    loss: str = "klip"
    shape: str = "step"
    shape_params: dict[str, float] = field(default_factory=dict)
    shape_file: str | None = None
    shape_plugin: str | None = None
    steps: int = 1_000_000
    seed: int = 0
    num_envs: int = 1
    rollout_steps: int = 2048
    epochs: int = 10
    minibatch_size: int = 64
    lr: float = 3e-4
    anneal_lr: bool = True
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_clip: float | None = 0.2
    # CleanRL: 0.5 * vf_coef(0.5) * MSE, i.e. 0.25 on TorchRL's un-halved MSE.
    critic_coeff: float = 0.25
    entropy_coeff: float = 0.0
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    kl_beta: float = 1.0
    kl_target: float = 0.02
    hidden: int = 64
    collector: str = "fast"
    compile: bool = False
    fused_adam: bool = False
    eval_episodes: int = 10
    checkpoint_every: int = 10
    diagnostics: bool = True

    @property
    def iterations(self) -> int:
        return self.steps // self.rollout_steps

    @property
    def frames_per_env(self) -> int:
        return self.rollout_steps // self.num_envs

    def validate(self) -> TrainConfig:
        positive = ["steps", "num_envs", "rollout_steps", "epochs", "minibatch_size", "hidden",
                    "checkpoint_every"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.eval_episodes < 0:
            raise ConfigError(f"eval_episodes must be >= 0, got {self.eval_episodes}")
        if self.task not in KNOWN_TASKS:
            raise ConfigError(f"unknown task {self.task!r}; known tasks: {', '.join(KNOWN_TASKS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.collector not in COLLECTORS:
            raise ConfigError(
                f"unknown collector {self.collector!r}; choose one of {', '.join(COLLECTORS)}"
            )
        if self.rollout_steps % self.num_envs:
            raise ConfigError(
                f"rollout_steps ({self.rollout_steps}) must be a multiple of num_envs "
                f"({self.num_envs})"
            )
        if self.rollout_steps % self.minibatch_size:
            raise ConfigError(
                f"rollout_steps ({self.rollout_steps}) must be a multiple of minibatch_size "
                f"({self.minibatch_size})"
            )
        if self.steps < self.rollout_steps:
            raise ConfigError(
                f"steps ({self.steps}) must be at least one rollout ({self.rollout_steps})"
            )
        for name in ("lr", "adam_eps", "clip_eps", "max_grad_norm", "kl_beta", "kl_target"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.value_clip is not None and not self.value_clip > 0:
            raise ConfigError(f"value_clip must be > 0 or null, got {self.value_clip!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
            )
        return cls(**data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config into a dict of options (validated later, with the CLI overrides)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
