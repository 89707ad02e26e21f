"""The comparison report's reading: words generated from intervals, never beyond them."""

from __future__ import annotations

import math
from types import SimpleNamespace

from klip.studies.compare_reading import difference_table, reading, task_differences
from klip.studies.entries import Entry
from klip.studies.statistics import Estimate

NAN = math.nan


def fake_results(returns: dict[str, dict[str, list[float]]], labels: list[str]) -> SimpleNamespace:
    entries = [Entry(label, label, {"loss": "klip", "shape": label, "shape_params": {}}) for label in labels]
    spec = SimpleNamespace(tasks=list(returns), entries=entries)
    return SimpleNamespace(spec=spec, seeds_of=lambda task, entry: dict(
        enumerate(returns[task].get(entry.label, []))))


def test_differences_are_entry_minus_step_and_bold_only_outside_the_noise():
    results = fake_results({
        "A": {"step": [10.0, 11.0, 9.0, 10.5, 9.5], "good": [20.0, 21.0, 19.0, 20.5, 19.5],
              "same": [10.2, 9.8, 10.9, 9.1, 10.0]},
        "B": {"step": [5.0, 6.0, 4.0, 5.5, 4.5], "good": [1.0, 2.0, 0.5, 1.5, 1.0], "same": [5.0, 6.0]},
    }, ["step", "good", "same"])
    differences = task_differences(results, results.spec.entries[0], n_resamples=500)
    good = differences["A"]["good"]
    assert abs(good.point - 10.0) < 1e-9 and good.low > 0
    assert differences["B"]["good"].high < 0 and differences["A"]["same"].contains(0.0)
    table = "\n".join(difference_table(results, differences))
    assert "| `good` | **10.0 [" in table and "| `same` | 0.0 [" in table
    lines = "\n".join(reading(differences, {}, {}, "step"))
    assert "- A: above `step`: `good` (10 [" in lines
    assert "- B: nothing beats `step`; below: `good`." in lines
    assert "`same`" not in lines.split("## Reading")[1].split("- A:")[1]  # within noise: not named


def test_across_tasks_sides_of_one_half_and_single_runs():
    improvements = {"up": Estimate(0.8, 0.6, 0.95), "down": Estimate(0.2, 0.05, 0.4),
                    "noise": Estimate(0.55, 0.3, 0.8), "lonely": Estimate(0.7, NAN, NAN)}
    text = "\n".join(reading({}, improvements, {"step": Estimate(1.0, 0.9, 1.1),
                                                "up": Estimate(1.2, 1.0, 1.4)}, "step"))
    assert "P(entry > `step`) is above 0.5 for `up` (0.80 [0.60, 0.95])." in text.replace("\n", " ")
    assert "Below 0.5 (worse than `step`): `down`" in text
    assert "Not distinguishable from `step`: `noise`" in text
    assert "No interval yet (a task with a single run): `lonely` (0.70, no CI)." in text
    assert ("Highest IQM of normalised scores (among entries with runs on every task): `up` (1.20 "
            "[1.00, 1.40]), against `step`") in text
    # Nothing above 0.5: said plainly; a bitwise twin tied with step is not "highest".
    text = "\n".join(reading({}, {"twin": Estimate(0.5, 0.3, 0.7)},
                             {"step": Estimate(1.0, 0.9, 1.1), "twin": Estimate(1.0, 0.9, 1.1)}, "step"))
    assert "no entry beats `step`" in text and "every task): `step`" in text
    undetermined = {"T": {"x": Estimate(1.0, NAN, NAN)}}
    assert "- T: no intervals yet" in "\n".join(reading(undetermined, {}, {}, "step"))


def test_a_half_run_grid_says_how_many_entries_each_claim_rests_on():
    differences = {"A": {"x": Estimate(1.0, -1.0, 3.0), "y": Estimate(-5.0, -8.0, -2.0)},
                   "B": {"x": Estimate(1.0, -1.0, 3.0)}}
    text = "\n".join(reading(differences, {}, {"step": Estimate(1.0, 0.9, 1.1)}, "step",
                             entries_besides_step=2))
    assert "- A: nothing beats `step`; below: `y`." in text
    assert "- B (1 of 2 entries so far): nothing beats `step`." in text
    # Only `step` has runs on every task: there is no "highest IQM" to name yet.
    assert "no entry besides `step` has runs on every task yet" in text
    assert "(among entries with runs on every task): `step`" not in text
    # A grid of step alone (or a caller that does not say) keeps the plain wording.
    text = "\n".join(reading(differences, {}, {"step": Estimate(1.0, 0.9, 1.1)}, "step"))
    assert "- B: nothing beats `step`." in text and "every task): `step` (1.00" in text


def test_a_grid_with_runs_on_some_tasks_says_so_in_its_across_tasks_lines():
    improvements = {"x": Estimate(0.4, 0.2, 0.6)}
    iqms = {"step": Estimate(1.0, 0.9, 1.1), "x": Estimate(1.2, 0.9, 1.4)}
    text = "\n".join(reading({}, improvements, iqms, "step", tasks_so_far=(1, 3)))
    assert "- Across the 1 of 3 tasks with runs so far (each entry over the tasks it has runs on), " \
           "no entry beats `step`" in text
    assert "(among entries with runs on every task so far (1 of 3)): `x`" in text
    text = "\n".join(reading({}, improvements, iqms, "step", tasks_so_far=(3, 3)))
    assert "- Across tasks (each entry" in text and "on every task): `x`" in text
