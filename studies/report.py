"""`klip study report` and `export`: everything is read from the storage, so any machine can report."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from klip.shapes import CoefficientShape, get_shape_class, save_shape, shape_from_dict
from klip.studies.attributes import ATTR_RUN_OPTIONS, ranked_trials, trial_curves, trial_results
from klip.studies.files import write_text_atomically, writing
from klip.studies.objective import continued_trial
from klip.studies.run import (
    ATTR_CONFIG,
    ATTR_IDENTITY,
    ATTR_INSTANCES_SAVED,
    ATTR_PARTIAL,
    ATTR_SHAPE,
    references_from_study,
    summarise,
)
from klip.studies.settings import StudyError
from klip.studies.storage import StorageError, StorageSpec, open_storage, quiet_optuna
from klip.studies.training import process_seconds_of_files


def load_existing_study(name: str, storage: StorageSpec) -> optuna.Study:
    quiet_optuna()
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage, retry_stale=False))
    except KeyError:
        raise StudyError(f"no study named {name!r} in {storage.describe()}") from None
    except StorageError:
        raise
    except Exception as error:  # the database driver's own errors
        first = str(error).strip().splitlines()[0]
        raise StorageError(f"cannot read {storage.describe()}: {first}") from None


def per_task_scores(trial: FrozenTrial) -> dict[str, dict[str, float]]:
    """Mean raw and normalised score per task over the instances the trial evaluated."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for result in trial_results(trial).values():
        if result.get("complete", True):
            by_task.setdefault(result["task"], []).append(result)
    return {task: {"score": float(np.mean([r["score"] for r in rows])),
                   "normalised": float(np.mean([r["normalised"] for r in rows])),
                   "instances": len(rows)}
            for task, rows in sorted(by_task.items())}


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best COMPLETE trial that evaluated every instance (a partial mean is not a fair best)."""
    ranked = ranked_trials(study)
    if not ranked:
        raise StudyError(f"study {study.study_name!r} has no complete trial yet")
    return ranked[0]


def generation_of(trial: FrozenTrial) -> int | None:
    """The generation an evolutionary sampler (CMA-ES and its variants) drew `trial` from."""
    for key, value in trial.system_attrs.items():
        if key.endswith(":generation"):
            return int(value)
    return None


def generations(study: optuna.Study) -> list[dict[str, Any]]:
    """Per generation of an evolutionary sampler: its complete trials, their mean and best value
    (empty for other samplers). How the search moves, beside the history plot's running best."""
    values: dict[int, list[float]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        generation = generation_of(trial)
        if generation is not None and trial.value is not None and math.isfinite(trial.value):
            values.setdefault(generation, []).append(trial.value)
    return [{"generation": generation, "complete": len(found), "mean": float(np.mean(found)),
             "max": max(found)} for generation, found in sorted(values.items())]


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    trials = study.get_trials(deepcopy=False)
    params = sorted({name for trial in trials for name in trial.params})
    tasks = study.user_attrs.get(ATTR_IDENTITY, {}).get("tasks", [])
    rows = []
    for trial in trials:
        scores = per_task_scores(trial)
        duration = trial.duration.total_seconds() if trial.duration else None
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name,
                               "value": trial.value, "partial": bool(trial.user_attrs.get(ATTR_PARTIAL)),
                               "instances_saved": trial.user_attrs.get(ATTR_INSTANCES_SAVED, 0),
                               "continues": continued_trial(trial),
                               "generation": generation_of(trial),
                               "seconds": None if duration is None else round(duration, 1)}
        row.update({name: trial.params.get(name) for name in params})
        row.update({f"{task} normalised": scores.get(task, {}).get("normalised") for task in tasks})
        rows.append(row)
    return rows


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_tables(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    columns = list(rows[0]) if rows else ["number"]
    csv_path, md_path = out / "trials.csv", out / "trials.md"
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(csv_path, table.getvalue())  # never a truncated table on a full disk
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row[c]) for c in columns) + " |" for row in rows]
    write_text_atomically(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def importances(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Parameter importances by Optuna's default evaluator (PED-ANOVA) and, if installed, fANOVA."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    results: dict[str, dict[str, float]] = {}
    evaluators: list[tuple[str, Any]] = [("PED-ANOVA (Optuna 5 default)", PedAnovaImportanceEvaluator())]
    try:
        import sklearn  # noqa: F401
        from optuna.importance import FanovaImportanceEvaluator

        evaluators.append(("fANOVA", FanovaImportanceEvaluator(seed=0)))
    except ImportError:
        pass
    for name, evaluator in evaluators:
        try:
            results[name] = dict(get_param_importances(study, evaluator=evaluator))
        except (ValueError, RuntimeError) as error:
            results[name] = {"error": str(error).splitlines()[0]}  # type: ignore[dict-item]
    return results


def _plots(study: optuna.Study, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    params = {name for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              for name in trial.params}
    makers: list[tuple[str, Any]] = [("history", optuna_plots.plot_optimization_history)]
    if params:
        makers.append(("slice", optuna_plots.plot_slice))
    if len(params) >= 2:
        makers.append(("contour", optuna_plots.plot_contour))
    for name, maker in makers:
        try:
            axes = maker(study)
        except (ValueError, RuntimeError):
            continue
        figure = np.ravel(axes)[0].figure if isinstance(axes, np.ndarray) else axes.figure
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def training_cost(study: optuna.Study) -> dict[str, float] | None:
    """Process-hours of every run in the study's directory, finished or stopped (a stopped run's
    summary counts its time up to the stop; a continued run's time is cumulative): each run's
    wall-clock seconds, a population's split among its agents. None where the directory is not
    on this machine (the storage holds no timings)."""
    study_dir = study.user_attrs.get(ATTR_RUN_OPTIONS, {}).get("study_dir")
    if study_dir is None or not Path(study_dir).is_dir():
        return None
    seconds, runs = process_seconds_of_files(Path(study_dir).glob("trial-*/*/summary.json"))
    return {"process_hours": seconds / 3600, "runs": runs}


def plot_generations(study: optuna.Study, out: Path) -> Path | None:
    """Each complete trial's value by the generation it was drawn from, each generation's mean
    and the best so far: whether an evolutionary search is still improving. None without
    generations (samplers other than CMA-ES)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(generation_of(trial), trial.value)
              for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if generation_of(trial) is not None and trial.value is not None and math.isfinite(trial.value)]
    if not points:
        return None
    found, values = (np.array(column, dtype=float) for column in zip(*points, strict=True))
    summary = generations(study)
    numbers = [row["generation"] for row in summary]
    # Optuna's plots (drawn before, in this process) switch matplotlib to its own style.
    with plt.style.context("default"):
        figure, axis = plt.subplots(figsize=(6, 4), layout="constrained")
        # Spread a generation's points sideways, the same way on every run of the report.
        spread = np.random.default_rng(0).uniform(-0.15, 0.15, size=len(found))
        axis.scatter(found + spread, values, s=14, alpha=0.5, color="C0", label="a complete trial")
        axis.plot(numbers, [row["mean"] for row in summary], "o-", color="C1", label="generation mean")
        axis.step(numbers, np.maximum.accumulate([row["max"] for row in summary]), where="post", color="C2",
                  label="best so far")
        axis.axhline(1.0, color="black", linestyle="--", linewidth=1, label="step (PPO-Clip) = 1")
        axis.set_xticks(numbers)
        axis.set_xlabel("generation")
        axis.set_ylabel("objective (mean normalised score)")
        axis.legend(fontsize=8)
        path = out / "generations.png"
        figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _learning_curves(study: optuna.Study, trial: FrozenTrial, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = trial_results(trial)
    study_dir = study.user_attrs.get(ATTR_RUN_OPTIONS, {}).get("study_dir")
    curves = trial_curves(trial, None if study_dir is None else Path(study_dir))
    if not curves:
        return None
    tasks = sorted({results[name]["task"] for name in curves if name in results})
    references = references_from_study(study)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for name, curve in sorted(curves.items()):
            if name in results and results[name]["task"] == task and curve:
                frames, returns = zip(*curve, strict=True)
                axis.plot(frames, returns, label=f"trial {trial.number} {name.split('/')[-1]}")
        if task in references:
            # The references are final scores (last 10% of the budget), drawn as levels.
            axis.axhline(references[task].step_score, color="k", linestyle="--", label="step (PPO-Clip)")
            axis.axhline(references[task].random_score, color="grey", linestyle=":", label="random policy")
        axis.set_title(task)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("recent episode return")
        axis.legend(fontsize=7)
    path = out / "learning_curves.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def _best_gate(shape: CoefficientShape, out: Path) -> Path:
    from klip.algos.plots import plot_shapes

    return plot_shapes([shape, get_shape_class("step")()], out / "best_gate.png")


def write_report(study: optuna.Study, out: Path) -> list[str]:
    """Write the report files into `out`; return the lines to print. A full disk or a read-only
    directory is one line naming the path."""
    with writing(out):
        return _write_report(study, out)


def _write_report(study: optuna.Study, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    best = best_trial(study)
    outcome = summarise(study)
    lines = [f"study {study.study_name}: {outcome.finished} finished trials "
             f"({outcome.pruned} pruned on the learning curve, {outcome.partial} partial by wilcoxon; "
             f"{outcome.instances_saved:.1f} (task, seed) instances saved)",
             f"best trial {best.number}: value {best.value:.4f}",
             "best parameters: " + ", ".join(f"{k}={v:.6g}" for k, v in best.params.items())]
    for task, scores in per_task_scores(best).items():
        lines.append(f"  {task}: normalised {scores['normalised']:.3f}, return {scores['score']:.1f} "
                     f"({scores['instances']} seeds)")
    by_generation = generations(study)
    if by_generation:
        lines.append("by generation (complete trials, mean and best value): " + "; ".join(
            f"{g['generation']}: {g['complete']}, {g['mean']:.3f}, {g['max']:.3f}" for g in by_generation))
    cost = training_cost(study)
    if cost is not None:
        lines.append(f"training cost: {cost['process_hours']:,.1f} process-hours over {cost['runs']} runs "
                     "(one-thread processes' wall-clock time, a population's split among its agents)")
    csv_path, md_path = write_tables(trial_rows(study), out)
    lines.append(f"trial table: {csv_path}, {md_path}")
    found = importances(study)
    write_text_atomically(out / "importances.json", json.dumps(found, indent=2) + "\n")
    for evaluator, values in found.items():
        text = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())
        lines.append(f"importances ({evaluator}): {text}")
    for path in _plots(study, out):
        lines.append(f"plot: {path}")
    by_generation_plot = plot_generations(study, out)
    if by_generation_plot is not None:
        lines.append(f"plot: {by_generation_plot}")
    curves = _learning_curves(study, best, out)
    if curves is not None:
        lines.append(f"learning curves of the best trial: {curves}")
    shape = shape_from_dict(best.user_attrs[ATTR_SHAPE])
    shape_path = save_shape(shape, out / "best_shape.json")
    lines.append(f"best shape: {shape_path} (klip train --shape-file {shape_path})")
    gate_path = _best_gate(shape, out)
    lines.append(f"the best gate beside PPO-Clip's: {gate_path}")
    summary = {"study": study.study_name, "best_trial": best.number, "best_value": best.value,
               "best_params": best.params, "per_task": per_task_scores(best),
               "finished": outcome.finished, "pruned": outcome.pruned, "partial": outcome.partial,
               "instances_saved": outcome.instances_saved, "generations": by_generation,
               "training_cost": cost, "command": study.user_attrs.get("klip_command")}
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return lines


def export_trial(study: optuna.Study, out: Path, number: int | None = None) -> tuple[Path, Path, list[str]]:
    """A trial's shape JSON and a config YAML that `klip train --config` takes."""
    if number is None:
        trial = best_trial(study)
    else:
        matching = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not matching:
            raise StudyError(f"study {study.study_name!r} has no trial {number}")
        trial = matching[0]
    if ATTR_SHAPE not in trial.user_attrs or ATTR_CONFIG not in trial.user_attrs:
        raise StudyError(f"trial {trial.number} recorded no shape (it failed before training)")
    out.mkdir(parents=True, exist_ok=True)
    shape = shape_from_dict(trial.user_attrs[ATTR_SHAPE])
    shape_path = save_shape(shape, out / f"trial-{trial.number}-shape.json")
    tasks = list(study.user_attrs.get(ATTR_IDENTITY, {}).get("tasks", []))
    config = {**trial.user_attrs[ATTR_CONFIG], "shape_file": str(shape_path)}
    config.setdefault("task", tasks[0] if tasks else "Hopper-v4")
    config["seed"] = 0
    config_path = out / f"trial-{trial.number}-config.yaml"
    write_text_atomically(config_path, yaml.safe_dump(config, sort_keys=False))
    return shape_path, config_path, tasks


__all__ = ["best_trial", "export_trial", "importances", "load_existing_study", "per_task_scores",
           "trial_rows", "write_report"]
