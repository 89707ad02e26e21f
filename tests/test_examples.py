"""The two worked examples of a klip shape in someone else's PPO loop, and the torch-only
functional API they use.

- examples/cleanrl_ppo.py: a CleanRL-style loop; `step` gives every minibatch's gradients of
  CleanRL's clipped loss bit for bit (`torch.equal` per parameter, 32 updates).
- examples/torchrl_ppo.py: TorchRL's tutorial loop (Collector, GAE, ClipPPOLoss) with
  KLipPPOLoss in its place: final parameters bitwise equal for `step`.
- `klip.shapes.functional` imports no TorchRL, Lightning, MuJoCo, gymnasium or tensordict.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from klip.shapes import make_shape
from klip.shapes.functional import effective_advantage, klip_objective, policy_loss

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import cleanrl_ppo  # noqa: E402
import torchrl_ppo  # noqa: E402


@pytest.fixture(scope="module")
def cleanrl_clip_run():
    return cleanrl_ppo.train(None)


def test_cleanrl_loop_step_gives_the_clipped_losss_gradients_bitwise(cleanrl_clip_run):
    agent, record = cleanrl_clip_run
    klip_agent, klip_record = cleanrl_ppo.train(make_shape("step", eps=cleanrl_ppo.Args().clip_coef))
    assert len(record.gradients) == len(klip_record.gradients) == 32
    for update, (expected, actual) in enumerate(zip(record.gradients, klip_record.gradients, strict=True)):
        for parameter, (reference, klip) in enumerate(zip(expected, actual, strict=True)):
            assert torch.equal(reference, klip), (update, parameter)
    for reference, klip in zip(agent.parameters(), klip_agent.parameters(), strict=True):
        assert torch.equal(reference, klip)
    # The band was exercised: samples were clipped in most updates ...
    assert sum(fraction > 0 for fraction in record.clip_fractions) >= 16
    # ... and no rounding tie (the one case where CleanRL's torch.max differs) occurred.
    assert record.ties == 0 and klip_record.ties == 0


def test_cleanrl_loop_with_another_shape_trains_differently(cleanrl_clip_run):
    agent, _ = cleanrl_clip_run
    sigmoid_agent, _ = cleanrl_ppo.train(make_shape("sigmoid", eps=0.2, tau=0.05))
    assert all(torch.isfinite(parameter).all() for parameter in sigmoid_agent.parameters())
    assert not torch.equal(next(agent.parameters()), next(sigmoid_agent.parameters()))


def test_torchrl_loop_klip_ppo_loss_ends_bitwise_where_clip_ppo_loss_does():
    policy, value, logs = torchrl_ppo.train(None, clip=True)
    klip_policy, klip_value, klip_logs = torchrl_ppo.train(None)
    expected = [*policy.state_dict().values(), *value.state_dict().values()]
    actual = [*klip_policy.state_dict().values(), *klip_value.state_dict().values()]
    assert len(expected) == len(actual) == 12
    for reference, klip in zip(expected, actual, strict=True):
        assert torch.equal(reference, klip)
    for key in ("clip_fraction", "ESS", "max_ratio", "mean_ratio", "kl_approx", "loss_critic"):
        assert logs[key] == klip_logs[key], key
    assert logs["loss_objective"] != klip_logs["loss_objective"]  # values differ, gradients do not
    assert sum(logs["clip_fraction"]) / len(logs["clip_fraction"]) > 0.05
    # An actor built the TorchRL way, not klip's networks
    assert type(policy).__module__.startswith("torchrl.")


def test_torchrl_loop_with_another_shape_runs():
    policy, _, logs = torchrl_ppo.train("sigmoid", clip=False)
    assert all(torch.isfinite(parameter).all() for parameter in policy.parameters())
    assert len(logs["reward"]) == 3


def test_the_one_difference_from_cleanrl_a_rounding_tie_outside_the_band():
    """Just past 1 + eps, A*w and A*clamp(w) can round to the same float: torch.max then splits
    the gradient (A/2), `step` gives 0 (a kill; A/2 instead of A on the other side, tested
    below). The examples' test counts such ties (none occurred)."""
    upper = torch.tensor(1.2, dtype=torch.float32)
    ratio = torch.nextafter(upper, torch.tensor(2.0))
    generator = torch.Generator().manual_seed(0)
    candidates = 1 + torch.rand(10_000, generator=generator)
    tie = candidates * ratio == candidates * upper
    advantage = candidates[tie][:1]
    assert advantage.numel() == 1
    log_ratio = ratio.log().reshape(1).requires_grad_()
    w = log_ratio.exp()
    torch.max(-advantage * w, -advantage * torch.clamp(w, 1 - 0.2, 1 + 0.2)).mean().backward()
    cleanrl = log_ratio.grad.clone()
    log_ratio.grad = None
    policy_loss(make_shape("step", eps=0.2), log_ratio, advantage, space="ratio").backward()
    assert float(log_ratio.grad) == 0.0
    assert torch.equal(cleanrl, -advantage * w.detach() / 2)


