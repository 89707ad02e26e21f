"""From the options a user gave to the options that run: one meaning for each, or a refusal.

`resolve_config` returns the canonical config (what `config.yaml` records) and the shape
object of `--loss klip`. An option the chosen loss would ignore is refused in one line
that says which option wins, so a recorded option is always an honoured one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klip.algos.config import ConfigError, TrainConfig

if TYPE_CHECKING:  # klip.shapes' classes import torch: `check_before_torch` needs none of them
    from klip.shapes import CoefficientShape, Param

DEFAULT_SHAPE = "step"
DEFAULT_CLIP_EPS = 0.2
DEFAULT_KL_BETA = 1.0
DEFAULT_KL_TARGET = 0.02
DEFAULT_KL_MEASURE = "final"
DEFAULT_KL_DIRECTION = "old_new"


def resolve_config(
    config: TrainConfig, shape: CoefficientShape | None = None
) -> tuple[TrainConfig, CoefficientShape | None]:
    """Validate, fill in the loss-specific defaults and build the shape (None unless --loss klip).

    `shape` is a ready shape object (Python API); it replaces --shape/--shape-file.
    Resolving a resolved config gives it back unchanged.
    """
    from klip.shapes import ShapePluginError, load_shape, load_shapes_from_file

    config = dataclasses.replace(config).validate()  # validate() copies shape_params
    _refuse_options_of_other_losses(config, shape)
    if config.loss != "klip":
        return dataclasses.replace(
            config,
            clip_eps=(config.clip_eps or DEFAULT_CLIP_EPS) if config.loss == "clip" else None,
            kl_beta=config.kl_beta or DEFAULT_KL_BETA if config.loss.startswith("kl_") else None,
            kl_target=config.kl_target or DEFAULT_KL_TARGET if config.loss == "kl_adaptive" else None,
            kl_measure=config.kl_measure or DEFAULT_KL_MEASURE if config.loss == "kl_adaptive" else None,
            kl_direction=config.kl_direction or DEFAULT_KL_DIRECTION if config.loss.startswith("kl_")
            else None,
            diagnostics=False,  # the shape diagnostics exist for --loss klip only
        ), None
    if config.shape_plugin:
        try:
            load_shapes_from_file(config.shape_plugin)
        except ShapePluginError as error:
            wanted = f" (loaded for shape {config.shape!r})" if config.shape else ""
            raise ShapePluginError(f"{error}{wanted}") from error.__cause__
    if shape is not None:
        built = _check_against_given_shape(config, shape, "the shape object passed to train()")
    elif config.shape_file:
        built = _check_against_given_shape(config, load_shape(config.shape_file),
                                           f"--shape-file {config.shape_file}")
    else:
        built = _build_named_shape(config)
    _check_action_spaces(built.display_name(), type(built).action_spaces, config.task)
    resolved = dataclasses.replace(
        config, shape=built.display_name(), shape_params=dict(built.hparams),
        clip_eps=built.hparams.get("eps"),
    )
    return resolved, built


def check_before_torch(config: TrainConfig) -> None:
    """Raise the error `resolve_config(config)` would raise first, where that needs no torch;
    return quietly where it cannot tell (a shape file or plug-in, a shape the built-ins'
    declarations do not decide: `klip.shapes.catalog`), leaving those to `resolve_config`.

    `klip train` calls it before importing the engine, so that a bad option or shape name is
    refused within a second, in the same words and with the same exit code.
    """
    from klip.shapes.catalog import shape_declaration

    config = dataclasses.replace(config).validate()
    _refuse_options_of_other_losses(config, None)
    if config.loss != "klip" or config.shape_plugin or config.shape_file:
        return
    name = config.shape or DEFAULT_SHAPE
    declared = shape_declaration(name)  # an unknown name: get_shape_class's error
    from klip.shapes.params import check_param_values

    check_param_values(name, declared.params, _named_shape_values(config, declared.params))
    _check_action_spaces(name, declared.action_spaces, config.task)


def _check_action_spaces(shape: str, action_spaces: tuple[str, ...], task: str) -> None:
    """Refuse a shape defined only for the other kind of policy (Gaussian or categorical)."""
    from klip.envs.names import action_space_of  # no torch

    kind = action_space_of(task)
    if kind not in action_spaces:
        raise ConfigError(f"shape {shape!r} is defined for {' and '.join(action_spaces)} actions "
                          f"only; {task} has {kind} actions")


def _refuse_options_of_other_losses(config: TrainConfig, shape: CoefficientShape | None) -> None:
    loss = config.loss
    if loss != "klip":
        given = [name for name in ("shape", "shape_file", "shape_plugin") if getattr(config, name)]
        given += ["shape_params"] if config.shape_params else []
        given += ["shape (Python argument)"] if shape is not None else []
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to --loss klip; --loss {loss} ignores "
                              "shapes (use --loss klip, or drop them)")
    if config.clip_eps is not None and loss in ("kl_fixed", "kl_adaptive"):
        raise ConfigError(f"clip_eps does not apply to --loss {loss}; drop it")
    if config.kl_beta is not None and not loss.startswith("kl_"):
        raise ConfigError(f"kl_beta only applies to --loss kl_fixed and kl_adaptive, not {loss}")
    if config.kl_target is not None and loss != "kl_adaptive":
        raise ConfigError(f"kl_target only applies to --loss kl_adaptive, not {loss}")
    if config.kl_measure is not None and loss != "kl_adaptive":
        raise ConfigError(f"kl_measure only applies to --loss kl_adaptive, not {loss}")
    if config.kl_direction is not None and not loss.startswith("kl_"):
        raise ConfigError(f"kl_direction only applies to --loss kl_fixed and kl_adaptive, not {loss}")


def _build_named_shape(config: TrainConfig) -> CoefficientShape:
    from klip.shapes import get_shape_class

    shape_class = get_shape_class(config.shape or DEFAULT_SHAPE)
    return shape_class(**_named_shape_values(config, shape_class.params))


def _named_shape_values(config: TrainConfig, declared: Mapping[str, Param]) -> dict[str, float]:
    """The parameter values of the named shape (`declared` are its parameters): the given ones,
    and --clip-eps as its eps."""
    name = config.shape or DEFAULT_SHAPE
    params = dict(config.shape_params)
    if config.clip_eps is not None:
        if "eps" not in declared:
            raise ConfigError(f"clip_eps sets a shape's eps, and shape {name!r} has no eps; "
                              "drop --clip-eps")
        if params.setdefault("eps", config.clip_eps) != config.clip_eps:
            raise ConfigError(f"clip_eps {config.clip_eps:g} and shape parameter eps={params['eps']:g} "
                              "disagree; --clip-eps sets the shape's eps, give only one")
    return params


def _check_against_given_shape(config: TrainConfig, shape: CoefficientShape, source: str) -> CoefficientShape:
    """A shape file (or object) fixes the shape and its parameters; equal repeats are accepted."""
    name = shape.display_name()
    if config.shape is not None and config.shape != name:
        raise ConfigError(f"--shape {config.shape} disagrees with {source}, which holds shape "
                          f"{name!r}; the shape file wins, drop --shape")
    differing = sorted(key for key, value in config.shape_params.items()
                       if shape.hparams.get(key) != value)
    if differing:
        raise ConfigError(f"shape parameter(s) {', '.join(differing)} disagree with {source}, which "
                          "sets every parameter of its shape; edit the file instead")
    if config.clip_eps is not None and shape.hparams.get("eps") != config.clip_eps:
        raise ConfigError(f"clip_eps {config.clip_eps:g} disagrees with {source} "
                          f"(eps={shape.hparams.get('eps')}); the shape file wins, drop --clip-eps")
    return shape


# Options added after runs were already recorded, with the value those runs had.
OPTIONS_ADDED_LATER: dict[str, Any] = {"env_backend": "gymnasium"}


def with_options_added_later(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with every option added since it was written, at the value that ran.

    `kl_measure` came with PPO's own rule for `kl_adaptive` (the updated policy's KL); runs
    recorded before it adapted beta to the mean of the minibatch KLs during the update.
    `kl_direction` came later still; every scalar-KL run before it penalised KL(old || new).
    """
    options = {**OPTIONS_ADDED_LATER, **recorded}
    if "kl_measure" not in options:
        options["kl_measure"] = "update_mean" if options.get("loss") == "kl_adaptive" else None
    if "kl_direction" not in options:
        scalar_kl = str(options.get("loss", "")).startswith("kl_")
        options["kl_direction"] = DEFAULT_KL_DIRECTION if scalar_kl else None
    return options


