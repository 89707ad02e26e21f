"""Training configuration: one dataclass whose defaults are the paper's protocol."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOSSES: tuple[str, ...] = ("klip", "clip", "kl_fixed", "kl_adaptive")
# What `kl_adaptive` compares with its target once per rollout (see ScalarKLPPOLoss).
KL_MEASURES: tuple[str, ...] = ("final", "update_mean")
# Which KL the scalar-beta losses penalise: KL(rollout || current), PPO's, or the reverse.
KL_DIRECTIONS: tuple[str, ...] = ("old_new", "new_old")
COLLECTORS: tuple[str, ...] = ("torchrl", "fast")


class ConfigError(ValueError):
    """A bad configuration value; the message names the option."""


# numpy's global seeding (which Lightning's seed_everything uses) takes 32-bit seeds.
MAX_SEED = 2**32 - 1
# Options that may change when a run is resumed: they do not change its trajectory.
RESUMABLE_OPTIONS: tuple[str, ...] = ("steps", "eval_episodes", "eval_every", "checkpoint_every")


def option(default: Any, help: str) -> Any:
    """A TrainConfig field whose help text feeds `klip train --help` and docs/options.md."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of a training run. Defaults follow the CleanRL / SB3 MuJoCo PPO protocol.

    Options that only one loss uses (the shape options, `clip_eps`, `kl_beta`, `kl_target`)
    default to None ("not given"); `klip.algos.resolve.resolve_config` fills in the value
    that runs and refuses a value the chosen loss would ignore.
    """

    task: str = option("Hopper-v4", "task name (see klip.envs.KNOWN_TASKS)")
    loss: str = option("klip", "klip (a coefficient shape), clip (TorchRL's ClipPPOLoss), "
                       "kl_fixed, kl_adaptive")
    shape: str | None = option(None, "registered shape name for --loss klip (default: step, or the "
                               "shape of --shape-file)")
    shape_params: dict[str, float] = field(default_factory=dict, metadata={
        "help": "shape parameters (command line: --shape-param NAME=VALUE); a run records every "
                "parameter of its shape"})
    shape_file: str | None = option(None, "shape JSON file; it sets the shape and its parameters "
                                    "(copied into the run directory)")
    shape_plugin: str | None = option(None, ".py file registering shapes, imported before the shape "
                                      "is built (copied into the run directory)")
    steps: int = option(1_000_000, "total environment steps (rounded down to whole rollouts); may "
                        "grow on resume")
    seed: int = option(0, f"seed of networks, environments and sampling, 0 to {MAX_SEED}")
    num_envs: int = option(1, "sub-environments stepped together; rollout_steps is split across them")
    env_backend: str = option("gymnasium", "simulator under the training envs: gymnasium (the "
                              "reference) or envpool (faster; needs klip[envpool]; no --resume)")
    rollout_steps: int = option(2048, "frames per PPO iteration, all sub-environments together")
    epochs: int = option(10, "passes over each rollout")
    minibatch_size: int = option(64, "samples per gradient step")
    lr: float = option(3e-4, "Adam learning rate")
    anneal_lr: bool = option(True, "anneal the learning rate linearly to 0 at the last iteration")
    adam_eps: float = option(1e-5, "Adam epsilon")
    gamma: float = option(0.99, "discount")
    gae_lambda: float = option(0.95, "GAE lambda")
    clip_eps: float | None = option(None, "clip radius: of --loss clip (default 0.2), or the eps "
                                    "parameter of a shape that has one")
    value_clip: float | None = option(0.2, "value-clipping radius, or none")
    # CleanRL: 0.5 * vf_coef(0.5) * MSE, i.e. 0.25 on TorchRL's un-halved MSE.
    critic_coeff: float = option(0.25, "critic loss coefficient (on TorchRL's un-halved MSE)")
    entropy_coeff: float = option(0.0, "entropy bonus coefficient")
    max_grad_norm: float = option(0.5, "global gradient-norm clip")
    normalize_advantage: bool = option(True, "standardise advantages per minibatch")
    kl_beta: float | None = option(None, "initial beta of --loss kl_fixed / kl_adaptive (default 1.0)")
    kl_target: float | None = option(None, "KL target of --loss kl_adaptive (default 0.02)")
    kl_measure: str | None = option(None, "the KL --loss kl_adaptive adapts beta to: final (the "
                                    "updated policy's KL from the rollout policy over the rollout, "
                                    "PPO's rule; default) or update_mean (mean of the minibatch "
                                    "KLs during the update)")
    kl_direction: str | None = option(None, "the KL --loss kl_fixed / kl_adaptive penalise and "
                                      "adapt to: old_new, KL(rollout policy || current), PPO's "
                                      "(default); or new_old, KL(current || rollout policy)")
    hidden: int = option(64, "hidden width of the 2-layer tanh MLPs")
    collector: str = option("fast", "fast (lean loop, bitwise equal to TorchRL's) or torchrl "
                            "(TorchRL's Collector)")
    compile: bool = option(False, "torch.compile the minibatch loss and its backward (1-8 s; not "
                           "bitwise equal to eager)")
    fused_adam: bool = option(False, "fused Adam kernel (faster; rounds differently from the default)")
    eval_episodes: int = option(10, "deterministic evaluation episodes at the end (0: none)")
    eval_every: int = option(0, "evaluate deterministically every K iterations into "
                             "evaluations.csv (0: never)")
    checkpoint_every: int = option(10, "iterations between checkpoints")
    diagnostics: bool = option(True, "log the shape diagnostics (region fractions, gate, beta, "
                               "k3 KL) of --loss klip; other losses record false")

    @property
    def iterations(self) -> int:
        return self.steps // self.rollout_steps

    @property
    def frames_per_env(self) -> int:
        return self.rollout_steps // self.num_envs

    def validate(self) -> TrainConfig:
        """Check types and ranges; floats given as integers become floats. Returns self."""
        self._check_types()
        self._check_ranges()
        return self

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            expected = _allowed_types(hints[spec.name])
            if value is None and type(None) in expected:
                continue
            if float in expected and _is_number(value):
                if not math.isfinite(value):
                    raise ConfigError(f"{spec.name} must be a finite number, got {value!r}")
                setattr(self, spec.name, float(value))
            elif int in expected and not (isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(f"{spec.name} must be an integer, got {value!r}")
            elif bool in expected and not isinstance(value, bool):
                raise ConfigError(f"{spec.name} must be true or false, got {value!r}")
            elif str in expected and not isinstance(value, str):
                raise ConfigError(f"{spec.name} must be a string, got {value!r}")
            elif dict in expected:
                self.shape_params = _check_shape_params(value)
            elif float in expected and not _is_number(value):
                raise ConfigError(f"{spec.name} must be a number, got {value!r}")

    def _check_ranges(self) -> None:
        positive = ["steps", "num_envs", "rollout_steps", "epochs", "minibatch_size", "hidden",
                    "checkpoint_every"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("eval_episodes", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        # No torch: an unknown task, or one whose extra is missing, is refused at once.
        from klip.envs.names import KNOWN_TASKS, check_task_installed

        if self.task not in KNOWN_TASKS:
            raise ConfigError(f"unknown task {self.task!r}; known tasks: {', '.join(KNOWN_TASKS)}")
        try:
            check_task_installed(self.task)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.kl_measure is not None and self.kl_measure not in KL_MEASURES:
            raise ConfigError(f"unknown kl_measure {self.kl_measure!r}; choose one of "
                              f"{', '.join(KL_MEASURES)}")
        if self.kl_direction is not None and self.kl_direction not in KL_DIRECTIONS:
            raise ConfigError(f"unknown kl_direction {self.kl_direction!r}; choose one of "
                              f"{', '.join(KL_DIRECTIONS)}")
        if self.collector not in COLLECTORS:
            raise ConfigError(
                f"unknown collector {self.collector!r}; choose one of {', '.join(COLLECTORS)}"
            )
        from klip.envs.envpool_backend import check_env_backend

        try:
            check_env_backend(self.env_backend, self.task)
        except ValueError as error:
            raise ConfigError(str(error)) from None
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
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        for name in ("critic_coeff", "entropy_coeff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.value_clip is not None and not self.value_clip > 0:
            raise ConfigError(f"value_clip must be > 0 or null, got {self.value_clip!r}")

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


def _allowed_types(hint: Any) -> set[type]:
    arguments = typing.get_args(hint)
    if hint is not None and typing.get_origin(hint) in (types.UnionType, typing.Union):
        return {typing.get_origin(a) or a for a in arguments}
    return {typing.get_origin(hint) or hint}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_shape_params(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"shape_params must be a mapping of name: number, got {value!r}")
    checked: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str) or not _is_number(number) or not math.isfinite(number):
            raise ConfigError(f"shape_params {key!r} must be a finite number, got {number!r}")
        checked[key] = float(number)
    return checked


def option_help(name: str) -> str:
    """The help text of one TrainConfig option."""
    return {spec.name: spec.metadata["help"] for spec in dataclasses.fields(TrainConfig)}[name]


def options_markdown() -> str:
    """docs/options.md: one row per TrainConfig option (scripts/generate_docs.py writes it)."""
    lines = [
        "# Training options",
        "",
        "Generated from `klip.algos.config.TrainConfig` by `scripts/generate_docs.py`; do not edit.",
        "Each option is a `klip train` flag (`--name-with-dashes`) and a key of a `--config` YAML file.",
        "",
        "| option | flag | default | meaning |",
        "|---|---|---|---|",
    ]
    for spec in dataclasses.fields(TrainConfig):
        default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default  # type: ignore[misc]
        flag = "--" + spec.name.replace("_", "-")
        if spec.name == "shape_params":
            flag = "--shape-param NAME=VALUE"
        help_text = spec.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{spec.name}` | `{flag}` | `{default}` | {help_text} |")
    return "\n".join(lines) + "\n"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config into a dict of options (validated later, with the CLI overrides)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
