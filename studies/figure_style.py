"""One look per comparison entry, the same in every figure of a report, and one legend per figure.

Matplotlib's default cycle has ten colours, so a grid of fifteen entries (the zoo) drew
`step` and a sixth entry in the same blue. Here the reference (`step`) is black; up to ten
other entries take tab10; more take tab20's dark half and then its light half, dashed, so no
two entries look alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

REFERENCE_STYLE = {"color": "black", "linestyle": "-"}


def entry_styles(labels: Sequence[str], reference: str | None = None) -> dict[str, dict[str, Any]]:
    """`label -> {color, linestyle}` for `plot`; `fill_between` takes the `color`."""
    others = [label for label in labels if label != reference]
    if len(others) <= 10:
        palette = [(color, "-") for color in matplotlib.colormaps["tab10"].colors]
    else:
        tab20 = matplotlib.colormaps["tab20"].colors
        palette = [(color, "-") for color in tab20[0::2]] + [(color, "--") for color in tab20[1::2]]
    styles = {}
    for index, label in enumerate(others):
        color, linestyle = palette[index % len(palette)]
        styles[label] = {"color": color, "linestyle": linestyle}
    if reference is not None and reference in labels:
        styles[reference] = dict(REFERENCE_STYLE)
    return styles


def grid_styles(entries: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """`entry_styles` of a comparison grid's entries, its `step` entry the reference."""
    step = next((entry.label for entry in entries if entry.is_step), None)
    return entry_styles([entry.label for entry in entries], step)


def shared_legend(figure: Any, axes: Sequence[Any], used: int, fontsize: float = 8) -> None:
    """One legend for the whole figure, from every panel's labelled lines (first seen first):
    in the first unused panel when there is one, else below the panels."""
    handles: dict[str, Any] = {}
    for axis in axes[:used]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if not handles:
        return
    if used < len(axes):
        spare = axes[used]
        spare.set_visible(True)
        spare.axis("off")
        spare.legend(list(handles.values()), list(handles), loc="center", fontsize=fontsize)
        return
    figure.legend(list(handles.values()), list(handles), loc="outside lower center",
                  ncols=min(5, len(handles)), fontsize=fontsize)


__all__ = ["REFERENCE_STYLE", "entry_styles", "grid_styles", "shared_legend"]
