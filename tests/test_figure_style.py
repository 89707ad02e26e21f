"""Every entry of a comparison figure looks unlike every other, and alike in every figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from klip.studies.figure_style import REFERENCE_STYLE, entry_styles, shared_legend

ZOO = ["step", "sigmoid", "linear_ramp", "annealed_clip", "clip_higher", "rollback", "spo", "dpo",
       "truncate", "tr_ppo", "tr_ppo_rb", "trgppo_gaussian", "none", "study-sigmoid-2task",
       "study-learned-3task"]


def test_fifteen_entries_get_fifteen_looks_and_step_is_black() -> None:
    styles = entry_styles(ZOO, "step")
    looks = {(tuple(style["color"]) if not isinstance(style["color"], str) else style["color"],
              style["linestyle"]) for style in styles.values()}
    assert len(looks) == len(ZOO)
    assert styles["step"] == REFERENCE_STYLE
    # A look depends on the entry's place in the grid's list: each figure of a report passes
    # the whole list, even when some entries have nothing to draw yet.
    assert entry_styles(ZOO, "step") == styles


def test_few_entries_take_the_default_palette_with_solid_lines() -> None:
    styles = entry_styles(["step", "clip", "kl_fixed"], "step")
    assert styles["clip"]["color"] == matplotlib.colormaps["tab10"].colors[0]
    assert {style["linestyle"] for style in styles.values()} == {"-"}


def test_one_legend_goes_into_the_spare_panel_or_below_the_figure() -> None:
    figure, axes = plt.subplots(2, 3, layout="constrained")
    for axis in axes.flat[:5]:
        axis.plot([0, 1], [0, 1], label="step")
        axis.plot([0, 1], [1, 0], label="spo")
    axes.flat[5].set_visible(False)
    shared_legend(figure, list(axes.flat), 5)
    spare = axes.flat[5]
    assert spare.get_visible() and [t.get_text() for t in spare.get_legend().get_texts()] == ["step", "spo"]
    assert not figure.legends
    plt.close(figure)
    figure, axes = plt.subplots(1, 2, layout="constrained")
    for axis in axes.flat:
        axis.plot([0, 1], [0, 1], label="step")
    shared_legend(figure, list(axes.flat), 2)
    assert len(figure.legends) == 1 and [t.get_text() for t in figure.legends[0].get_texts()] == ["step"]
    plt.close(figure)
