"""Shapes: properties of every built-in gate, parameters, registry, plugins, JSON files."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from helpers import make_actor_critic, make_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from klip import shapes
from klip.algos import KLipPPOLoss, klip_objective
from klip.shapes import (
    CoefficientShape,
    LearnedShape,
    available_shapes,
    load_shape,
    load_shapes_from_file,
    make_shape,
    register_shape,
    save_shape,
    signed_distance_past_boundary,
)

# Every registered shape: a new built-in is covered by these tests without editing them.
BUILTIN = available_shapes()
ratios = st.floats(1e-6, 1e6, allow_nan=False)
advantages = st.one_of(st.just(0.0), st.floats(-1e6, 1e6, allow_nan=False))
kls = st.floats(0.0, 10.0, allow_nan=False)
probabilities = st.floats(1e-6, 1.0, allow_nan=False)


def give_context(shape, like, progress=0.5, epoch_progress=0.5, kl=None, old_log_prob=None,
                 old_action_z=None):
    """Every context variable, as the engine passes them (each shape takes the ones it declares).

    Default per-sample values, one per ratio: KLs from 0 to 0.1 (so TR-PPO's trigger is
    both on and off), rollout probabilities from 0.05 to 0.95, and standardised 3-D
    actions from the old mean to 3 scales away.
    """
    count = like.numel()
    if kl is None:
        kl = torch.linspace(0.0, 0.1, count).reshape(like.shape)
    if old_log_prob is None:
        old_log_prob = torch.linspace(0.05, 0.95, count).log().reshape(like.shape)
    if old_action_z is None:
        old_action_z = torch.linspace(0.0, 3.0, count).reshape(*like.shape, 1) * torch.tensor(
            [1.0, -0.5, 0.25])
    shape.set_context(progress=progress, epoch_progress=epoch_progress,
                      kl=torch.as_tensor(kl, dtype=torch.float32),
                      old_log_prob=torch.as_tensor(old_log_prob, dtype=torch.float32),
                      old_action_z=torch.as_tensor(old_action_z, dtype=torch.float32))
    return shape


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("form", ["effective", "kl"])
@settings(max_examples=60, deadline=None)
@given(ratio_values=st.lists(ratios, min_size=1, max_size=16), data=st.data())
def test_finite_loss_and_gradient(name, form, ratio_values, data):
    advantage_values = data.draw(
        st.lists(advantages, min_size=len(ratio_values), max_size=len(ratio_values))
    )
    log_ratio = torch.tensor(ratio_values).log().requires_grad_()
    advantage = torch.tensor(advantage_values)
    shape = make_shape(name)
    size = len(ratio_values)
    give_context(shape, advantage, progress=data.draw(st.floats(0.0, 1.0)),  # ignored by most shapes
                 epoch_progress=data.draw(st.floats(0.0, 0.999)),
                 kl=data.draw(st.lists(kls, min_size=size, max_size=size)),
                 old_log_prob=[math.log(p) for p in data.draw(
                     st.lists(probabilities, min_size=size, max_size=size))])
    objective, gate = klip_objective(shape, log_ratio, advantage, form=form)
    objective.mean().backward()
    assert gate.shape == advantage.shape
    assert torch.isfinite(gate).all()
    assert torch.isfinite(objective).all()
    assert torch.isfinite(log_ratio.grad).all()


@pytest.mark.parametrize("name", BUILTIN)
@settings(max_examples=40, deadline=None)
@given(ratio=ratios, advantage=advantages, progress=st.floats(0.0, 1.0), epoch=st.floats(0.0, 0.999),
       kl=kls, probability=probabilities)
def test_gate_shape_and_range(name, ratio, advantage, progress, epoch, kl, probability):
    shape = make_shape(name)
    give_context(shape, torch.zeros(2), progress, epoch, [kl, kl], [math.log(probability)] * 2)
    gate = shape.gate(torch.tensor([ratio, ratio]), torch.tensor([advantage, -advantage]))
    low, high = shape.gate_bounds()
    assert gate.shape == (2,)
    assert ((gate >= low) & (gate <= high)).all()


# Shapes whose gate only brakes (never rolls back or amplifies): the range test above
# must keep checking [0, 1] for them, so a widened declaration fails here.
BRAKING = ["step", "none", "sigmoid", "linear_ramp", "learned", "clip_higher", "annealed_clip"]


@pytest.mark.parametrize("name", BRAKING)
def test_braking_shapes_declare_the_unit_range(name):
    assert make_shape(name).gate_bounds() == (0.0, 1.0)


@pytest.mark.parametrize("name,width", [("sigmoid", "tau"), ("linear_ramp", "delta")])
@settings(max_examples=100, deadline=None)
@given(ratio=ratios, advantage=st.floats(-1e6, 1e6).filter(lambda a: a != 0))
def test_soft_gates_tend_to_step(name, width, ratio, advantage):
    w, a = torch.tensor([ratio], dtype=torch.float64), torch.tensor([advantage], dtype=torch.float64)
    distance = signed_distance_past_boundary(w, a, 0.2).abs().item()
    if distance < 1e-9:  # on the boundary itself the limit is a matter of convention
        return
    step = make_shape("step").gate(w, a)
    previous_error = math.inf
    for shrink in (1.0, 10.0, 1000.0):
        soft = make_shape(name, **{width: distance / (5 * shrink)}).gate(w, a)
        error = (soft - step).abs().item()
        assert error <= previous_error + 1e-15
        previous_error = error
    assert previous_error < 1e-6


def test_sigmoid_brakes_inside_the_band_as_the_paper_says():
    gate = make_shape("sigmoid", eps=0.2, tau=0.05).gate(torch.tensor([1.1]), torch.tensor([1.0]))
    assert gate.item() == pytest.approx(0.119, abs=1e-3)
    ramp = make_shape("linear_ramp", eps=0.2, delta=0.05).gate(torch.tensor([1.1]), torch.tensor([1.0]))
    assert ramp.item() == 0.0


def test_learned_default_reproduces_step_off_a_thin_ramp():
    ratio = torch.linspace(1e-3, 3.0, 20001, dtype=torch.float64)
    for sign in (1.0, -1.0):
        advantage = torch.full_like(ratio, sign)
        distance = signed_distance_past_boundary(ratio, advantage, 0.2)
        outside_ramp = (distance <= 0) | (distance >= 1e-3)
        learned = make_shape("learned").gate(ratio, advantage)
        step = make_shape("step").gate(ratio, advantage)
        assert torch.equal(learned[outside_ramp], step[outside_ramp])
        inside = ~outside_ramp
        assert ((learned[inside] >= 0) & (learned[inside] <= 1)).all()


def test_learned_vector_round_trip_and_monotone():
    shape = make_shape("learned")
    vector = torch.rand(shape.vector_size, generator=torch.Generator().manual_seed(0))
    shape.set_vector(vector)
    assert torch.equal(shape.get_vector(), vector)
    ratio = torch.linspace(0.1, 3.0, 1000)
    gate = shape.gate(ratio, torch.ones_like(ratio))
    assert (gate.diff() >= -1e-6).all()  # monotone in the distance past the upper bound
    with pytest.raises(ValueError, match="expected 18"):
        shape.set_vector([0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        shape.set_vector([math.nan] * shape.vector_size)


@pytest.mark.parametrize(
    "name,params,fragment",
    [
        ("sigmoid", {"tau": 0.0}, "'tau' = 0 is outside its allowed range (0, inf)"),
        ("sigmoid", {"tau": -1.0}, "'tau' = -1"),
        ("linear_ramp", {"delta": -0.5}, "'delta' = -0.5 is outside"),
        ("step", {"eps": 1.5}, "'eps' = 1.5 is outside its allowed range (0, 1)"),
        ("step", {"eps": math.nan}, "'eps' = nan"),
        ("step", {"eps": "wide"}, "'eps' must be a number"),
        ("step", {"tau": 0.1}, "unknown parameter(s) tau; its parameters are: eps"),
    ],
)
def test_bad_parameters_give_one_clear_message(name, params, fragment):
    with pytest.raises(ValueError) as error:
        make_shape(name, **params)
    assert fragment in str(error.value)
    assert name in str(error.value)


def test_unknown_shape_lists_registered_names():
    with pytest.raises(KeyError) as error:
        make_shape("tanh_gate")
    message = str(error.value)
    for name in BUILTIN:
        assert name in message
    assert f"registered shapes: {', '.join(available_shapes())}" in message


def test_reregistering_is_refused_unless_overridden(clean_registry):
    with pytest.raises(ValueError, match="already registered"):

        @register_shape("step")
        class Impostor(CoefficientShape):
            def gate(self, ratio, advantage):
                return torch.zeros_like(ratio)

    @register_shape("step", override=True)
    class Replacement(CoefficientShape):
        def gate(self, ratio, advantage):
            return torch.zeros_like(ratio)

    assert isinstance(make_shape("step"), Replacement)


@pytest.mark.parametrize("name", BUILTIN)
def test_search_space_builds_a_valid_shape(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        shape = shapes.get_shape_class(name).from_trial(trial, prefix="shape.")
        assert isinstance(shape, CoefficientShape)
        assert all(key.startswith("shape.") for key in trial.params)
    fixed = shapes.get_shape_class(name).search_space(study.ask(), fixed={"eps": 0.3})
    if "eps" in shapes.get_shape_class(name).params:
        assert fixed["eps"] == 0.3


USER_SHAPE = textwrap.dedent(
    """
    import torch
    from klip.shapes import CoefficientShape, Param, register_shape

    @register_shape("half_brake")
    class HalfBrake(CoefficientShape):
        params = {"strength": Param(0.5, 0.0, 1.0, search=(0.0, 1.0))}

        def gate(self, ratio, advantage):
            return torch.full_like(ratio, self.strength)
    """
)


def test_user_shape_file_is_found_by_name_and_used_by_the_loss(tmp_path, clean_registry):
    path = tmp_path / "my_shapes.py"
    path.write_text(USER_SHAPE)
    assert load_shapes_from_file(path) == ["half_brake"]
    assert "half_brake" in available_shapes()
    shape = make_shape("half_brake", strength=0.25)
    actor, critic = make_actor_critic()
    batch = make_batch(actor, torch.zeros(8), torch.ones(8))
    loss = KLipPPOLoss(actor, critic, shape=shape, normalize_advantage=False)
    out = loss(batch)
    assert out["gate_mean"].item() == pytest.approx(0.25)
    assert out["loss_objective"].item() == pytest.approx(-0.75)


def test_entry_point_plugin_is_discovered(tmp_path, clean_registry, monkeypatch):
    package = tmp_path / "brake_plugin.py"
    package.write_text(USER_SHAPE.replace('@register_shape("half_brake")', ""))
    dist = tmp_path / "brake_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brake-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[klip.shapes]\nbrake = brake_plugin:HalfBrake\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clean_registry._entry_points_loaded = False
    assert "brake" in available_shapes()
    assert make_shape("brake", strength=1.0).gate(torch.ones(2), torch.ones(2)).tolist() == [1, 1]


@pytest.mark.slow
def test_shape_json_written_by_one_process_loads_in_another(tmp_path):
    path = tmp_path / "learned.json"
    script = (
        "import torch\nfrom klip import shapes\n"
        "s = shapes.make_shape('learned', eps=0.15)\n"
        "s.set_vector(torch.linspace(0, 1, s.vector_size))\n"
        f"shapes.save_shape(s, {str(path)!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    loaded = load_shape(path)
    assert isinstance(loaded, LearnedShape)
    assert loaded.eps == 0.15
    assert torch.allclose(loaded.get_vector(), torch.linspace(0, 1, loaded.vector_size))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_round_trips_through_json(tmp_path, name):
    shape = make_shape(name)
    loaded = load_shape(save_shape(shape, tmp_path / f"{name}.json"))
    ratio = torch.linspace(0.5, 1.5, 101)
    give_context(shape, ratio)
    give_context(loaded, ratio)
    for sign in (1.0, -1.0):
        advantage = torch.full_like(ratio, sign)
        assert torch.equal(loaded.gate(ratio, advantage), shape.gate(ratio, advantage))


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("{not json", "is not valid JSON"),
        ('{"params": {}}', "expected an object with a 'name' field"),
        ('{"name": "__import__(\'os\').system(\'true\')"}', "unknown shape"),
        ('{"name": "sigmoid", "params": {"tau": -3}}', "'tau' = -3"),
        ('{"name": "learned", "state": {"values": [[1, 2]]}}', "has shape [1, 2]"),
        ('{"name": "learned", "state": {"weights": [1]}}', "state mismatch"),
        ('{"name": "step", "klip_shape_format": 99}', "unsupported shape file format"),
    ],
)
def test_corrupt_shape_files_give_clear_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises((ValueError, KeyError)) as error:
        load_shape(path)
    assert fragment in str(error.value)


def test_shape_json_is_plain_data():
    data = make_shape("learned").to_dict()
    assert json.loads(json.dumps(data)) == data


# -- gates from closed forms, for both signs of the advantage --------------------------------
def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# (shape, params, ratio, advantage, expected gate), each written from the shape's formula:
# the signed distance past the boundary is w - (1+eps) for A >= 0 and (1-eps) - w for A < 0.
CLOSED_FORMS = [
    ("step", {}, 1.3, 1.0, 1.0),
    ("step", {}, 1.1, 1.0, 0.0),
    ("step", {}, 0.7, 1.0, 0.0),            # A > 0 below the band: passes
    ("step", {}, 0.7, -1.0, 1.0),
    ("step", {}, 0.9, -1.0, 0.0),
    ("step", {}, 1.3, -1.0, 0.0),           # A < 0 above the band: passes
    ("step", {"eps": 0.1}, 0.85, -2.0, 1.0),
    ("step", {"eps": 0.1}, 0.95, -2.0, 0.0),
    ("none", {}, 3.0, 1.0, 0.0),
    ("none", {}, 0.1, -1.0, 0.0),
    ("sigmoid", {}, 0.9, -1.0, sigmoid(-2.0)),   # d = 0.8 - 0.9 = -0.1, /0.05
    ("sigmoid", {}, 0.7, -1.0, sigmoid(2.0)),    # d = 0.8 - 0.7
    ("sigmoid", {}, 1.1, 1.0, sigmoid(-2.0)),    # d = 1.1 - 1.2
    ("sigmoid", {}, 1.25, 3.0, sigmoid(1.0)),    # d = 1.25 - 1.2
    ("sigmoid", {}, 1.1, 0.0, sigmoid(-2.0)),    # A == 0 takes the upper side
    ("sigmoid", {"eps": 0.1, "tau": 0.02}, 0.85, -1.0, sigmoid(2.5)),  # d = 0.9 - 0.85
    ("sigmoid", {"eps": 0.1, "tau": 0.02}, 1.05, 1.0, sigmoid(-2.5)),
    ("linear_ramp", {}, 0.75, -1.0, 0.5),        # d = 0.05 of delta 0.1
    ("linear_ramp", {}, 0.9, -1.0, 0.0),
    ("linear_ramp", {}, 0.5, -1.0, 1.0),
    ("linear_ramp", {}, 1.25, 1.0, 0.5),
    ("linear_ramp", {}, 1.5, 1.0, 1.0),
    ("linear_ramp", {}, 1.1, 1.0, 0.0),
    ("linear_ramp", {"eps": 0.3, "delta": 0.4}, 0.6, -1.0, 0.25),   # d = 0.7 - 0.6
    ("linear_ramp", {"eps": 0.3, "delta": 0.4}, 1.5, 1.0, 0.5),     # d = 1.5 - 1.3
    ("learned", {}, 1.3, 1.0, 1.0),              # default: step off the thin ramp
    ("learned", {}, 1.1, 1.0, 0.0),
    ("learned", {}, 0.7, -1.0, 1.0),
    ("learned", {}, 0.9, -1.0, 0.0),
    ("learned", {}, 1.2005, 1.0, 0.5),           # d = 5e-4, half-way up the 1e-3 ramp
    ("learned", {}, 0.7995, -1.0, 0.5),
    ("rollback", {}, 1.3, 1.0, 1.3),             # 1 + alpha on the kill region
    ("rollback", {}, 0.7, -1.0, 1.3),
    ("rollback", {}, 1.1, 1.0, 0.0),
    ("rollback", {}, 1.3, -1.0, 0.0),            # pass region
    ("rollback", {"alpha": 0.5}, 1.25, 2.0, 1.5),
    ("clip_higher", {}, 1.25, 1.0, 0.0),         # inside 1 + eps_high = 1.28
    ("clip_higher", {}, 1.3, 1.0, 1.0),
    ("clip_higher", {}, 0.85, -1.0, 0.0),
    ("clip_higher", {}, 0.75, -1.0, 1.0),        # below 1 - eps_low = 0.8
    ("spo", {}, 1.1, 1.0, 0.5),                  # sign(A) (w - 1) / eps
    ("spo", {}, 0.9, -1.0, 0.5),
    ("spo", {}, 1.3, -2.0, -1.5),
    ("spo", {}, 0.8, 1.0, -1.0),
    ("truncate", {}, 1.5, 1.0, 0.2),             # 1 - min(w, 1 + eps_high) / w
    ("truncate", {}, 1.5, -1.0, 0.2),
    ("truncate", {}, 1.1, 1.0, 0.0),
    ("truncate", {}, 0.5, -1.0, 0.0),            # eps_low 1: no lower bound
    ("truncate", {"eps_low": 0.2}, 0.5, 1.0, 1.0 - 0.8 / 0.5),
    # dpo: A >= 0, x = (w-1)A: g = tanh(x/alpha)^2 for x > 0; A < 0, x = log(w)A: g = tanh(x/beta)^2 / w
    ("dpo", {}, 1.5, 1.0, math.tanh(0.5 / 2) ** 2),
    ("dpo", {}, 0.8, 1.0, 0.0),
    ("dpo", {}, 0.5, -1.0, math.tanh(math.log(2) / 0.6) ** 2 / 0.5),
    ("dpo", {}, 1.5, -1.0, 0.0),
    ("annealed_clip", {}, 1.3, 1.0, 1.0),        # progress 0: the step gate at eps_start 0.2
    ("annealed_clip", {}, 1.15, 1.0, 0.0),
    ("annealed_clip", {}, 0.85, -1.0, 0.0),
    ("annealed_clip", {}, 0.75, -1.0, 1.0),
]


@pytest.mark.parametrize("name,params,ratio,advantage,expected", CLOSED_FORMS)
def test_gate_equals_its_closed_form(name, params, ratio, advantage, expected):
    shape = make_shape(name, **params).double()
    w, a = torch.tensor([ratio], dtype=torch.float64), torch.tensor([advantage], dtype=torch.float64)
    # 1e-6: the learned gate's knots are float32 numbers even in a float64 shape.
    assert shape.gate(w, a).item() == pytest.approx(expected, abs=1e-6)
    assert shape.gate_from_log_ratio(w.log(), w, a).item() == pytest.approx(expected, abs=1e-6)
    # float32, as the trainer runs it
    shape32 = make_shape(name, **params)
    w32, a32 = w.float(), a.float()
    assert shape32.gate_from_log_ratio(w32.log(), w32, a32).item() == pytest.approx(expected, abs=2e-4)


# Shapes that read context: (name, params, context, ratio, advantage, expected gate).
RAMP = {"pos_base": -1.0, "pos_inc3": 0.5, "pos_jump": 1.3}  # learned_increments, A >= 0 only
CONTEXT_CLOSED_FORMS = [
    ("learned_increments", {}, {}, 1.3, 1.0, 1.0),           # the defaults are step
    ("learned_increments", {}, {}, 1.1, 1.0, 0.0),
    ("learned_increments", {}, {}, 0.7, -1.0, 1.0),
    ("learned_increments", RAMP, {}, 1.0, 1.0, -1.0),        # d = -0.2: base (amplifies)
    ("learned_increments", RAMP, {}, 1.15, 1.0, -0.75),      # d = -0.05: half-way up segment 3
    ("learned_increments", RAMP, {}, 1.5, 1.0, 0.8),         # d = 0.3: -1 + 0.5 + jump 1.3
    ("learned_increments", RAMP, {}, 0.7, -1.0, 1.0),        # A < 0 keeps step's curve
    ("learned_increments_epoch", {"late_pos_jump": 2.0}, {"epoch_progress": 0.5}, 1.3, 1.0, 1.5),
    ("learned_increments_epoch", {"late_pos_jump": 2.0}, {"epoch_progress": 0.0}, 1.3, 1.0, 1.0),
    ("learned_increments_epoch", {"late_pos_jump": 2.0}, {"epoch_progress": 0.5}, 1.1, 1.0, 0.0),
    # tr_ppo: 1 where KL >= 0.035 and the ratio moved the way A pushes it
    ("tr_ppo", {}, {"kl": 0.05}, 1.1, 1.0, 1.0),
    ("tr_ppo", {}, {"kl": 0.05}, 0.9, 1.0, 0.0),
    ("tr_ppo", {}, {"kl": 0.05}, 0.9, -1.0, 1.0),
    ("tr_ppo", {}, {"kl": 0.01}, 3.0, 1.0, 0.0),             # far outside any band, KL small
    ("tr_ppo", {}, {"kl": 0.05}, 1.1, 0.0, 0.0),             # A = 0: never triggered
    # tr_ppo_rb: alpha (1 - 1/w) / A on tr_ppo's trigger (delta 0.03, alpha 5)
    ("tr_ppo_rb", {}, {"kl": 0.05}, 1.25, 2.0, 5 * 0.2 / 2),
    ("tr_ppo_rb", {}, {"kl": 0.05}, 0.8, -1.0, 5 * 0.25),
    ("tr_ppo_rb", {}, {"kl": 0.02}, 0.8, -1.0, 0.0),
    ("tr_ppo_rb", {}, {"kl": 0.05}, 1.25, -1.0, 0.0),
    # trgppo at p = 0.5, delta 0.001: band [0.955301, 1.044699] (KL(r) = delta, by hand below)
    ("trgppo", {}, {"old_log_prob": math.log(0.5)}, 1.05, 1.0, 1.0),
    ("trgppo", {}, {"old_log_prob": math.log(0.5)}, 1.04, 1.0, 0.0),
    ("trgppo", {}, {"old_log_prob": math.log(0.5)}, 0.95, -1.0, 1.0),
    ("trgppo", {}, {"old_log_prob": math.log(0.5)}, 0.96, -1.0, 0.0),
    ("trgppo", {}, {"old_log_prob": math.log(0.01)}, 1.5, 1.0, 0.0),   # band [0.618, 1.512]
    ("trgppo", {}, {"old_log_prob": math.log(0.01)}, 1.52, 1.0, 1.0),
    # trgppo_gaussian, d = 1: at the old mean [0.812593, 1.2]; three scales away [0.131866, 4.507212]
    ("trgppo_gaussian", {}, {"old_action_z": [[0.0]]}, 1.21, 1.0, 1.0),
    ("trgppo_gaussian", {}, {"old_action_z": [[0.0]]}, 1.19, 1.0, 0.0),
    ("trgppo_gaussian", {}, {"old_action_z": [[0.0]]}, 0.81, -1.0, 1.0),
    ("trgppo_gaussian", {}, {"old_action_z": [[0.0]]}, 0.82, -1.0, 0.0),
    ("trgppo_gaussian", {}, {"old_action_z": [[-3.0]]}, 4.4, 1.0, 0.0),
    ("trgppo_gaussian", {}, {"old_action_z": [[3.0]]}, 4.6, 1.0, 1.0),
]


@pytest.mark.parametrize("name,params,context,ratio,advantage,expected", CONTEXT_CLOSED_FORMS)
def test_context_gate_equals_its_closed_form(name, params, context, ratio, advantage, expected):
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        shape = make_shape(name, **params).to(dtype)
        w, a = torch.tensor([ratio], dtype=dtype), torch.tensor([advantage], dtype=dtype)
        shape.set_context(**{key: value if key == "epoch_progress" else torch.tensor(
            value if isinstance(value, list) else [value], dtype=dtype) for key, value in context.items()})
        assert shape.gate(w, a).item() == pytest.approx(expected, abs=tolerance)
        assert shape.gate_from_log_ratio(w.log(), w, a).item() == pytest.approx(expected, abs=tolerance)


def test_trgppo_band_of_the_closed_forms_by_hand():
    """The band quoted above: KL(r) = -p log r + (1-p) log((1-p)/(1-p r)) equals delta at both ends."""
    from klip.shapes.published import trgppo_band

    for p, low, high in ((0.5, 0.955301, 1.044699), (0.01, 0.618003, 1.512305)):
        lower, upper = trgppo_band(torch.tensor([math.log(p)], dtype=torch.float64), 0.001)
        assert (lower.item(), upper.item()) == pytest.approx((low, high), abs=1e-6)
        for r in (lower.item(), upper.item()):
            assert -p * math.log(r) + (1 - p) * math.log((1 - p) / (1 - p * r)) == pytest.approx(0.001)


def test_every_registered_shape_has_closed_form_cases():
    names = {name for name, *_ in CLOSED_FORMS} | {name for name, *_ in CONTEXT_CLOSED_FORMS}
    assert names == set(available_shapes())


# A learned gate with different curves for the two signs; knots of LearnedShape.KNOTS:
# (-0.2, -0.1, -0.05, 0.0, 1e-3, 0.05, 0.1, 0.2, 0.5)
POSITIVE = [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9]
NEGATIVE = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85]


@pytest.mark.parametrize(
    "ratio,advantage,expected",
    [
        (1.25, 1.0, POSITIVE[5]),                            # d = 0.05, on a knot
        (1.275, 1.0, (POSITIVE[5] + POSITIVE[6]) / 2),       # d = 0.075, half-way
        (1.3, 2.0, POSITIVE[6]),
        (1.15, 1.0, POSITIVE[2]),                            # d = -0.05, knot 2
        (1.125, 1.0, (POSITIVE[1] + POSITIVE[2]) / 2),       # d = -0.075
        (0.75, -1.0, NEGATIVE[5]),                           # d = 0.8 - 0.75 = 0.05
        (0.725, -1.0, (NEGATIVE[5] + NEGATIVE[6]) / 2),      # d = 0.075
        (0.85, -1.0, NEGATIVE[2]),                           # d = -0.05
        (0.1, -1.0, NEGATIVE[8]),                            # beyond the last knot
        (3.0, 1.0, POSITIVE[8]),
        (1.0, 1.0, POSITIVE[0]),                             # d = -0.2, first knot
        (1.0, -1.0, NEGATIVE[0]),
        (1.3, -1.0, NEGATIVE[0]),                            # d = -0.5, before the first knot
        (1.25, 0.0, POSITIVE[5]),                            # A == 0 uses the A >= 0 curve
    ],
)
def test_learned_gate_interpolates_its_own_curve_for_each_sign(ratio, advantage, expected):
    shape = make_shape("learned").double()
    shape.set_vector(POSITIVE + NEGATIVE)
    w, a = torch.tensor([ratio], dtype=torch.float64), torch.tensor([advantage], dtype=torch.float64)
    assert shape.gate(w, a).item() == pytest.approx(expected, abs=1e-6)  # float32 knots and values


# -- JSON round trip with non-default parameters and state -----------------------------------
def non_default_params(name: str) -> dict[str, float]:
    """A value inside each parameter's search range (or half the default), never the default."""
    chosen = {}
    for key, spec in shapes.get_shape_class(name).params.items():
        if spec.search is not None:
            low, high = spec.search
            value = math.exp(math.log(low) + 0.37 * (math.log(high) - math.log(low))) if spec.log \
                else low + 0.37 * (high - low)
        else:
            value = spec.default / 2
        assert value != spec.default
        chosen[key] = value
    return chosen


