"""Shapes: properties of every built-in gate, parameters, registry, plugins, JSON files."""

from __future__ import annotations

import json
import math
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

BUILTIN = ["step", "none", "sigmoid", "linear_ramp", "learned"]
ratios = st.floats(1e-6, 1e6, allow_nan=False)
advantages = st.one_of(st.just(0.0), st.floats(-1e6, 1e6, allow_nan=False))


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
    objective, gate = klip_objective(make_shape(name), log_ratio, advantage, form=form)
    objective.mean().backward()
    assert gate.shape == advantage.shape
    assert torch.isfinite(gate).all()
    assert torch.isfinite(objective).all()
    assert torch.isfinite(log_ratio.grad).all()


@pytest.mark.parametrize("name", BUILTIN)
@settings(max_examples=40, deadline=None)
@given(ratio=ratios, advantage=advantages)
def test_gate_shape_and_range(name, ratio, advantage):
    gate = make_shape(name).gate(torch.tensor([ratio, ratio]), torch.tensor([advantage, -advantage]))
    assert gate.shape == (2,)
    assert ((gate >= 0) & (gate <= 1)).all()


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
