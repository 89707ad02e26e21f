"""Optuna studies across tasks (not built yet: see the issues). Nothing imports this package."""
