"""One flag per `TrainConfig` field, shared by `klip train` and `klip study run`."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection
from typing import Any


def float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def add_train_option_arguments(parser: Any, exclude: Collection[str] = ()) -> None:
    """Flags for the `TrainConfig` fields not in `exclude`, defaulting to 'not given' so that
    YAML values survive; the help text is the field's own (`TrainConfig` metadata), as in
    docs/options.md. `parser` is an `ArgumentParser` or an argument group."""
    from klip.algos.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name in exclude:
            continue
        hint = hints[field.name]
        # A None default means "not given": the help text says what then applies.
        default = "" if field.default is None else f" (default: {field.default})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": f"{field.metadata['help']}{default}"}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif hint is int:
            kwargs["type"] = int
        elif field.name == "value_clip":
            kwargs["type"] = float_or_none
        elif float in typing.get_args(hint) or hint is float:
            kwargs["type"] = float
        parser.add_argument("--" + field.name.replace("_", "-"), **kwargs)
