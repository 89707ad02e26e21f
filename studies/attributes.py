"""The names under which a study and its trials record what they are and what they did.

A trial's values stay short (optuna-dashboard shows a user attribute up to 1,024 characters): each
(task, seed) result is its own attribute (`klip_result:TASK/sSEED`), and the learning curves are a
file in the trial's directory (`curves.json`), named in `klip_curves` relative to the study
directory, as every path a trial records is. Studies made before kept all results in
`klip_results` and the curves themselves in `klip_curves`; `trial_results` and `trial_curves`
read both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# Study user attributes.
ATTR_IDENTITY = "klip_identity"  # what makes the study (its search space apart, below)
ATTR_IDENTITY_SPACE = "klip_identity_search_space"
ATTR_COMMAND = "klip_command"
ATTR_VERSION = "klip_version"
ATTR_RUN_OPTIONS = "klip_run_options"
ATTR_INSTANCES = "klip_instances"
ATTR_REFERENCES = "klip_references"
ATTR_UID = "klip_uid"  # the study's own id, also in its directory's marker file
STUDY_DIR_MARKER = "klip-study.json"  # in the study directory: the study that owns it
# Trial user attributes.
# + instance name -> {task, seed, index, score, normalised, frames, complete, diverged}
ATTR_RESULT = "klip_result:"
ATTR_RESULTS = "klip_results"  # (studies made before) instance name -> the same, all in one
ATTR_CURVES = "klip_curves"  # the curves file, relative to the study directory (before: the curves)
ATTR_CONFIG = "klip_config"  # TrainConfig options (task and seed vary per instance; paths relative)
ATTR_CONTINUES = "klip_continues"  # the interrupted (or dead) trial whose runs this one finishes
ATTR_INTERRUPTED = "klip_interrupted"  # Ctrl-C stopped this trial; a copy continues it
ATTR_KEPT = "klip_kept_aside"  # a directory found in this trial's place, moved aside (not deleted)
ATTR_SHAPE = "klip_shape"  # the trial's shape as shape JSON
ATTR_PARTIAL = "klip_pruned_partial"  # Wilcoxon-pruned but recorded COMPLETE with a partial mean
ATTR_INSTANCES_SAVED = "klip_instances_saved"
ATTR_PROGRESS = "klip_progress"
ATTR_SURPLUS = "klip_surplus"
ATTR_WORKER = "klip_worker"  # host:pid of the process that ran the trial
ATTR_ERROR = "klip_error"  # why the trial (or a grid's cell job) failed, in one line
ERROR_INTERRUPTED = "interrupted"  # ATTR_ERROR of a grid's cell job that Ctrl-C stopped
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CURVES_FILE = "curves.json"  # instance name -> [[frames, recent raw return], ...] per iteration
ATTR_LIMIT = 1024  # characters optuna-dashboard shows of a user attribute
# Seconds between progress writes to the storage (each is a database write).
PROGRESS_WRITE_INTERVAL = 5.0


def klip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("klip")
    except PackageNotFoundError:
        return "unknown"



def ranked_trials(study: Any) -> list[FrozenTrial]:
    """A study's complete trials with a finite value, best first (ties: the earlier trial); the
    trials that evaluated every instance rank before Wilcoxon-pruned partial means, which are
    no fair best. The first is the study's best trial for every klip command."""

    complete = [trial for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if trial.value is not None and math.isfinite(trial.value)]
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    return sorted(complete, key=lambda trial: (bool(trial.user_attrs.get(ATTR_PARTIAL)), sign * trial.value,
                                               trial.number))


def trial_results(trial: FrozenTrial) -> dict[str, dict[str, Any]]:
    """Instance name -> result, from the per-instance attributes (or a study made before)."""
    results = dict(trial.user_attrs.get(ATTR_RESULTS, {}))
    for key, value in trial.user_attrs.items():
        if key.startswith(ATTR_RESULT):
            results[key.removeprefix(ATTR_RESULT)] = value
    return results


def write_curves(study_dir: Path, trial_dir: Path, curves: dict[str, list[list[float]]]) -> str:
    """Write the trial's curves file; return its name relative to the study directory."""
    from klip.studies.files import write_text_atomically

    write_text_atomically(trial_dir / CURVES_FILE, json.dumps(curves, separators=(",", ":")) + "\n")
    return (trial_dir / CURVES_FILE).relative_to(study_dir).as_posix()


def trial_curves(trial: FrozenTrial, study_dir: Path | None) -> dict[str, list[list[float]]]:
    """Instance name -> curve: from the curves file (in `study_dir`) or a study made before."""
    recorded = trial.user_attrs.get(ATTR_CURVES, {})
    if isinstance(recorded, dict):
        return recorded
    if study_dir is None:
        return {}
    try:
        return json.loads((study_dir / recorded).read_text())
    except (OSError, ValueError):
        return {}
