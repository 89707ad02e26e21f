"""Search spaces, samplers, pruners and storage parsing of klip study (no training)."""

from __future__ import annotations

import optuna
import pytest

from klip.shapes import get_shape_class
from klip.studies.run import build_pruner, build_sampler, prepare_study
from klip.studies.settings import StudyError, StudySettings, describe_differences
from klip.studies.space import (
    Dimension,
    SearchSpaceError,
    build_shape_from_values,
    resolve_space,
    vector_parameters,
)
from klip.studies.storage import StorageError, parse_storage, redact

OPTIONS = {"rollout_steps": 512, "minibatch_size": 64}


def settings(**overrides) -> StudySettings:
    space, fixed = resolve_space(overrides.get("shape", "sigmoid"))
    base = dict(study_name="s", shape="sigmoid", tasks=["Hopper-v4"], steps_per_task=4096, seeds=1,
                trials=4, train_options=OPTIONS, space=space, fixed=fixed)
    return StudySettings(**{**base, **overrides})


def test_space_comes_from_the_shapes_declarations():
    space, fixed = resolve_space("sigmoid")
    params = get_shape_class("sigmoid").params
    assert space["tau"] == Dimension(*params["tau"].search, log=True)
    assert space["eps"] == Dimension(*params["eps"].search, log=False)
    assert fixed == {}


def test_overrides_and_fix_narrow_the_space():
    space, fixed = resolve_space("sigmoid", {"tau": {"low": 0.01, "high": 0.1, "log": True}}, {"eps": 0.25})
    assert space == {"tau": Dimension(0.01, 0.1, True)}
    assert fixed == {"eps": 0.25}


@pytest.mark.parametrize(("overrides", "fix", "message"), [
    ({"nope": [0, 1]}, {}, "has no parameter 'nope'"),
    ({"tau": [0.5, 0.1]}, {}, "needs finite low < high"),
    ({"tau": {"low": 0, "high": 0.1, "log": True}}, {}, "low must be > 0"),
    ({"eps": [0.1, 2.0]}, {}, "leaves its allowed range"),
    ({"tau": "wide"}, {}, "needs low and high"),
    ({}, {"eps": 1.5}, "outside its allowed range"),
    ({}, {"eps": 0.2, "tau": 0.05}, "nothing left to search"),
])
def test_bad_spaces_are_refused_by_name(overrides, fix, message):
    with pytest.raises(SearchSpaceError, match=message):
        resolve_space("sigmoid", overrides, fix)


def test_learned_vector_is_searchable_and_builds_the_shape():
    names = vector_parameters(get_shape_class("learned"))
    space, _ = resolve_space("learned")
    assert set(names) <= set(space) and len(names) == 2 * len(get_shape_class("learned").KNOTS)
    values = {name: index / 100 for index, name in enumerate(names)}
    shape = build_shape_from_values("learned", {**values, "eps": 0.3})
    assert shape.get_vector().tolist() == pytest.approx(list(values.values()))
    assert shape.eps == 0.3


def test_tpe_is_multivariate_with_constant_liar_and_workers_get_different_seeds():
    first = build_sampler(settings(sampler="tpe", sampler_seed=7), worker=0)
    second = build_sampler(settings(sampler="tpe", sampler_seed=7), worker=1)
    assert isinstance(first, optuna.samplers.TPESampler)
    assert first._multivariate and first._constant_liar
    assert first._rng.rng.random() != second._rng.rng.random()


def test_each_sampler_handles_the_space_it_can():
    learned = settings(sampler="cmaes", shape="learned")
    assert isinstance(build_sampler(learned), optuna.samplers.CmaEsSampler)
    assert isinstance(build_sampler(settings(sampler="gp")), optuna.samplers.GPSampler)
    assert isinstance(build_sampler(settings(sampler="random")), optuna.samplers.RandomSampler)
    assert isinstance(build_sampler(settings(sampler="grid", grid_points=2)), optuna.samplers.GridSampler)
    with pytest.raises(StudyError, match="exceeds the grid's 4 points"):
        build_sampler(settings(sampler="grid", grid_points=2, trials=5))


def test_pruner_auto_is_wilcoxon_from_four_instances_else_median():
    assert isinstance(build_pruner(settings(seeds=4)), optuna.pruners.WilcoxonPruner)
    assert isinstance(build_pruner(settings(seeds=3)), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner(settings(pruner="hyperband")), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner(settings(pruner="none")), optuna.pruners.NopPruner)
    with pytest.raises(StudyError, match="at least 4"):
        build_pruner(settings(pruner="wilcoxon", seeds=2))
    assert [i.name for i in settings(seeds=2, tasks=["A", "B"]).instances] == ["A/s0", "A/s1", "B/s0", "B/s1"]


