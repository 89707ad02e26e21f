"""Pictures: a run's learning curve, and gates against the ratio."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from klip.shapes import CoefficientShape


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    columns: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        columns[key] = np.array([float(row[key]) if row[key] else np.nan for row in rows])
    return columns


def plot_learning_curve(
    episodes: Sequence[tuple[int, float]], metrics_csv: Path, out: Path, title: str
) -> Path:
    """Raw episode returns against env steps, with a moving average, and the policy diagnostics."""
    metrics = read_metrics(metrics_csv) if metrics_csv.is_file() else {}
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                         gridspec_kw={"height_ratios": [2, 1]})
    if episodes:
        frames, returns = np.array(episodes, dtype=float).T
        top.plot(frames, returns, ".", alpha=0.25, markersize=3, label="episode return")
        window = max(1, len(returns) // 50)
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        top.plot(frames[window - 1 :], smooth, lw=2, label=f"moving mean ({window} episodes)")
        top.legend(loc="lower right")
    top.set_ylabel("raw episode return")
    top.set_title(title)
    top.grid(alpha=0.3)
    for key, label in [("train/fraction_kill", "kill fraction"),
                       ("train/fraction_changed", "changed fraction"),
                       ("train/clip_fraction", "outside band"),
                       ("train/kl_k3", "KL (k3)")]:
        if key in metrics and "frames" in metrics:
            bottom.plot(metrics["frames"], metrics[key], label=label)
    bottom.set_xlabel("environment steps")
    bottom.grid(alpha=0.3)
    if bottom.lines:
        bottom.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def plot_shapes(shapes: Sequence[CoefficientShape], out: Path, ratio_max: float = 2.0) -> Path:
    """Gate and effective advantage `A*(1-g)` against the ratio, for A = +1 and A = -1."""
    ratio = torch.linspace(1e-3, ratio_max, 2001, dtype=torch.float64)
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for column, sign in enumerate((1.0, -1.0)):
        advantage = torch.full_like(ratio, sign)
        for index, shape in enumerate(shapes):
            gate = shape.gate(ratio, advantage).detach()
            style = {"label": f"{shape.display_name()}({shape.extra_repr()})",
                     "linestyle": ("-", "--", "-.", ":")[index % 4], "linewidth": 2.2 - 0.3 * (index % 4)}
            axes[0, column].plot(ratio, gate, **style)
            axes[1, column].plot(ratio, advantage * (1 - gate), **style)
        eps_values = {getattr(shape, "eps", None) for shape in shapes} - {None}
        for axis in axes[:, column]:
            for eps in eps_values:
                axis.axvspan(1 - eps, 1 + eps, color="grey", alpha=0.12)
            axis.grid(alpha=0.3)
        axes[0, column].set_title(f"A {'> 0' if sign > 0 else '< 0'} (band [1-eps, 1+eps] shaded)")
        axes[0, column].set_ylabel("gate g")
        axes[1, column].set_ylabel("effective advantage A(1-g)")
        axes[1, column].set_xlabel("ratio w = pi_new / pi_old")
    axes[0, 0].legend(fontsize="small")
    figure.tight_layout()
    # An explicit format: matplotlib would otherwise add ".png" to a path without a suffix.
    figure.savefig(out, dpi=110, format=out.suffix.removeprefix(".") or "png")
    plt.close(figure)
    return out
