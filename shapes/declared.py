# ruff: noqa: E501
"""The built-in shapes' declarations, for checks without torch (`klip.shapes.catalog`).

Generated from the registry by `scripts/generate_docs.py`; do not edit. The parameters'
help texts are left out (`klip shapes show NAME` prints them).
"""

from __future__ import annotations

from klip.shapes.catalog import ShapeDeclaration
from klip.shapes.params import Param

BUILTIN_SHAPES: dict[str, ShapeDeclaration] = {
    'annealed_clip': ShapeDeclaration(
        params={
            'eps_start': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
            'eps_end': Param(0.1, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.01, 0.4)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'clip_higher': ShapeDeclaration(
        params={
            'eps_low': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
            'eps_high': Param(0.28, low=0.0, low_inclusive=False, search=(0.05, 0.6)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'dpo': ShapeDeclaration(
        params={
            'alpha': Param(2.0, low=0.0, low_inclusive=False, search=(0.1, 10.0), log=True),
            'beta': Param(0.6, low=0.0, low_inclusive=False, search=(0.05, 5.0), log=True),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'learned': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'learned_increments': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
            'pos_base': Param(0.0, low=-10.0, high=10.0, search=(-1.0, 0.0)),
            'pos_jump': Param(1.0, low=0.0, high=10.0, search=(0.0, 1.5)),
            'pos_inc0': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'pos_inc1': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'pos_inc2': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'pos_inc3': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'pos_inc4': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'pos_inc5': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'pos_inc6': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'pos_inc7': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_base': Param(0.0, low=-10.0, high=10.0, search=(-1.0, 0.0)),
            'neg_jump': Param(1.0, low=0.0, high=10.0, search=(0.0, 1.5)),
            'neg_inc0': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_inc1': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_inc2': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_inc3': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_inc4': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_inc5': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_inc6': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'neg_inc7': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'learned_increments_epoch': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
            'early_pos_base': Param(0.0, low=-10.0, high=10.0, search=(-1.0, 0.0)),
            'early_pos_jump': Param(1.0, low=0.0, high=10.0, search=(0.0, 1.5)),
            'early_pos_inc0': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_pos_inc1': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_pos_inc2': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_pos_inc3': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_pos_inc4': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_pos_inc5': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_pos_inc6': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_pos_inc7': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_base': Param(0.0, low=-10.0, high=10.0, search=(-1.0, 0.0)),
            'early_neg_jump': Param(1.0, low=0.0, high=10.0, search=(0.0, 1.5)),
            'early_neg_inc0': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_inc1': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_inc2': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_inc3': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_inc4': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_inc5': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_inc6': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'early_neg_inc7': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_base': Param(0.0, low=-10.0, high=10.0, search=(-1.0, 0.0)),
            'late_pos_jump': Param(1.0, low=0.0, high=10.0, search=(0.0, 1.5)),
            'late_pos_inc0': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_inc1': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_inc2': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_inc3': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_inc4': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_inc5': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_inc6': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_pos_inc7': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_base': Param(0.0, low=-10.0, high=10.0, search=(-1.0, 0.0)),
            'late_neg_jump': Param(1.0, low=0.0, high=10.0, search=(0.0, 1.5)),
            'late_neg_inc0': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_inc1': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_inc2': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_inc3': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_inc4': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_inc5': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_inc6': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
            'late_neg_inc7': Param(0.0, low=0.0, high=10.0, search=(0.0, 0.5)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'linear_ramp': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
            'delta': Param(0.1, low=0.0, low_inclusive=False, search=(0.001, 2.0), log=True),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'none': ShapeDeclaration(
        params={
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'rollback': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
            'alpha': Param(0.3, low=0.0, search=(0.0, 1.0)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'sigmoid': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
            'tau': Param(0.05, low=0.0, low_inclusive=False, search=(0.001, 0.5), log=True),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'spo': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'step': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False, search=(0.05, 0.4)),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'tr_ppo': ShapeDeclaration(
        params={
            'delta': Param(0.035, low=0.0, low_inclusive=False, search=(0.005, 0.2), log=True),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'tr_ppo_rb': ShapeDeclaration(
        params={
            'delta': Param(0.03, low=0.0, low_inclusive=False, search=(0.005, 0.2), log=True),
            'alpha': Param(5.0, low=0.0, search=(0.1, 20.0), log=True),
        },
        action_spaces=('continuous', 'discrete'),
    ),
    'trgppo': ShapeDeclaration(
        params={
            'delta': Param(0.001, low=0.0, low_inclusive=False, search=(0.0005, 0.05), log=True),
        },
        action_spaces=('discrete',),
    ),
    'trgppo_gaussian': ShapeDeclaration(
        params={
            'eps': Param(0.2, low=0.0, low_inclusive=False, search=(0.05, 0.4)),
        },
        action_spaces=('continuous',),
    ),
    'truncate': ShapeDeclaration(
        params={
            'eps_low': Param(1.0, low=0.0, high=1.0, search=(0.05, 1.0)),
            'eps_high': Param(0.2, low=0.0, low_inclusive=False, search=(0.05, 2.0), log=True),
        },
        action_spaces=('continuous', 'discrete'),
    ),
}