def test_storage_parsing():
    assert parse_storage(None).url == "sqlite:///klip-studies.db"
    assert parse_storage("runs/s.db").url == "sqlite:///runs/s.db"
    assert parse_storage("runs/s.log").kind == "journal"
    assert parse_storage("postgresql+psycopg://u:pw@h/db").kind == "rdb"
    with pytest.raises(StorageError, match="unknown storage scheme 'redis'"):
        parse_storage("redis://h/0")
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_journal_storage_holds_a_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = prepare_study(settings(storage=parse_storage(str(tmp_path / "journal.log"))))
    assert study.user_attrs["klip_identity"]["shape"] == "sigmoid"
    again = prepare_study(settings(storage=parse_storage(str(tmp_path / "journal.log"))))
    assert again.study_name == study.study_name


def test_named_seeds_from_zero_keep_the_identity_of_a_study_made_with_a_count():
    assert settings(seeds=[0, 1]).identity() == settings(seeds=2).identity()
    assert settings(seeds=[0, 1]).identity()["seeds"] == 2
    assert settings(seeds=[3, 5]).identity()["seeds"] == [3, 5]
    assert [i.name for i in settings(seeds=[3, 5]).instances] == ["Hopper-v4/s3", "Hopper-v4/s5"]


def test_differences_name_what_changed():
    old = settings().identity()
    new = settings(shape="step", seeds=2).identity()
    text = describe_differences(old, new)
    assert "shape 'sigmoid' -> 'step'" in text and "seeds 1 -> 2" in text


def test_cmaes_starts_at_the_shapes_defaults_clipped_into_the_space():
    from klip.studies.space import default_point

    learned = settings(sampler="cmaes", shape="learned")
    start = default_point("learned", learned.space)
    vector = get_shape_class("learned")().get_vector().tolist()
    assert [start[name] for name in vector_parameters(get_shape_class("learned"))] == vector
    assert start["eps"] == 0.2
    sigmoid = default_point("sigmoid", {"eps": Dimension(0.25, 0.3), "tau": Dimension(0.01, 0.1, log=True)})
    assert sigmoid == {"eps": 0.25, "tau": get_shape_class("sigmoid")().tau}  # eps clipped up to 0.25
    assert build_sampler(learned)._x0 == start


def test_cmaes_draws_a_whole_first_batch_from_its_first_generation():
    """Asked together before any trial finished (`--batch K`), every trial comes from CMA-ES's
    generation 0 around the defaults; Optuna's own CmaEsSampler would draw them at random."""
    learned = settings(sampler="cmaes", shape="learned", sampler_seed=0)
    study = optuna.create_study(sampler=build_sampler(learned), direction="maximize")
    trials = [study.ask() for _ in range(6)]
    for trial in trials:
        for name, dim in learned.space.items():
            trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    generations = [study._storage.get_trial(t._trial_id).system_attrs.get("cma:generation") for t in trials]
    assert generations == [0] * 6
    from klip.studies.space import default_point

    # Around x0 (the step gate: knots 0 below the boundary, 1 past it), not uniform over [0, 1].
    start = default_point("learned", learned.space)
    spread = [abs(t.params[name] - start[name]) for t in trials for name in start]
    assert sum(spread) / len(spread) < 0.2


def _ask_and_suggest(study: optuna.Study, space: dict[str, Dimension], count: int) -> list[optuna.Trial]:
    trials = [study.ask() for _ in range(count)]
    for trial in trials:
        for name, dim in space.items():
            trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return trials


def _generation(study: optuna.Study, trial: optuna.Trial) -> int | None:
    return study._storage.get_trial(trial._trial_id).system_attrs.get("cma:generation")


@pytest.mark.parametrize(("batch", "population"), [(0, None), (13, 13), (12, 12), (5, 15), (40, 40)])
def test_a_cmaes_generation_is_a_whole_number_of_batches(batch, population):
    """learned_increments searches 20 parameters: CMA-ES's own population is 4 + floor(3 ln 20) = 12."""
    from klip.studies.sampling import cmaes_population

    assert cmaes_population(20, batch) == population
    space, fixed = resolve_space("learned_increments", fixed={"eps": 0.2})
    increments = settings(sampler="cmaes", shape="learned_increments", sampler_seed=0, batch=batch,
                          fixed=fixed, space=space)
    assert len(increments.space) == 20
    assert build_sampler(increments)._popsize == population