def test_functional_api_on_a_synthetic_batch():
    generator = torch.Generator().manual_seed(4)
    log_ratio = 0.3 * torch.randn(512, generator=generator)
    advantage = torch.randn(512, generator=generator)
    shape = make_shape("step")
    objective, gate = klip_objective(shape, log_ratio, advantage)
    assert objective.shape == gate.shape == (512,)
    assert set(gate.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(effective_advantage(shape, log_ratio, advantage), advantage * (1 - gate))
    with pytest.raises(ValueError, match="same shape"):
        policy_loss(shape, log_ratio.unsqueeze(-1), advantage)
    with pytest.raises(ValueError, match="space must be"):
        klip_objective(shape, log_ratio, advantage, space="linear")


HEAVY = ("torchrl", "lightning", "pytorch_lightning", "mujoco", "gymnasium", "tensordict", "optuna",
         "matplotlib")


@pytest.mark.parametrize(("statement", "module"), [
    ("import klip.shapes.functional", "klip.shapes.functional"),
    ("import klip.shapes.testing", "klip.shapes.testing"),
    ("from klip.algos import klip_objective", "klip.shapes.functional"),
])
def test_the_functional_api_imports_with_torch_alone(statement, module):
    code = (f"{statement}; from klip.shapes import make_shape; make_shape('sigmoid'); "
            "import sys; print('\\n'.join(sys.modules))")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                            text=True, check=True)
    # What -X importtime reports, and what the process holds at the end (the authority: an
    # import made through a module's __getattr__ need not show in importtime's tree).
    logged = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    loaded = set(result.stdout.split())
    assert "torch" in loaded and module in loaded
    for imported in (logged, loaded):
        heavy = sorted(name for name in imported
                       if name.split(".")[0] in HEAVY or name.startswith("klip.algos."))
        assert heavy == [], heavy


def test_policy_loss_is_cleanrls_per_sample_within_200_ulps_of_both_band_edges():
    """Per-sample gradients (the loss is a mean of per-sample terms, so d loss / d log w_i is
    sample i's alone) of `policy_loss(step, space="ratio")` and CleanRL's clipped loss, on ratios
    0..200 float32 ulps either side of 1 - eps and 1 + eps, advantages of both signs over six
    decades: equal everywhere except exactly at the rounding ties, where CleanRL's is half of
    the whole gradient (`step`: 0 past the bound A pushes towards, the whole past the other)."""
    eps = 0.2
    shape = make_shape("step", eps=eps)
    generator = torch.Generator().manual_seed(7)
    differences = ties_seen = samples = kill_ties = 0
    for edge in (1 - eps, 1 + eps):
        ratio = torch.tensor([edge], dtype=torch.float32).repeat(401)
        for step in range(1, 201):
            ratio[200 + step] = torch.nextafter(ratio[200 + step - 1], torch.tensor(9.0))
            ratio[200 - step] = torch.nextafter(ratio[200 - step + 1], torch.tensor(0.0))
        for _ in range(50):
            log_ratio = ratio.log()
            decades = 6 * torch.rand(401, generator=generator) - 3
            advantage = torch.randn(401, generator=generator) * 10**decades
            reference = log_ratio.clone().requires_grad_()
            w = reference.exp()
            torch.max(-advantage * w, -advantage * torch.clamp(w, 1 - eps, 1 + eps)).mean().backward()
            klip = log_ratio.clone().requires_grad_()
            policy_loss(shape, klip, advantage, space="ratio").backward()
            with torch.no_grad():
                w = log_ratio.exp()
                clipped = torch.clamp(w, 1 - eps, 1 + eps)
                tie = (advantage * w == advantage * clipped) & (w != clipped) & (advantage != 0)
            differ = reference.grad != klip.grad
            assert torch.equal(differ, tie)
            torch.testing.assert_close(reference.grad[tie], (-advantage * w / 2)[tie] / 401)
            killed = (advantage > 0) == (w > 1)
            assert (klip.grad[tie & killed] == 0).all()
            torch.testing.assert_close(klip.grad[tie & ~killed], 2 * reference.grad[tie & ~killed])
            kill_ties += int((tie & killed).sum())
            differences += int(differ.sum())
            ties_seen += int(tie.sum())
            samples += 401
    assert samples == 40_100 and differences == ties_seen
    assert 0 < kill_ties < ties_seen < samples // 10  # both kinds of tie occurred, and few
    print(f"{samples} samples, {differences} differences, all at ties ({kill_ties} on the kill side)")
