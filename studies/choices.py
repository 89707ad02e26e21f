"""The choices `klip study` offers, importable without Optuna or torch (`klip --help` is fast)."""

from __future__ import annotations

SAMPLERS = ("tpe", "cmaes", "gp", "random", "grid")
PRUNERS = ("auto", "wilcoxon", "median", "hyperband", "none")
DEFAULT_HEARTBEAT_INTERVAL = 30
DEFAULT_GRACE_PERIOD = 120
