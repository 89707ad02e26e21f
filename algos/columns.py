"""What every column of `metrics.csv` (and the other run files) means: the one place the
docs table (docs/metrics.md, by scripts/generate_docs.py) and the tests read."""

from __future__ import annotations

# One row per PPO iteration. `train/*` are means over the iteration's minibatches unless
# said otherwise; which of them appear depends on the loss.
METRICS_COLUMNS: dict[str, str] = {
    "step": "Lightning's logging step: equal to `frames`",
    "iteration": "PPO iteration, counted from 1 over the whole run (resumes included)",
    "frames": "environment steps (all sub-environments) done when the iteration ended",
    "lr": "learning rate used by this iteration's updates",
    "episodes": "episodes that ended during this iteration",
    "episode/return_mean": "mean raw return of the episodes that ended in this iteration",
    "episode/length_mean": "mean length of the episodes that ended in this iteration",
    "episode/return_recent": "mean raw return of the last 20 episodes of the run",
    "rollout/reward_mean": "mean reward per step of this iteration's rollout (after reward scaling)",
    "time/collect_s": "seconds spent collecting the rollout",
    "time/advantage_s": "seconds spent computing GAE",
    "time/update_s": "seconds spent in the epochs of minibatch updates",
    "time/steps_per_s": "environment steps per second over the whole iteration",
    "train/loss_objective": "policy loss (negated surrogate)",
    "train/loss_critic": "critic loss, already multiplied by critic_coeff",
    "train/loss_entropy": "entropy loss (-entropy_coeff * entropy); only when entropy_coeff > 0",
    "train/grad_norm": "global gradient norm before clipping to max_grad_norm",
    "train/entropy": "policy entropy, computed once over the rollout",
    "train/explained_variance": "1 - Var(target - value) / Var(target) over the rollout",
    "train/value_clip_fraction": "fraction of samples whose value prediction was clipped",
    "train/kl_approx": "approximate KL(old || new) estimated from the log-ratio",
    "train/clip_fraction": ("fraction of samples whose ratio lies outside [1-eps, 1+eps], eps the "
                            "shape's `eps`; 0.2 for a shape without one, whatever its own band "
                            "(clip_higher's, annealed_clip's)"),
    "train/fraction_in": "--loss klip: fraction of samples inside [1-eps, 1+eps] (eps as for clip_fraction)",
    "train/fraction_kill": "--loss klip: fraction past the band on the side their advantage pushes to",
    "train/fraction_pass": "--loss klip: fraction past the band on the other side",
    "train/fraction_changed": "--loss klip: fraction of samples whose gate is not 0",
    "train/gate_mean": "--loss klip: mean gate g",
    "train/beta_abs_kill_mean": "--loss klip: mean |beta| = |w A g| over the kill region",
    "train/kl_k3": "--loss klip: k3 estimate of KL, mean of (w - 1) - log w",
    "train/ESS": "--loss clip: effective sample size of the importance weights (TorchRL)",
    "train/max_ratio": "--loss clip: largest ratio w of the minibatch (TorchRL)",
    "train/mean_ratio": "--loss clip: mean ratio w (TorchRL)",
    "train/kl": "--loss kl_*: analytic KL (old || new, or new || old with kl_direction new_old), "
                "mean over the update's minibatches",
    "train/kl_final": "--loss kl_adaptive (kl_measure final): the same KL of the updated policy "
                      "over the whole rollout, what beta adapts to",
    "train/beta": "--loss kl_*: the scalar KL coefficient used",
}

EPISODES_COLUMNS: dict[str, str] = {
    "end_frame": "environment steps done (all sub-environments) when the episode ended",
    "return": "raw (unnormalised) return of the episode",
}

EVALUATIONS_COLUMNS: dict[str, str] = {
    "iteration": "iteration after which the policy was evaluated (--eval-every)",
    "frames": "environment steps done at that point",
    "return_mean": "mean deterministic return (normalisation frozen, the same seeds each time)",
    "return_std": "standard deviation of those returns",
    "episodes": "episodes evaluated",
}


def _table(columns: dict[str, str]) -> list[str]:
    rows = [f"| `{name}` | {text} |" for name, text in columns.items()]
    return ["| column | meaning |", "|---|---|", *rows]


def metrics_markdown() -> str:
    lines = [
        "# Run outputs",
        "",
        "Generated from `klip.algos.columns` by `scripts/generate_docs.py`; do not edit.",
        "",
        "## metrics.csv (one row per PPO iteration)",
        "",
        *_table(METRICS_COLUMNS),
        "",
        "## episodes.csv (one row per finished training episode)",
        "",
        *_table(EPISODES_COLUMNS),
        "",
        "## evaluations.csv (one row per --eval-every evaluation)",
        "",
        *_table(EVALUATIONS_COLUMNS),
    ]
    return "\n".join(lines) + "\n"


__all__ = ["EPISODES_COLUMNS", "EVALUATIONS_COLUMNS", "METRICS_COLUMNS", "metrics_markdown"]
