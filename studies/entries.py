"""`klip compare`'s entries: what is compared, read from its command-line form.

An *entry* is a loss (`clip`, `kl_fixed`, `kl_adaptive:kl_target=0.01`), a registered shape
with parameters (`step`, `sigmoid:eps=0.25,tau=0.03`), a shape JSON file, or a study's best trial
(`study:NAME@STORAGE_URL`; `#N` for trial N, `#topK` for the K best, one entry each). Numbers
are read as `klip train` reads them (`1e-3`, `0.050`), and an entry's label is its canonical
spelling, so `tau=0.050` and `tau=0.05` are one entry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Options the grid sets per cell; a base option may not override them.
# Where a grid keeps its own copies of shape files (entries with learned state).
SHAPES_DIR = "shapes"
GRID_OPTIONS = ("task", "loss", "shape", "shape_params", "shape_file", "seed", "steps")


class CompareError(ValueError):
    """Bad input to a comparison (entries, settings, directory), told in one line."""



@dataclass(frozen=True)
class Entry:
    """One compared method: a label and the training options that make it."""

    label: str
    spec: str
    options: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.label)

    @property
    def is_step(self) -> bool:
        """PPO-Clip written as the `step` shape, with nothing else changed."""
        return self.options == {"loss": "klip", "shape": "step", "shape_params": {}}

    @property
    def is_clip(self) -> bool:
        """TorchRL's ClipPPOLoss with nothing else changed."""
        return self.options == {"loss": "clip"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        options = dict(data["options"])
        shape_file = options.get("shape_file")
        if isinstance(shape_file, str) and Path(shape_file).is_absolute() \
                and Path(shape_file).parent.name == SHAPES_DIR:
            # Written by a klip that recorded the grid's own copy by its absolute path.
            options["shape_file"] = f"{SHAPES_DIR}/{Path(shape_file).name}"
        return cls(**{**data, "options": options})


def format_value(value: Any) -> str:
    """A value as an entry label writes it: the shortest text that reads back as the same number."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def _format_params(params: dict[str, Any]) -> str:
    return ",".join(f"{key}={format_value(value)}" for key, value in params.items())


def parse_option_value(key: str, raw: str, where: str) -> Any:
    """A training option's value from text, as `klip train`'s flag reads it: `1e-3` and `0.001`
    are one number, `none` is None where the option takes it, text only where it takes text."""
    import typing

    from klip.studies.training import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    if key not in hints:
        raise CompareError(f"{where}: {key!r} is not a training option")
    hint, text = hints[key], raw.strip()
    choices = typing.get_args(hint)
    if hint is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise CompareError(f"{where}: {key}={raw!r} is not true or false")
    if type(None) in choices and text.lower() in ("none", "null", "~"):
        return None
    if hint is int or int in choices:
        try:
            return int(text)
        except ValueError:
            raise CompareError(f"{where}: {key}={raw!r} is not an integer") from None
    if hint is float or float in choices:
        try:
            return float(text)
        except ValueError:
            raise CompareError(f"{where}: {key}={raw!r} is not a number") from None
    if hint is str or str in choices:
        return text
    value = yaml.safe_load(text)  # a mapping or a list, as in a YAML --config
    return value


def _loss_overrides(name: str, assignments: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key in GRID_OPTIONS:
            raise CompareError(f"entry {name!r}: {item!r} is not OPTION=VALUE of a training option")
        if key in overrides:
            raise CompareError(f"entry {name!r}: {key} is given twice")
        try:
            overrides[key] = parse_option_value(key, raw, f"entry {name!r}")
        except CompareError as error:
            if "is not a training option" in str(error):
                raise CompareError(f"entry {name!r}: {item!r} is not OPTION=VALUE of a training option") \
                    from None
            raise
    return overrides


def _shape_entry(spec: str, label: str, shape: Any, grid_dir: Path, source: dict[str, Any]) -> Entry:
    """An entry for a shape object: by name and parameters, or (with state) by a copied file."""
    data = shape.to_dict()
    if not data.get("state"):
        params = dict(data.get("params", {}))
        return Entry(label, spec, {"loss": "klip", "shape": data["name"], "shape_params": params},
                     source)
    # A shape with learned state needs its file; the grid keeps its own copy.
    copy = grid_dir / SHAPES_DIR / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(json.dumps(data, indent=2) + "\n")
    # Relative to the grid directory: a grid records no path of the machine that made it.
    return Entry(label, spec, {"loss": "klip", "shape_file": copy.relative_to(grid_dir).as_posix()},
                 source)


def yaml_scalar(value: Any) -> str:
    """`value` written so that `--set OPTION=VALUE` reads it back (YAML; 1e-05 as `1.0e-05`)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def hide_passwords(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


STUDY_ENTRY_FORM = ("study:NAME@STORAGE_URL (the best trial), study:NAME#N@STORAGE_URL or "
                    "study:NAME#topK@STORAGE_URL")


def _study_parts(spec: str) -> tuple[str, str, str]:
    """`study:NAME[#SELECTOR]@URL` -> (name, selector or "", url)."""
    named, sep, url = spec.removeprefix("study:").partition("@")
    name, _, selector = named.partition("#")
    if not sep or not name or not url:
        raise CompareError(f"entry {hide_passwords(spec)!r}: a study entry looks like {STUDY_ENTRY_FORM}")
    return name, selector, url


def _load_study(spec: str, name: str, url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=url)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CompareError(f"entry {hide_passwords(spec)!r}: {error}") from None


def expand_study_entry(spec: str) -> list[str]:
    """`study:NAME#topK@URL` -> one `study:NAME#N@URL` per trial of the K best, best first (to
    compare a search's leaders on new seeds before choosing one); any other entry as it is."""
    if not spec.startswith("study:"):
        return [spec]
    name, selector, url = _study_parts(spec)
    top = re.fullmatch(r"top(\d+)", selector)
    if top is None:
        return [spec]
    count = int(top.group(1))
    if count < 1:
        raise CompareError(f"entry {hide_passwords(spec)!r}: #top needs at least 1 trial")
    from klip.studies.attributes import ranked_trials

    ranked = ranked_trials(_load_study(spec, name, url))
    if len(ranked) < count:
        raise CompareError(f"entry {hide_passwords(spec)!r}: study {name!r} has {len(ranked)} complete "
                           f"trials, fewer than {count}")
    return [f"study:{name}#{trial.number}@{url}" for trial in ranked[:count]]


def _study_entry(spec: str, grid_dir: Path) -> Entry:
    """`study:NAME@URL`: the best trial's shape (`#N`: trial N's): a `klip study` trial's shape
    JSON (with its state, e.g. a learned vector), else the params `shape` and the shape's
    parameters."""
    from klip.shapes import make_shape, shape_from_dict
    from klip.studies.attributes import ATTR_SHAPE, ranked_trials

    name, selector, url = _study_parts(spec)
    shown = hide_passwords(spec)  # grid.json and messages: never a storage password
    if selector and not selector.isdigit():
        raise CompareError(f"entry {shown!r}: a study entry looks like {STUDY_ENTRY_FORM}")
    study = _load_study(spec, name, url)
    ranked = ranked_trials(study)
    if not ranked:
        raise CompareError(f"entry {shown!r}: study {name!r} has no complete trial yet")
    best = ranked[0]
    if selector:
        chosen = [trial for trial in ranked if trial.number == int(selector)]
        if not chosen:
            raise CompareError(f"entry {shown!r}: trial {selector} is not a complete trial of study {name!r}")
        best = chosen[0]
    source = {"study": name, "storage": hide_passwords(url), "trial": best.number,
              "value": best.value}
    try:
        if isinstance(best.user_attrs.get(ATTR_SHAPE), dict):
            shape = shape_from_dict(best.user_attrs[ATTR_SHAPE])
        else:
            params = dict(best.params)
            shape = make_shape(str(params.pop("shape")), **params)
    except (KeyError, ValueError, TypeError) as error:
        raise CompareError(f"entry {shown!r}: trial {best.number} holds no shape ({error})") from None
    label = f"study-{name}-t{best.number}" if selector else f"study-{name}"
    return _shape_entry(shown, label, shape, grid_dir, source)


def parse_entry(spec: str, grid_dir: Path) -> Entry:
    """One entry from its command-line form."""
    from klip.shapes import parse_param_assignments
    from klip.shapes.catalog import check_shape, known_shapes  # no torch for the built-in shapes
    from klip.studies.training import LOSSES

    spec = spec.strip()
    if spec.startswith("study:"):
        return _study_entry(spec, grid_dir)
    if spec.endswith(".json"):
        from klip.shapes import load_shape  # torch

        try:
            shape = load_shape(spec)
        except (OSError, ValueError, KeyError) as error:
            raise CompareError(f"entry {spec!r}: {error}") from None
        return _shape_entry(spec, Path(spec).stem, shape, grid_dir, {"file": spec})
    name, _, rest = spec.partition(":")
    assignments = [item for item in rest.split(",") if item.strip()]
    # An entry's spec is its canonical spelling (its label): `tau=0.050` and `tau=0.05`, or
    # `klip` and `step`, make one grid.
    if name in LOSSES and name != "klip":
        overrides = _loss_overrides(name, assignments)
        label = f"{name}:{_format_params(overrides)}" if overrides else name
        return Entry(label, label, {"loss": name, **overrides})
    shape_name = "step" if name == "klip" else name
    if shape_name in known_shapes():
        keys = [item.partition("=")[0].strip() for item in assignments]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise CompareError(f"entry {spec!r}: {', '.join(repeated)} given twice")
        try:
            params = parse_param_assignments(assignments)
            check_shape(shape_name, params)
        except (ValueError, TypeError, KeyError) as error:
            raise CompareError(f"entry {spec!r}: {error}") from None
        label = f"{shape_name}:{_format_params(params)}" if params else shape_name
        return Entry(label, label, {"loss": "klip", "shape": shape_name, "shape_params": params})
    raise CompareError(
        f"unknown entry {spec!r}; an entry is a loss ({', '.join(x for x in LOSSES if x != 'klip')}), "
        f"a shape ({', '.join(known_shapes())}) with optional :NAME=VALUE,..., "
        f"a shape .json file, or {STUDY_ENTRY_FORM}"
    )


def split_entries(text: str | None) -> list[str]:
    """`--losses` text -> entry specs. Commas separate entries and an entry's parameters alike,
    so a `NAME=VALUE` item continues the entry before it: `step,sigmoid:eps=0.25,tau=0.05` is
    two entries, the second with two parameters."""
    specs: list[str] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        continues = "=" in item and ":" not in item.partition("=")[0] and not item.endswith(".json")
        if continues and specs and ":" in specs[-1] and not specs[-1].startswith("study:"):
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def parse_entries(specs: Sequence[str], grid_dir: Path) -> list[Entry]:
    given = [one for spec in specs if spec.strip() for one in expand_study_entry(spec.strip())]
    entries = [parse_entry(spec, grid_dir) for spec in given]
    if not entries:
        raise CompareError("no entries given (--losses)")
    seen: dict[str, str] = {}
    for text, entry in zip(given, entries, strict=True):
        if entry.dirname in seen:
            raise CompareError(f"entries {seen[entry.dirname]!r} and {text!r} are the same entry "
                               f"({entry.label})")
        seen[entry.dirname] = text
    return entries