@pytest.mark.parametrize("name", available_shapes())
def test_round_trip_keeps_non_default_parameters_and_state(tmp_path, name):
    params = non_default_params(name)
    shape = make_shape(name, **params)
    generator = torch.Generator().manual_seed(0)
    for value in shape.state_dict().values():  # learned state: random, not the default
        value.copy_(torch.rand(value.shape, generator=generator))
    loaded = load_shape(save_shape(shape, tmp_path / f"{name}.json"))
    assert type(loaded) is type(shape)
    assert loaded.hparams == params
    for key, value in shape.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ratio = torch.linspace(0.3, 2.0, 341)
    default = make_shape(name)
    for gated in (shape, loaded, default):
        give_context(gated, ratio)
    differs = False
    for sign in (1.0, -1.0):
        advantage = torch.full_like(ratio, sign)
        gate = loaded.gate(ratio, advantage)
        assert torch.equal(gate, shape.gate(ratio, advantage))
        differs |= not torch.equal(gate, default.gate(ratio, advantage))
    assert differs or name == "none", "the parameters and state must change the gate"


# -- a shape file's parameters and state are the gate the trainer uses -----------------------
def trainer_gates(shape_file) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (log-ratio, standardised advantage, gate) of the trainer's own minibatch loss
    on a real rollout, one epoch in, for a run configured with `--shape-file`."""
    from klip.algos.config import TrainConfig
    from klip.algos.ppo import PPOModule

    config = TrainConfig(task="Pendulum-v1", rollout_steps=128, minibatch_size=128, epochs=1,
                         eval_episodes=0, shape_file=str(shape_file))
    module = PPOModule([config.to_dict()])
    (agent,) = module.agents
    (rollout,) = module.rollouts.collect([agent.generator])
    with torch.no_grad():
        agent.advantage_module(rollout)
    data = rollout.select(*module._update_keys(rollout)).reshape(-1)
    with torch.no_grad():  # move the policy so that ratios are not all 1
        policy = module.actor.module[0]
        policy.log_std.add_(0.3)
    (minibatch,) = list(agent.minibatch_loss.minibatches(data, 128))
    _, _, log_ratio, advantage, gate = agent.minibatch_loss.losses(*minibatch)
    return log_ratio.squeeze(-1).double(), advantage.squeeze(-1).double(), gate.squeeze(-1).double()


def test_shape_file_parameters_set_the_gate_used_in_training(tmp_path):
    path = tmp_path / "sigmoid.json"
    path.write_text('{"name": "sigmoid", "params": {"eps": 0.1, "tau": 0.02}}')
    log_ratio, advantage, gate = trainer_gates(path)
    w = log_ratio.exp()
    distance = torch.where(advantage >= 0, w - 1.1, 0.9 - w)  # eps = 0.1, by hand
    expected = 1 / (1 + torch.exp(-distance / 0.02))  # tau = 0.02
    torch.testing.assert_close(gate, expected, rtol=1e-4, atol=1e-5)
    default_distance = torch.where(advantage >= 0, w - 1.2, 0.8 - w)
    default = 1 / (1 + torch.exp(-default_distance / 0.05))
    assert (gate - default).abs().max() > 0.1, "the file's parameters must make a difference"
    assert (advantage < 0).any() and (advantage > 0).any()


def test_shape_file_learned_state_sets_the_gate_used_in_training(tmp_path):
    path = tmp_path / "learned.json"
    knots = len(LearnedShape.KNOTS)
    shape = make_shape("learned", eps=0.25)
    shape.set_vector([0.25] * knots + [0.75] * knots)  # flat curves: 1/4 for A >= 0, 3/4 for A < 0
    save_shape(shape, path)
    _, advantage, gate = trainer_gates(path)
    expected = torch.where(advantage >= 0, 0.25, 0.75).double()
    assert torch.equal(gate, expected)


# -- the contract's details: ranges, messages, search spaces, registry, files ----------------
def test_param_range_bounds_and_their_description():
    closed = shapes.Param(0.5, 0.0, 1.0)
    assert closed.describe_range() == "[0, 1]"
    assert closed.contains(0.0) and closed.contains(1.0) and not closed.contains(1.5)
    open_ = shapes.Param(0.5, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    assert open_.describe_range() == "(0, 1)"
    assert not open_.contains(0.0) and not open_.contains(1.0) and open_.contains(0.5)
    unbounded = shapes.Param(1.0)
    assert unbounded.describe_range() == "(-inf, inf)"
    assert unbounded.contains(-1e300) and not unbounded.contains(math.nan)


def test_unknown_parameter_message_lists_the_known_ones_exactly():
    message = r"^shape 'none': unknown parameter\(s\) tau; its parameters are: none$"
    with pytest.raises(ValueError, match=message):
        make_shape("none", tau=1.0)
    two = r"unknown parameter\(s\) delta, kappa; its parameters are: eps, tau$"
    with pytest.raises(ValueError, match=two):
        make_shape("sigmoid", kappa=1.0, delta=1.0)


def test_module_call_and_repr():
    shape = make_shape("sigmoid", eps=0.25, tau=0.5)
    ratio, advantage = torch.tensor([0.5, 1.5]), torch.tensor([-1.0, 1.0])
    assert torch.equal(shape(ratio, advantage), shape.gate(ratio, advantage))
    assert repr(shape) == "SigmoidShape(eps=0.25, tau=0.5)"


@pytest.mark.parametrize("name", BUILTIN)
def test_search_space_names_ranges_and_fixed_values(name):
    cls = shapes.get_shape_class(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    chosen = cls.search_space(trial)  # no prefix by default
    searchable = {key for key, spec in cls.params.items() if spec.search is not None}
    assert set(trial.params) == set(chosen) and searchable <= set(chosen)
    for key in searchable:
        spec = cls.params[key]
        distribution = trial.distributions[key]
        assert (distribution.low, distribution.high, distribution.log) == (*spec.search, spec.log)
    if name == "learned":
        for side in ("pos", "neg"):
            for index in range(len(LearnedShape.KNOTS)):
                distribution = trial.distributions[f"{side}{index}"]
                assert (distribution.low, distribution.high) == (0.0, 1.0)
    if "eps" in cls.params:
        fixed = cls.from_trial(study.ask(), fixed={"eps": 0.3})
        assert fixed.eps == 0.3
        free_trial = study.ask()
        free = cls.from_trial(free_trial)
        assert free.eps == free_trial.params["eps"] != cls.params["eps"].default


def test_learned_from_trial_sets_the_vector_the_trial_chose():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2)).ask()
    shape = LearnedShape.from_trial(trial, prefix="g.")
    size = len(LearnedShape.KNOTS)
    expected = [trial.params[f"g.{side}{i}"] for side in ("pos", "neg") for i in range(size)]
    assert torch.equal(shape.get_vector(), torch.tensor(expected))


def test_persistent_state_is_only_what_a_shape_file_must_carry():
    assert make_shape("step").state_dict() == {}  # eps_tensor is derived from eps
    assert set(make_shape("learned").state_dict()) == {"values"}  # knots are fixed
    data = make_shape("step", eps=0.3).to_dict()
    assert data == {"klip_shape_format": shapes.base.SHAPE_FILE_FORMAT, "name": "step",
                    "params": {"eps": 0.3}, "state": {}}


def test_step_gate_is_zero_on_the_boundary_itself():
    eps = 0.2
    w = torch.tensor([1.0 + eps, 1.0 - eps], dtype=torch.float64)  # the shape's own arithmetic
    advantage = torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert make_shape("step", eps=eps).gate(w, advantage).tolist() == [0, 0]


def test_learned_vector_is_checked_in_the_shapes_dtype():
    shape = make_shape("learned")
    with pytest.raises(ValueError, match=r"^learned shape: vector entries must be finite$"):
        shape.set_vector(torch.full((shape.vector_size,), 1e300, dtype=torch.float64))  # inf in float32


def test_learned_gate_of_float64_ratios_on_a_float32_shape():
    shape = make_shape("learned")
    # Jumps between knots whose float32 differences round (not within a factor of 2).
    positive = [0.0, 0.013, 0.3, 0.31, 0.77, 0.78, 0.9, 0.97, 0.99]
    negative = [0.007, 0.2, 0.21, 0.6, 0.61, 0.83, 0.84, 0.95, 0.999]
    shape.set_vector(positive + negative)
    # on segments with and without such jumps, both signs, and beyond the ends
    ratio = torch.tensor([1.275, 0.725, 1.3, 0.3, 1.125, 0.95, 0.83, 1.2005, 1.23, 0.77, 1.5],
                         dtype=torch.float64)
    advantage = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0, -2.0, -1.0, 1.0, 1.0, -1.0, 1.0],
                             dtype=torch.float64)
    knots = torch.tensor(LearnedShape.KNOTS).double()  # the float32 knots, exactly
    values = torch.tensor([positive, negative]).double()  # the float32 values, exactly
    expected = []
    for w, a in zip(ratio.tolist(), advantage.tolist(), strict=True):
        d = min(max(w - 1.2 if a >= 0 else 0.8 - w, knots[0].item()), knots[-1].item())
        right = max(1, int(torch.searchsorted(knots, torch.tensor(d, dtype=torch.float64))))
        low, high = values[int(a < 0), right - 1].item(), values[int(a < 0), right].item()
        fraction = (d - knots[right - 1].item()) / (knots[right].item() - knots[right - 1].item())
        expected.append(low + fraction * (high - low))
    gate = shape.gate(ratio, advantage)
    assert gate.dtype == torch.float64
    torch.testing.assert_close(gate, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)


def test_register_shape_validates_names_and_classes(clean_registry):
    for bad in ("", "two words", "semi;colon"):
        with pytest.raises(ValueError, match=r"must be non-empty letters, digits, '_' or '-'$"):
            register_shape(bad)

    @register_shape("my-gate_2")
    class Mine(CoefficientShape):
        def gate(self, ratio, advantage):
            return torch.zeros_like(ratio)

    assert Mine.name == "my-gate_2" and make_shape("my-gate_2").display_name() == "my-gate_2"
    with pytest.raises(TypeError, match=r"^@register_shape\('x'\) needs a CoefficientShape subclass$"):
        register_shape("x")(int)
    with pytest.raises(TypeError, match="needs a CoefficientShape subclass"):
        register_shape("x")(lambda: None)


PLUGIN_WITH_DATACLASS = textwrap.dedent(
    """
    from __future__ import annotations
    import dataclasses
    import torch
    from klip.shapes import CoefficientShape, register_shape

    @dataclasses.dataclass
    class Settings:  # dataclasses look the defining module up in sys.modules
        level: float = {level}

    @register_shape("{name}")
    class Flat(CoefficientShape):
        def gate(self, ratio, advantage):
            return torch.full_like(ratio, Settings().level)
    """
)


def test_each_plugin_file_is_its_own_module(tmp_path, clean_registry):
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text(PLUGIN_WITH_DATACLASS.format(name="flat_a", level=0.25))
    second.write_text(PLUGIN_WITH_DATACLASS.format(name="flat_b", level=0.75))
    assert load_shapes_from_file(first) == ["flat_a"]
    assert load_shapes_from_file(second) == ["flat_b"]
    assert load_shapes_from_file(first) == ["flat_a"]  # loaded once
    assert make_shape("flat_b").gate(torch.ones(1), torch.ones(1)).item() == 0.75
    # Each file keeps its own module, so its classes still pickle by name after another loads.
    restored = pickle.loads(pickle.dumps(make_shape("flat_a")))
    assert restored.gate(torch.ones(1), torch.ones(1)).item() == 0.25


def test_plugin_and_shape_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(FileNotFoundError, match=f"^shape plugin file not found: {missing}$"):
        load_shapes_from_file(missing)
    text = tmp_path / "shapes.txt"
    text.write_text("")
    with pytest.raises(ValueError, match=f"^shape plugin must be a .py file, got {text}$"):
        load_shapes_from_file(text)
    with pytest.raises(FileNotFoundError, match=f"^shape file not found: {tmp_path / 'nope.json'}$"):
        load_shape(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "content,message",
    [
        ('[1, 2]', "not a klip shape description: expected an object with a 'name' field"),
        ('{"name": "step", "params": [0.1]}', "shape 'params' must be an object of name -> number"),
        ('{"name": "step", "state": [1]}', "shape 'state' must be an object of name -> list of numbers"),
        ('{"name": "step", "state": {"x": [1]}}',
         "shape 'step' state mismatch: missing [], unexpected ['x']"),
        ('{"name": "learned", "state": {"weights": [1]}}',
         "shape 'learned' state mismatch: missing ['values'], unexpected ['weights']"),
        ('{"name": "learned", "state": {"values": "high"}}', "shape state 'values' is not numeric: "),
    ],
)
def test_shape_file_errors_are_exact(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        load_shape(path)
    assert str(error.value).startswith(f"shape file {path}: {message}")


def test_saved_shape_file_is_indented_json_with_a_final_newline(tmp_path):
    shape = make_shape("sigmoid", tau=0.1)
    text = save_shape(shape, tmp_path / "s.json").read_text()
    assert text == json.dumps(shape.to_dict(), indent=2) + "\n"


def test_parse_param_assignments():
    from klip.shapes.registry import parse_param_assignments

    assert parse_param_assignments(["tau=0.05", " eps =0.2"]) == {"tau": 0.05, "eps": 0.2}
    assert parse_param_assignments([]) == {}
    for item, message in [
        ("tau", r"^shape parameter 'tau' must look like NAME=VALUE$"),
        ("=1", r"^shape parameter '=1' must look like NAME=VALUE$"),
        (" =1", r"^shape parameter ' =1' must look like NAME=VALUE$"),
        ("tau=abc", r"^shape parameter 'tau': 'abc' is not a number$"),
        ("tau=inf", r"^shape parameter 'tau': 'inf' is not finite$"),
        ("tau=nan", r"^shape parameter 'tau': 'nan' is not finite$"),
        ("tau=1=2", r"^shape parameter 'tau': '1=2' is not a number$"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_param_assignments([item])


def test_entry_points_broken_foreign_and_known_plugins(tmp_path, clean_registry, monkeypatch):
    package = tmp_path / "gate_plugins.py"
    package.write_text(USER_SHAPE.replace('@register_shape("half_brake")', "")
                       + "\nNOT_A_SHAPE = 3\n\nclass Other(HalfBrake):\n    pass\n")
    dist = tmp_path / "gate_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gate-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[klip.shapes]\n"
        "broken = no_such_module_here:Gate\n"
        "number = gate_plugins:NOT_A_SHAPE\n"
        "step_again = klip.shapes.builtin:StepShape\n"
        "brake = gate_plugins:HalfBrake\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    clean_registry._entry_points_loaded = False
    with pytest.warns(UserWarning, match=r"^klip: could not load shape plugin 'no_such_module_here:Gate': "
                                         r"No module named 'no_such_module_here'$"):
        names = available_shapes()
    assert "brake" in names and "number" not in names and "step_again" not in names
    assert clean_registry._entry_points_loaded is True
    assert shapes.get_shape_class("brake").name == "brake"
    (dist / "entry_points.txt").write_text("[klip.shapes]\nlater = gate_plugins:Other\n")
    assert "later" not in available_shapes()  # entry points are read once per process


def test_an_underflowed_ratio_kills_its_sample_and_nothing_else_is_masked():
    """exp(log_ratio) is 0 for a log-ratio of -1000: shapes that divide by the ratio (CISPO's
    truncation, TR-PPO-RB, DPO's A < 0 side) would give 0 * inf = NaN; the sample is killed."""
    from klip.shapes.functional import klip_objective

    log_ratio = torch.tensor([-1000.0, -1000.0, 0.1], requires_grad=True)
    advantage = torch.tensor([-2.0, 2.0, -2.0])
    for name in ("truncate", "tr_ppo_rb", "dpo", "step"):
        shape = make_shape(name)
        context = {"kl": torch.tensor([1e3, 1e3, 0.0])} if "kl" in shape.context else {}
        with shape.using_context(**context):
            objective, gate = klip_objective(shape, log_ratio, advantage)
        (gradient,) = torch.autograd.grad(objective.sum(), log_ratio)
        assert torch.isfinite(objective).all() and torch.isfinite(gradient).all(), name
        assert gradient[:2].tolist() == [0.0, 0.0] and torch.isfinite(gate).all(), name

    class Broken(CoefficientShape):
        def gate(self, ratio, advantage):
            return torch.full_like(ratio, float("nan"))

    objective, _ = klip_objective(Broken(), log_ratio.detach(), advantage)
    assert torch.isnan(objective[2])  # at a normal ratio a NaN stays, for the divergence check
