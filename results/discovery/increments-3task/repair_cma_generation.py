"""One-off repair of this study's records (2026-12-07), kept with the data it changed.

Until klip's `queue_again`, a trial stopped by Ctrl-C was queued again with `enqueue_trial`,
which copies its parameters but not its `cma:generation`: CMA-ES never counted the copy, so
this study (stopped at the end of every session) finished 13 trials that CMA-ES never saw and
kept drawing its generation 0. This marks each copy with the generation of the trial it
continues (all generation 0: no generation had been told), so that CMA-ES tells generation 0
and goes on from there; and it fails the 13 copies of a second, surplus draw of generation 0
(trials 65-77, stopped after a minute of training) instead of training them.

    .venv/bin/python results/discovery/increments-3task/repair_cma_generation.py

Run with the discovery job stopped; it refuses to run twice.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
from optuna.trial import TrialState

DATABASE = Path(__file__).with_name("study.db")
STUDY = "increments-3task"
GENERATION = "cma:generation"
SURPLUS = range(78, 91)  # WAITING copies of trials 65-77
REASON = ("not trained: a copy of a surplus draw of CMA-ES generation 0 (trials 65-77, started by "
          "mistake while this generation's copies 52-64 were still to finish); see "
          "repair_cma_generation.py")


def source_generation(trials: dict[int, optuna.trial.FrozenTrial], number: int) -> int | None:
    """The generation of the trial that `number` continues, following the chain of copies."""
    seen = set()
    while number not in seen:
        seen.add(number)
        trial = trials[number]
        if GENERATION in trial.system_attrs:
            return int(trial.system_attrs[GENERATION])
        source = trial.user_attrs.get("klip_continues")
        if source is None:
            return None
        number = int(source)
    return None


def main() -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{DATABASE}")
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    if any(trial.user_attrs.get("klip_error") == REASON for trial in trials.values()):
        raise SystemExit("already repaired")
    finished, live = [], []
    for number, trial in sorted(trials.items()):
        if GENERATION in trial.system_attrs or number in SURPLUS:
            continue
        generation = source_generation(trials, number)
        if generation is None:
            continue
        (finished if trial.state.is_finished() else live).append((number, trial, generation))
    for _number, trial, generation in live:  # RUNNING (a dead worker's): Optuna can still write it
        storage.set_trial_system_attr(trial._trial_id, GENERATION, generation)
    # Optuna refuses to change a finished trial; its system attributes are one row each.
    with sqlite3.connect(DATABASE) as connection:
        connection.executemany(
            "insert into trial_system_attributes (trial_id, key, value_json) values (?, ?, ?)",
            [(trial._trial_id, GENERATION, json.dumps(generation)) for _, trial, generation in finished])
    for number in SURPLUS:
        trial = trials[number]
        assert trial.state == TrialState.WAITING, (number, trial.state)
        storage.set_trial_user_attr(trial._trial_id, "klip_error", REASON)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    print("generation set on trials", [n for n, _, _ in finished + live], "; failed", list(SURPLUS))


if __name__ == "__main__":
    main()
