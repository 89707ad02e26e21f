"""The shape zoo: drift-defined shapes, published variants against their objectives, context.

"Against its objective": each published objective is written here as its paper
writes it, differentiated by autograd in float64, and its per-sample gradient
`dJ/dw` (the effective advantage) compared with the shape's `A*(1-g)`.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from helpers import adversarial_case, make_actor_critic, make_batch, single_run_state

from klip.algos import KLipPPOLoss, klip_objective
from klip.algos.config import TrainConfig
from klip.algos.train import train
from klip.shapes import (
    CoefficientShape,
    DriftShape,
    Param,
    available_shapes,
    get_shape_class,
    make_shape,
    register_drift,
    register_shape,
    shape_from_dict,
)

# -- published objectives, as the papers write them (maximised) ---------------------------


def ppo_clip(w, a, eps_low, eps_high):
    return torch.minimum(w * a, w.clamp(1 - eps_low, 1 + eps_high) * a)


def rollback_objective(w, a, eps, alpha):
    """Wang et al. 2019 (PPO-RB): min(w A, F_RB(w) A)."""
    rolled = torch.where(
        w >= 1 + eps, -alpha * w + (1 + alpha) * (1 + eps),
        torch.where(w <= 1 - eps, -alpha * w + (1 + alpha) * (1 - eps), w),
    )
    return torch.minimum(w * a, rolled * a)


def spo_objective(w, a, eps):
    """Xie et al. 2024: w A - |A| / (2 eps) (w - 1)^2."""
    return w * a - a.abs() / (2 * eps) * (w - 1) ** 2


def dpo_objective(w, a, alpha, beta):
    """Lu et al. 2022, the discovered drift (their reference code's arithmetic)."""
    drift_pos = torch.relu((w - 1) * a - alpha * torch.tanh((w - 1) * a / alpha))
    drift_neg = torch.relu(torch.log(w) * a - beta * torch.tanh(torch.log(w) * a / beta))
    return w * a - torch.where(a >= 0, drift_pos, drift_neg)


def published_effective_advantage(objective, w, a, **params):
    """`dJ/dw` per sample, by autograd: the effective advantage the objective gives."""
    w = w.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(objective(w, a, **params).sum(), w)
    return gradient


def cispo_effective_advantage(w, a, eps_low, eps_high):
    """MiniMax-M1 (CISPO): sg(clip(w)) A log pi. Differentiated in log pi, where it lives:
    d/dlog pi = clip(w) A, and d/dw = (d/dlog pi) / w."""
    log_pi = w.log().clone().requires_grad_()  # log pi up to the constant log pi_old
    weight = log_pi.exp().clamp(1 - eps_low, 1 + eps_high).detach()
    (gradient,) = torch.autograd.grad((weight * a * log_pi).sum(), log_pi)
    return gradient / w


# name -> (effective advantage of the published objective, parameter sets to check)
PUBLISHED = {
    "step": (lambda w, a, eps: published_effective_advantage(ppo_clip, w, a, eps_low=eps, eps_high=eps),
             [{}, {"eps": 0.1}]),
    "clip_higher": (lambda w, a, **p: published_effective_advantage(ppo_clip, w, a, **p),
                    [{}, {"eps_low": 0.1, "eps_high": 0.5}]),
    "rollback": (lambda w, a, **p: published_effective_advantage(rollback_objective, w, a, **p),
                 [{}, {"eps": 0.1, "alpha": 1.0}]),
    "spo": (lambda w, a, **p: published_effective_advantage(spo_objective, w, a, **p),
            [{}, {"eps": 0.05}]),
    "dpo": (lambda w, a, **p: published_effective_advantage(dpo_objective, w, a, **p),
            [{}, {"alpha": 0.3, "beta": 2.0}]),
    "truncate": (cispo_effective_advantage, [{}, {"eps_low": 0.2, "eps_high": 0.28}]),
}


def random_inputs(size: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ratio = (0.5 * torch.randn(size, generator=generator, dtype=torch.float64)).exp()
    scale = torch.randn(size, generator=generator, dtype=torch.float64).exp()
    advantage = torch.randn(size, generator=generator, dtype=torch.float64) * scale
    advantage[::17] = 0.0
    return ratio, advantage


def with_defaults(name: str, overrides: dict[str, float]) -> dict[str, float]:
    params = {key: spec.default for key, spec in get_shape_class(name).params.items()}
    return {**params, **overrides}


@pytest.mark.parametrize("name", list(PUBLISHED))
@pytest.mark.parametrize("which", [0, 1], ids=["published-defaults", "other-parameters"])
def test_gate_equals_the_autograd_gate_of_the_published_objective(name, which):
    published, parameter_sets = PUBLISHED[name]
    overrides = parameter_sets[which]
    shape = make_shape(name, **overrides).double()
    ratio, advantage = random_inputs(seed=which)
    expected = published(ratio, advantage, **with_defaults(name, overrides))
    # Both gate paths: the ratio-space `gate`, and the log-space one the loss calls.
    for gate in (shape.gate(ratio, advantage),
                 shape.gate_from_log_ratio(ratio.log(), ratio, advantage)):
        torch.testing.assert_close(advantage * (1 - gate), expected, rtol=1e-9, atol=1e-12)
    # Not vacuous: the objective's gradient differs from the unclipped surrogate's somewhere.
    assert (expected != advantage).sum() > 50


def test_every_published_shape_is_checked_and_cites_its_paper():
    for name in ("rollback", "spo", "dpo", "clip_higher", "truncate"):
        assert name in PUBLISHED
        assert "arXiv" in (get_shape_class(name).__doc__ or ""), name


@pytest.mark.parametrize(
    "name,defaults",
    [
        ("rollback", {"eps": 0.2, "alpha": 0.3}),
        ("spo", {"eps": 0.2}),
        ("dpo", {"alpha": 2.0, "beta": 0.6}),
        ("clip_higher", {"eps_low": 0.2, "eps_high": 0.28}),
    ],
)
def test_published_default_parameters(name, defaults):
    assert make_shape(name).hparams == defaults


def test_closed_form_gates_stated_in_the_docstrings():
    ratio, advantage = random_inputs(seed=3)
    nonzero = advantage != 0
    spo = make_shape("spo", eps=0.2).double().gate(ratio, advantage)
    torch.testing.assert_close(spo[nonzero], (advantage.sign() * (ratio - 1) / 0.2)[nonzero])
    dpo = make_shape("dpo", alpha=2.0, beta=0.6).double().gate(ratio, advantage)
    x_pos, x_neg = (ratio - 1) * advantage, ratio.log() * advantage
    closed = torch.where(advantage >= 0, torch.tanh(x_pos / 2.0) ** 2 * (x_pos > 0),
                         torch.tanh(x_neg / 0.6) ** 2 / ratio * (x_neg > 0))
    torch.testing.assert_close(dpo[nonzero], closed[nonzero])
    assert (dpo >= 0).all()  # DPO never amplifies...
    assert (dpo[advantage < 0] > 1).any()  # ...and rolls back (g > 1) at small ratios for A < 0
    truncate = make_shape("truncate", eps_low=0.2, eps_high=0.28).double().gate(ratio, advantage)
    torch.testing.assert_close(truncate, 1 - ratio.clamp(0.8, 1.28) / ratio)
    rollback = make_shape("rollback").double().gate(ratio, advantage)
    assert set(rollback.unique().tolist()) == {0.0, 1.3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.2, 0.1, 0.35])
def test_exact_style_shapes_reduce_to_step_bitwise(dtype, eps):
    """clip_higher with equal radii, rollback with alpha 0 and an annealed clip with equal ends are
    `step`, bit for bit, on ratios exactly on and one ulp past the bounds."""
    log_ratio, advantage = adversarial_case(4096, dtype, seed=1)
    eps_t = torch.tensor(eps, dtype=dtype)
    log_ratio[:8] = torch.stack([eps_t.log1p(), (-eps_t).log1p(),
                                 torch.nextafter(eps_t.log1p(), torch.tensor(9.0, dtype=dtype)),
                                 torch.nextafter((-eps_t).log1p(), torch.tensor(-9.0, dtype=dtype)),
                                 eps_t.log1p(), (-eps_t).log1p(), eps_t.log1p(), (-eps_t).log1p()])
    ratio = log_ratio.exp()
    step = make_shape("step", eps=eps).to(dtype).gate_from_log_ratio(log_ratio, ratio, advantage)
    assert 0 < step.sum() < len(step)
    annealed = make_shape("annealed_clip", eps_start=eps, eps_end=eps).to(dtype)
    annealed_from_start = make_shape("annealed_clip", eps_start=eps, eps_end=0.05).to(dtype)
    for progress in (0.0, 0.37, 1.0):
        annealed.set_context(progress=progress)
        assert torch.equal(annealed.gate_from_log_ratio(log_ratio, ratio, advantage), step)
    assert torch.equal(annealed_from_start.gate_from_log_ratio(log_ratio, ratio, advantage), step)
    others = [make_shape("clip_higher", eps_low=eps, eps_high=eps),
              make_shape("rollback", eps=eps, alpha=0.0)]
    for shape in others:
        assert torch.equal(shape.to(dtype).gate_from_log_ratio(log_ratio, ratio, advantage), step)


def test_clip_higher_loss_gradients_equal_step_when_symmetric():
    actor, critic = make_actor_critic(torch.float32)
    log_ratio, advantage = adversarial_case(512, torch.float32, seed=2)
    batch = make_batch(actor, log_ratio, advantage)
    parameters = list(actor.parameters())
    results = []
    for shape in (make_shape("step"), make_shape("clip_higher", eps_low=0.2, eps_high=0.2)):
        for parameter in parameters:
            parameter.grad = None
        loss = KLipPPOLoss(actor, critic, shape=shape, normalize_advantage=False)
        loss(batch.clone())["loss_objective"].backward()
        results.append([parameter.grad.clone() for parameter in parameters])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# -- drifts ------------------------------------------------------------------------------


def test_a_drift_is_registered_from_a_function_alone(clean_registry):
    @register_drift("quad_band", params={"eps": Param(0.2, 0.0, low_inclusive=False, search=(0.05, 0.4))})
    def quad_band(ratio, advantage, eps):
        """A quadratic penalty outside the band only."""
        outside = (ratio - 1).abs() - eps
        return advantage.abs() * torch.relu(outside) ** 2

    assert issubclass(quad_band, DriftShape) and "quad_band" in available_shapes()
    assert quad_band.__doc__.startswith("A quadratic penalty")
    shape = make_shape("quad_band", eps=0.1).double()
    ratio, advantage = random_inputs(seed=4)
    nonzero = advantage != 0
    expected = advantage.sign() * 2 * torch.relu((ratio - 1).abs() - 0.1) * (ratio - 1).sign()
    torch.testing.assert_close(shape.gate(ratio, advantage)[nonzero], expected[nonzero])
    with pytest.raises(ValueError, match="'eps' = -1 is outside"):
        make_shape("quad_band", eps=-1.0)


def test_drift_parameters_come_from_function_defaults(clean_registry):
    @register_drift("plain")
    def plain(ratio, advantage, strength=0.5):
        return strength * advantage * (ratio - 1) ** 2

    assert plain.params["strength"].default == 0.5
    gate = make_shape("plain", strength=2.0).gate(torch.tensor([1.5]), torch.tensor([3.0]))
    assert gate.item() == pytest.approx(2.0 * 2 * 0.5)
    with pytest.raises(ValueError, match="needs a default value or a Param"):
        @register_drift("no_default")
        def no_default(ratio, advantage, scale):
            return scale * ratio

    with pytest.raises(ValueError, match="params width are not arguments"):
        @register_drift("mismatch", params={"width": 1.0})
        def mismatch(ratio, advantage):
            return ratio

    with pytest.raises(TypeError, match="must take"):
        @register_drift("one_argument")
        def one_argument(ratio):
            return ratio


def test_drift_gate_is_safe_at_zero_advantage_and_carries_no_gradient(clean_registry):
    @register_drift("unweighted")
    def unweighted(ratio, advantage):
        return (ratio - 1) ** 2  # dPhi/dw != 0 at A == 0: g would be x/0 there

    shape = make_shape("unweighted")
    ratio = torch.tensor([0.5, 1.5, 2.0], requires_grad=True)
    advantage = torch.tensor([0.0, 0.0, 2.0])
    gate = shape.gate(ratio, advantage)
    assert gate.tolist() == [0.0, 0.0, 1.0]
    assert gate.grad_fn is None  # a stop-gradient quantity even on grad-carrying ratios
    with torch.inference_mode():
        assert shape.gate(ratio.detach(), advantage).tolist() == [0.0, 0.0, 1.0]
    log_ratio = ratio.detach().log().requires_grad_()
    objective, _ = klip_objective(shape, log_ratio, advantage)
    objective.sum().backward()
    assert torch.isfinite(log_ratio.grad).all()


def test_drift_shapes_pickle_copy_and_round_trip_through_json():
    for name in ("spo", "dpo"):
        shape = make_shape(name)
        ratio, advantage = random_inputs(64)
        expected = shape.double().gate(ratio, advantage)
        for clone in (pickle.loads(pickle.dumps(shape)), copy.deepcopy(shape),
                      shape_from_dict(shape.to_dict()).double()):
            assert type(clone) is type(shape)
            assert torch.equal(clone.gate(ratio, advantage), expected)


# -- conditioned shapes ----------------------------------------------------------------------


def test_annealed_clip_narrows_with_progress():
    shape = make_shape("annealed_clip", eps_start=0.2, eps_end=0.1)
    ratio = torch.tensor([1.15, 0.85, 1.15, 0.85])
    advantage = torch.tensor([1.0, -1.0, -1.0, 1.0])
    assert shape.gate(ratio, advantage).tolist() == [0, 0, 0, 0]
    shape.set_context(progress=0.75)  # eps = 0.125: both ratios are now past the band
    assert shape.current_eps().item() == pytest.approx(0.125)
    assert shape.gate(ratio, advantage).tolist() == [1, 1, 0, 0]
    assert shape.gate_from_log_ratio(ratio.log(), ratio, advantage).tolist() == [1, 1, 0, 0]


def test_context_validation_and_simple_shapes_are_unchanged():
    shape = make_shape("annealed_clip")
    with pytest.raises(ValueError, match=r"'progress' = 1.5 is outside its allowed range"):
        shape.set_context(progress=1.5)
    with pytest.raises(ValueError, match="unknown context 'temperature'"):
        shape.set_context(temperature=0.3)
    with pytest.raises(ValueError, match="must be one number"):
        shape.set_context(progress=torch.tensor([0.1, 0.2]))
    step = make_shape("step")
    step.set_context(progress=0.5)  # ignored: step declares no context
    assert not hasattr(step, "progress") and list(step.state_dict()) == []

    class Impossible(CoefficientShape):
        context = ("weather",)

    with pytest.raises(ValueError, match="unknown context 'weather'"):
        Impossible()


def test_progress_is_saved_and_each_copy_has_its_own():
    shape = make_shape("annealed_clip")
    shape.set_context(progress=0.25)
    restored = shape_from_dict(shape.to_dict())
    assert restored.progress.item() == 0.25
    twin = copy.deepcopy(shape)
    twin.set_context(progress=1.0)
    assert shape.progress.item() == 0.25
    assert make_shape("annealed_clip").progress.item() == 0.0


def test_conditioned_shape_in_a_study():
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    shape = get_shape_class("annealed_clip").from_trial(trial, prefix="shape.")
    assert set(trial.params) == {"shape.eps_start", "shape.eps_end"}
    shape.set_context(progress=1.0)
    assert shape.current_eps().item() == pytest.approx(trial.params["shape.eps_end"])


# -- training ---------------------------------------------------------------------------

TINY = dict(task="Pendulum-v1", rollout_steps=256, minibatch_size=64, epochs=1, eval_episodes=0,
            checkpoint_every=1)


def last_checkpoint(out):
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_a_drift_in_a_few_lines_trains(tmp_path, clean_registry):
    @register_drift("soft_square", params={"eps": 0.3})
    def soft_square(ratio, advantage, eps):
        return advantage.abs() * (ratio - 1) ** 2 / (2 * eps)

    result = train(TrainConfig(**TINY, steps=256, shape="soft_square"), tmp_path / "run", progress=False)
    assert result.frames == 256
    row = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header, values = row[0].split(","), row[1].split(",")
    gate_mean = float(values[header.index("train/gate_mean")])
    assert math.isfinite(gate_mean) and gate_mean != 0.0  # the drift's gate acted


def test_the_trainer_sets_progress(tmp_path, monkeypatch):
    seen: list[float] = []
    original = get_shape_class("annealed_clip").set_context

    def record(self, **context):
        if "progress" in context:  # epoch_progress is set too, before each epoch
            seen.append(float(context["progress"]))
        original(self, **context)

    monkeypatch.setattr(get_shape_class("annealed_clip"), "set_context", record)
    train(TrainConfig(**TINY, steps=3 * 256, shape="annealed_clip"), tmp_path / "run", progress=False)
    assert seen == pytest.approx([0.0, 1 / 3, 2 / 3])
    state = single_run_state(last_checkpoint(tmp_path / "run"))
    assert state["loss_module.shape.progress"].item() == pytest.approx(2 / 3)


def test_registry_lists_every_new_shape():
    for name in ("rollback", "spo", "dpo", "clip_higher", "truncate", "annealed_clip"):
        assert name in available_shapes()


def test_register_shape_still_rejects_plain_functions(clean_registry):
    with pytest.raises(TypeError, match="needs a CoefficientShape subclass"):
        register_shape("function")(lambda ratio, advantage: ratio)


def test_a_conditioned_run_resumes_like_the_uninterrupted_run(tmp_path):
    config = TrainConfig(**TINY, steps=3 * 256, shape="annealed_clip",
                         shape_params={"eps_start": 0.3, "eps_end": 0.05})
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after_iterations=2)
    train(config, tmp_path / "split", resume=True, progress=False)
    whole, split = last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "split")
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key
    rows = [(tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("whole", "split")]
    header = rows[0][0].split(",")
    kept = [index for index, column in enumerate(header) if not column.startswith("time/")]
    for a, b in zip(rows[0][1:], rows[1][1:], strict=True):
        assert [a.split(",")[i] for i in kept] == [b.split(",")[i] for i in kept]


def plane_shapes(names):
    """The shapes whose gate is a function of (w, A) alone (and of `progress`)."""
    from klip.shapes.base import CONTEXT_VARIABLES

    return [name for name in names if all(CONTEXT_VARIABLES[key].kind == "iteration"
                                          for key in get_shape_class(name).context)]


def test_gallery_draws_the_shapes_that_read_per_sample_context(tmp_path):
    from klip.cli import main

    assert set(plane_shapes(available_shapes())) < set(available_shapes())
    assert main(["shapes", "plot", "--all", "--out", str(tmp_path / "gallery.png")]) == 0


def test_gallery_of_every_registered_shape(tmp_path, capsys, clean_registry, monkeypatch):
    from klip.algos import plots
    from klip.cli import main
    from klip.shapes import registry

    @register_drift("gallery_extra")
    def gallery_extra(ratio, advantage, scale=1.0):
        return scale * advantage.abs() * (ratio - 1) ** 2

    png = tmp_path / "gallery.png"
    # algos/plots.py draws gates on the (w, A) plane and knows only `progress`; shapes that
    # read per-update or per-sample context are drawn once it supplies them (the xfail below).
    with monkeypatch.context() as patch:
        patch.setattr(registry, "available_shapes", lambda: plane_shapes(available_shapes()))
        assert main(["shapes", "plot", "--all", "--out", str(png)]) == 0
    assert "gallery written" in capsys.readouterr().out
    assert png.stat().st_size > 50_000
    drawn: list[str] = []

    def record(shapes, out, **kwargs):
        drawn.extend(shape.display_name() for shape in shapes)
        return out

    monkeypatch.setattr(plots, "plot_gallery", record)
    assert main(["shapes", "plot", "--all", "--out", str(png)]) == 0
    assert drawn == available_shapes() and "gallery_extra" in drawn
    assert main(["shapes", "plot", "--out", str(tmp_path / "none.png")]) == 2
    assert "name at least one shape, or pass --all" in capsys.readouterr().err
