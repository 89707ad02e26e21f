"""Trials per hour of `klip study run` with 1 and with 2 local workers on a small budget
(and, with `--batch K`, with one worker training K trials at a time as one population).

    .venv/bin/python benchmarks/study_throughput.py --trials 8 --steps 8192 --out benchmarks/results
    .venv/bin/python benchmarks/study_throughput.py --trials 8 --steps 8192 --batch 4 --out DIR

Run it with another checkout's interpreter (`/path/.venv/bin/python benchmarks/...`) to time
that checkout's klip: the trials run as `sys.executable -m klip`.

Each configuration runs a fresh study in a temporary directory (SQLite storage, one
torch thread per worker, no pruning so every trial costs the same). References are
computed first, outside the timing. Trials/hour counts finished trials over the wall
time from the first trial's start to the last trial's end (worker start-up excluded,
reported separately). The machine's load average is recorded with the numbers: on a
shared machine the speed-up mostly measures the other users.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

TRAIN_FLAGS = ["--rollout-steps", "512", "--minibatch-size", "64", "--epochs", "4", "--lr", "1e-3",
               "--checkpoint-every", "100"]


def run(workers: int, trials: int, steps: int, task: str, cache: Path, batch: int = 1) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="klip-bench-") as directory:
        command = [sys.executable, "-m", "klip", "study", "run", "--shape", "sigmoid", "--tasks", task,
                   "--steps-per-task", str(steps), "--seeds", "0", "--trials", str(trials),
                   "--study-name", "bench", "--pruner", "none", "--sampler", "random",
                   "--sampler-seed", "0", "--workers", str(workers), "--no-progress", *TRAIN_FLAGS,
                   *(["--batch", str(batch)] if batch > 1 else [])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "KLIP_REFERENCE_CACHE": str(cache)}
        started = time.perf_counter()
        subprocess.run(command, cwd=directory, env=env, check=True, capture_output=True)
        total = time.perf_counter() - started
        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{directory}/klip-studies.db")
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        first = min(t.datetime_start for t in done)
        last = max(t.datetime_complete for t in done)
        span = (last - first).total_seconds()
        return {"workers": workers, "batch": batch, "trials": len(done), "trial_span_s": span,
                "command_s": total,
                "trials_per_hour": len(done) / span * 3600,
                "mean_trial_s": sum(t.duration.total_seconds() for t in done) / len(done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--task", default="Hopper-v4")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--batch", type=int, default=1, help="also time one worker with --batch K")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="klip-bench-refs-")) / "references.json"
    # References first (one run each), so both timings measure trials only.
    subprocess.run([sys.executable, "-m", "klip", "study", "reference", "--tasks", args.task, "--steps",
                    str(args.steps), "--seeds", "0", *TRAIN_FLAGS], check=True, capture_output=True,
                   env={**os.environ, "KLIP_REFERENCE_CACHE": str(cache)})
    load_before = os.getloadavg()
    results = [run(workers, args.trials, args.steps, args.task, cache) for workers in (1, 2)]
    if args.batch > 1:
        results.append(run(1, args.trials, args.steps, args.task, cache, batch=args.batch))
    record = {
        "benchmark": "study_throughput", "task": args.task, "steps_per_trial": args.steps,
        "trials": args.trials, "results": results,
        "speedup_2_workers": results[1]["trials_per_hour"] / results[0]["trials_per_hour"],
        "cpu_count": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": platform.platform(), "python": platform.python_version(),
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"study_throughput_{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for result in results:
        batch = f", --batch {result['batch']}" if result["batch"] > 1 else ""
        print(f"{result['workers']} worker(s){batch}: {result['trials_per_hour']:.0f} trials/hour "
              f"({result['trials']} trials, {result['mean_trial_s']:.1f} s each)")
    print(f"speed-up with 2 workers: {record['speedup_2_workers']:.2f}x "
          f"(load average before {load_before[0]:.1f} on {os.cpu_count()} cores); written to {path}")


if __name__ == "__main__":
    main()