def upgrade_recorded_options(recorded: dict[str, Any]) -> dict[str, Any]:
    """The options of a config.yaml written before loss-specific options could be None.

    Such a file records values its loss ignored (`shape: step` of a `--loss clip` run, the
    `clip_eps` of a shape run, `kl_beta` of a non-KL run); they are dropped, as they did not run.
    """
    if "eval_every" in recorded:  # the current format
        return recorded
    options = {**recorded, "eval_every": 0}
    loss = options.get("loss", "klip")
    if loss == "klip":
        options["clip_eps"] = None  # the shape's own eps ran
    else:
        options.update(shape=None, shape_params={}, shape_file=None, shape_plugin=None,
                       diagnostics=False)
    if loss not in ("kl_fixed", "kl_adaptive"):
        options["kl_beta"] = None
    if loss != "kl_adaptive":
        options["kl_target"] = None
    return options


def run_name(config: TrainConfig) -> str:
    """Default run directory name: <task>-<loss>[-<shape>]-s<seed> of a resolved config."""
    shape = f"-{config.shape}" if config.loss == "klip" else ""
    return f"{config.task}-{config.loss}{shape}-s{config.seed}"


def absolute_to(base: Path, path: str | None) -> str | None:
    """A path recorded relative to the run directory, made usable from any working directory."""
    if path is None:
        return None
    return str(path if Path(path).is_absolute() else base / path)


__all__ = ["absolute_to", "check_before_torch", "resolve_config", "run_name", "upgrade_recorded_options",
           "with_options_added_later"]
