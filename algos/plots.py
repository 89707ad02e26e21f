"""Pictures: a run's learning curve, and gates against the ratio."""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from klip.shapes import CoefficientShape
from klip.shapes.base import CONTEXT_VARIABLES


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


# What a drawing of g(w, A) gives the shapes that read more than (w, A): the first epoch of the
# inner loop; a per-sample KL estimated from the ratio itself, (w - 1) - log w; an action of
# probability 1/2 (discrete) or at the rollout policy's mean (Gaussian).
PLOT_CONTEXT = "epoch 0; kl = (w-1) - log w; p_old(a) = 1/2; a at the old mean"


def drawn_gate(shape: CoefficientShape, ratio: Tensor, advantage: Tensor) -> Tensor:
    """`shape.gate(ratio, advantage)` with the context a drawing gives it (`PLOT_CONTEXT`)."""
    context = {"epoch_progress": 0.0, "kl": (ratio - 1) - ratio.log(),
               "old_log_prob": torch.full_like(ratio, math.log(0.5)),
               "old_action_z": torch.zeros(*ratio.shape, 1, dtype=ratio.dtype)}
    wanted = {key: value for key, value in context.items() if key in shape.context}
    with shape.using_context(check=False, **wanted) if wanted else contextlib.nullcontext(), torch.no_grad():
        return shape.gate(ratio, advantage)


# Longer parameter lists (a learned gate's vector) would push the legend off the figure.
LABEL_PARAMETERS_MAX = 60


def _label(shape: CoefficientShape) -> str:
    parameters = shape.extra_repr()
    if len(parameters) > LABEL_PARAMETERS_MAX:
        parameters = f"{len(shape.hparams)} parameters"
    return f"{shape.display_name()}({parameters})"


def plot_shapes(shapes: Sequence[CoefficientShape], out: Path, ratio_max: float = 2.0) -> Path:
    """Gate and effective advantage `A*(1-g)` against the ratio, for A = +1 and A = -1."""
    ratio = torch.linspace(1e-3, ratio_max, 2001, dtype=torch.float64)
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for column, sign in enumerate((1.0, -1.0)):
        advantage = torch.full_like(ratio, sign)
        for index, shape in enumerate(shapes):
            gate = drawn_gate(shape, ratio, advantage)
            style = {"label": _label(shape),
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


def _band(shape: CoefficientShape) -> tuple[float, float] | None:
    """The trust band `[1-eps_low, 1+eps_high]` a shape's parameters name, if any."""
    if hasattr(shape, "eps"):
        return 1 - shape.eps, 1 + shape.eps
    if hasattr(shape, "eps_low") and hasattr(shape, "eps_high"):
        return 1 - shape.eps_low, 1 + shape.eps_high
    if hasattr(shape, "eps_start"):
        return 1 - shape.eps_start, 1 + shape.eps_start
    return None


def plot_gallery(shapes: Sequence[CoefficientShape], out: Path, columns: int = 4,
                 ratio_max: float = 2.0) -> Path:
    """Every shape on the same axes: its gate (top) and effective advantage `A*(1-g)` (bottom).

    One panel pair per shape, A = +1 solid and A = -1 dashed, the same y-limits
    everywhere so shapes compare at a glance (curves leaving them are clipped,
    not rescaled). Conditioned shapes show progress 0 (dark) and 1 (light).
    """
    from matplotlib.lines import Line2D

    ratio = torch.linspace(1e-3, ratio_max, 1001, dtype=torch.float64)
    rows = -(-len(shapes) // columns)
    figure = plt.figure(figsize=(3.6 * columns, 4.4 * rows))
    # One cell per shape, its two axes close together and the cells further apart.
    cells = figure.add_gridspec(rows, columns, hspace=0.32, wspace=0.22)
    colours = {1.0: "tab:blue", -1.0: "tab:red"}
    for index, shape in enumerate(shapes):
        row, column = divmod(index, columns)
        cell = cells[row, column].subgridspec(2, 1, hspace=0.08)
        top = figure.add_subplot(cell[0])
        bottom = figure.add_subplot(cell[1], sharex=top)
        progresses = (0.0, 1.0) if "progress" in shape.context else (None,)
        # Persistent (per-iteration) context, restored after drawing at progress 0 and 1.
        saved = {key: float(getattr(shape, key)) for key in shape.context
                 if CONTEXT_VARIABLES[key].kind == "iteration"}
        for progress in progresses:
            if progress is not None:
                shape.set_context(progress=progress)
            for sign in (1.0, -1.0):
                advantage = torch.full_like(ratio, sign)
                gate = drawn_gate(shape, ratio, advantage)
                style = {"color": colours[sign], "linestyle": "-" if sign > 0 else "--",
                         "alpha": 0.4 if progress == 1.0 else 1.0, "linewidth": 1.8}
                top.plot(ratio, gate, **style)
                bottom.plot(ratio, advantage * (1 - gate), **style)
        shape.set_context(**saved)
        band = _band(shape)
        for axis in (top, bottom):
            if band is not None:
                axis.axvspan(*band, color="grey", alpha=0.15)
            axis.axhline(0.0, color="black", linewidth=0.6)
            axis.grid(alpha=0.3)
            axis.set_xlim(0.0, ratio_max)
        top.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
        top.set_ylim(-1.2, 2.2)
        bottom.set_ylim(-2.2, 2.2)
        top.tick_params(labelbottom=False)
        parameters = shape.extra_repr()
        # A learned gate has dozens of coordinates: its name and their number fit a panel.
        title = (f"{shape.display_name()}({parameters})" if len(parameters) <= 60
                 else f"{shape.display_name()} ({len(shape.hparams)} parameters)")
        if len(progresses) > 1:
            title += "\nprogress 0 dark, 1 light"
        top.set_title(title, fontsize=9)
        if column == 0:
            top.set_ylabel("gate g")
            bottom.set_ylabel("A(1-g)")
        if index + columns >= len(shapes):
            bottom.set_xlabel("ratio w = pi_new / pi_old")
    handles = [Line2D([], [], color=colours[1.0], linestyle="-", label="A = +1"),
               Line2D([], [], color=colours[-1.0], linestyle="--", label="A = -1")]
    figure.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.9, 0.945), ncol=2, fontsize=9)
    figure.suptitle("gate g (top) and effective advantage A(1-g) (bottom) of every registered shape; "
                    f"trust band shaded\nshapes that read more than (w, A) are drawn at {PLOT_CONTEXT}",
                    fontsize=11, x=0.42, y=0.945)
    figure.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return out
