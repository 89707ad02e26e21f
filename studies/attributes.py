"""The names under which a study and its trials record what they are and what they did.

Every value stays short (at most 1,024 characters, what optuna-dashboard shows in full): a trial's
learning curves are a file in its directory, named in `klip_curves` (relative to the study
directory, as every path a study records).
"""

from __future__ import annotations

from optuna.trial import TrialState

# Study user attributes.
ATTR_IDENTITY = "klip_identity"
ATTR_COMMAND = "klip_command"
ATTR_VERSION = "klip_version"
ATTR_RUN_OPTIONS = "klip_run_options"
ATTR_INSTANCES = "klip_instances"
ATTR_REFERENCES = "klip_references"
# Trial user attributes.
ATTR_RESULTS = "klip_results"  # instance name -> {task, seed, score, normalised, frames}
ATTR_CURVES = "klip_curves"  # instance name -> [[frames, recent raw return], ...] per iteration
ATTR_CONFIG = "klip_config"  # resolved TrainConfig options (task and seed vary per instance)
ATTR_SHAPE = "klip_shape"  # the trial's shape as shape JSON
ATTR_PARTIAL = "klip_pruned_partial"  # Wilcoxon-pruned but recorded COMPLETE with a partial mean
ATTR_INSTANCES_SAVED = "klip_instances_saved"
ATTR_PROGRESS = "klip_progress"
ATTR_SURPLUS = "klip_surplus"
ATTR_WORKER = "klip_worker"  # host:pid of the process that ran the trial
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Seconds between progress writes to the storage (each is a database write).
PROGRESS_WRITE_INTERVAL = 5.0


def klip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("klip")
    except PackageNotFoundError:
        return "unknown"