def test_a_trial_queued_again_after_ctrl_c_still_counts_for_its_cmaes_generation():
    """A batch stopped by Ctrl-C is queued again (`queue_again`); once its copies finish, CMA-ES
    must tell that generation and draw the next one. Copies made with `enqueue_trial` alone carry
    no `cma:generation`, so CMA-ES never saw them and drew generation 0 for ever."""
    from optuna.trial import TrialState

    from klip.studies.objective import queue_again

    space = resolve_space("sigmoid")[0]
    search = settings(sampler="cmaes", shape="sigmoid", sampler_seed=0, batch=6)  # 4 + floor(3 ln 2) = 6
    study = optuna.create_study(sampler=build_sampler(search), direction="maximize")
    first = _ask_and_suggest(study, space, 6)
    assert [_generation(study, trial) for trial in first] == [0] * 6
    queue_again(study, first)  # Ctrl-C: the batch is queued again, then told FAIL
    for trial in first:
        study.tell(trial, state=TrialState.FAIL)
    copies = _ask_and_suggest(study, space, 6)
    assert [trial.params for trial in copies] == [trial.params for trial in first]
    for index, trial in enumerate(copies):
        study.tell(trial, float(index))
    following = _ask_and_suggest(study, space, 1)[0]
    assert _generation(study, following) == 1


def test_a_copy_of_a_copy_finishes_the_trial_it_was_made_from():
    """Ctrl-C's copy (`queue_again`) of Optuna's retry of a dead trial, and Optuna's retry of
    Ctrl-C's copy: each finishes its immediate source, whose directory holds the runs (found
    when a retry inherited `klip_continues` and trained finished tasks again)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from klip.studies.objective import continued_trial, first_trial, queue_again
    from klip.studies.run import interrupted_trials

    space = resolve_space("sigmoid")[0]
    study = optuna.create_study(sampler=build_sampler(settings(sampler="random", sampler_seed=0)))
    origin = _ask_and_suggest(study, space, 1)[0]  # 0: stopped by Ctrl-C
    queue_again(study, [origin])
    origin.set_user_attr("klip_interrupted", True)
    study.tell(origin, state=TrialState.FAIL)
    copy = _ask_and_suggest(study, space, 1)[0]  # 1: its worker dies
    study.tell(copy, state=TrialState.FAIL)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):  # what klip uses (storage.py)
        retry_dead = RetryHeartbeatStaleTrialCallback()
    retry_dead(study, study.get_trials()[copy.number])
    retry = _ask_and_suggest(study, space, 1)[0]  # 2: stopped by Ctrl-C
    queue_again(study, [retry])
    retry.set_user_attr("klip_interrupted", True)
    study.tell(retry, state=TrialState.FAIL)
    last = _ask_and_suggest(study, space, 1)[0]  # 3
    trials = study.get_trials()
    assert [continued_trial(trial) for trial in trials] == [None, 0, 1, 2]
    assert trials[2].user_attrs["klip_continues"] == 0  # inherited from its source, not its own
    assert first_trial(study, last.number) == origin.number
    assert interrupted_trials(study) == [0, 2]
    study.tell(last, 1.0)  # the runs both Ctrl-Cs stopped are finished
    assert interrupted_trials(study) == []


def test_the_report_follows_cmaes_generation_by_generation(tmp_path):
    from klip.studies.report import generations, plot_generations, trial_rows

    space = resolve_space("sigmoid")[0]
    search = settings(sampler="cmaes", shape="sigmoid", sampler_seed=0, batch=6)
    study = optuna.create_study(sampler=build_sampler(search), direction="maximize")
    for generation in range(2):
        for index, trial in enumerate(_ask_and_suggest(study, space, 6)):
            study.tell(trial, float(generation + index))  # generation 0: 0..5, generation 1: 1..6
    assert generations(study) == [{"generation": 0, "complete": 6, "mean": 2.5, "max": 5.0},
                                  {"generation": 1, "complete": 6, "mean": 3.5, "max": 6.0}]
    assert [row["generation"] for row in trial_rows(study)] == [0] * 6 + [1] * 6
    assert plot_generations(study, tmp_path) == tmp_path / "generations.png"
    random_search = optuna.create_study(sampler=build_sampler(settings(sampler="random", sampler_seed=0)))
    random_search.tell(_ask_and_suggest(random_search, space, 1)[0], 1.0)
    assert generations(random_search) == [] and trial_rows(random_search)[0]["generation"] is None
    assert plot_generations(random_search, tmp_path / "random") is None
