"""A klip shape in a CleanRL-style PPO loop (single file, Pendulum-v1, continuous actions).

The loop is written the way CleanRL's `ppo_continuous_action.py` writes it: an `Agent` with
an MLP critic, an MLP actor mean and a state-independent log-std, storage tensors, GAE, and
minibatch epochs whose policy loss is the clipped surrogate. Using a shape changes two
places, both marked `# klip:` below:

    from klip.shapes import make_shape                       # klip: import
    from klip.shapes.functional import policy_loss

    pg_loss1 = -mb_advantages * ratio                         # CleanRL's clipped loss ...
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
    pg_loss = policy_loss(shape, logratio, mb_advantages, space="ratio")   # klip: ... replaced

`space="ratio"` decides where the ratio leaves the band on `ratio = exp(logratio)`, as the
clamp does. With `shape = make_shape("step", eps=clip_coef)` every gradient equals the
clipped loss's bit for bit (`tests/test_examples.py` compares every minibatch's gradients
with `torch.equal`), with one exception it counts: at a rounding tie outside the band,
`A*ratio == A*clamp(ratio)` although `ratio != clamp(ratio)`, `torch.max` hands each term
half the gradient (A/2 in all) where `step` gives 0 (killed) or A (the other side). The
loss *values* differ (0 instead of
`-clamp(ratio)*A` on the clipped samples): log gradients or returns, not `pg_loss`.

Run: `python examples/cleanrl_ppo.py --shape sigmoid` (default `step`; `--shape clip` for
CleanRL's own loss). Imports torch, gymnasium and `klip.shapes` only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions.normal import Normal

from klip.shapes import CoefficientShape, make_shape  # klip: import
from klip.shapes.functional import policy_loss


@dataclass
class Args:
    env_id: str = "Pendulum-v1"
    seed: int = 1
    iterations: int = 2
    num_steps: int = 256
    learning_rate: float = 3e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


@dataclass
class Record:
    """What the test reads: each update's gradients and the boundary statistics."""

    gradients: list[list[torch.Tensor]] = field(default_factory=list)
    clip_fractions: list[float] = field(default_factory=list)
    ties: int = 0
    returns: list[float] = field(default_factory=list)


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, act_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        action_mean = self.actor_mean(x)
        action_std = torch.exp(self.actor_logstd.expand_as(action_mean))
        probs = Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


def train(shape: CoefficientShape | None, args: Args | None = None) -> tuple[Agent, Record]:
    """PPO on `args.env_id`; `shape=None` runs CleanRL's clipped loss itself."""
    args = args or Args()
    record = Record()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    env = gym.make(args.env_id)
    env.action_space.seed(args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = Agent(obs_dim, act_dim)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    batch_size = args.num_steps
    minibatch_size = batch_size // args.num_minibatches

    obs = torch.zeros((args.num_steps, obs_dim))
    actions = torch.zeros((args.num_steps, act_dim))
    logprobs = torch.zeros(args.num_steps)
    rewards = torch.zeros(args.num_steps)
    dones = torch.zeros(args.num_steps)
    values = torch.zeros(args.num_steps)

    next_obs_np, _ = env.reset(seed=args.seed)
    next_obs = torch.tensor(next_obs_np, dtype=torch.float32)
    next_done = torch.zeros(())
    episode_return = 0.0
    for _iteration in range(args.iterations):
        for step in range(args.num_steps):
            obs[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs.unsqueeze(0))
                values[step] = value.flatten()[0]
            actions[step] = action[0]
            logprobs[step] = logprob[0]
            next_obs_np, reward, terminated, truncated, _ = env.step(action[0].numpy())
            rewards[step] = float(reward)
            episode_return += float(reward)
            done = terminated or truncated
            if done:
                record.returns.append(episode_return)
                episode_return = 0.0
                next_obs_np, _ = env.reset()
            next_obs = torch.tensor(next_obs_np, dtype=torch.float32)
            next_done = torch.tensor(float(done))

        with torch.no_grad():  # GAE
            next_value = agent.get_value(next_obs.unsqueeze(0)).flatten()[0]
            advantages = torch.zeros_like(rewards)
            lastgaelam = torch.zeros(())
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                advantages[t] = lastgaelam
            returns = advantages + values

        b_inds = np.arange(batch_size)
        for _epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start : start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(obs[mb_inds], actions[mb_inds])
                logratio = newlogprob - logprobs[mb_inds]
                ratio = logratio.exp()
                mb_advantages = advantages[mb_inds]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                with torch.no_grad():
                    clipped = torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                    record.clip_fractions.append(float((clipped != ratio).float().mean()))
                    tie = (mb_advantages * ratio == mb_advantages * clipped) & (mb_advantages != 0)
                    record.ties += int((tie & (clipped != ratio)).sum())
                if shape is None:  # CleanRL's clipped policy loss
                    pg_loss1 = -mb_advantages * ratio
                    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                else:  # klip: the shape's policy loss in its place
                    pg_loss = policy_loss(shape, logratio, mb_advantages, space="ratio")

                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - returns[mb_inds]) ** 2
                    v_clipped = values[mb_inds] + torch.clamp(
                        newvalue - values[mb_inds], -args.clip_coef, args.clip_coef)
                    v_loss_clipped = (v_clipped - returns[mb_inds]) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((newvalue - returns[mb_inds]) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                record.gradients.append([parameter.grad.clone() for parameter in agent.parameters()])
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
    env.close()
    return agent, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="step", help="a registered shape, or 'clip' for CleanRL's loss")
    parser.add_argument("--iterations", type=int, default=20)
    options = parser.parse_args()
    args = Args(iterations=options.iterations)
    shape = None if options.shape == "clip" else make_shape(options.shape, eps=args.clip_coef)
    _, record = train(shape, args)
    recent = record.returns[-5:]
    print(f"{options.shape}: {len(record.returns)} episodes, last {len(recent)} returns "
          f"{np.mean(recent):.1f}; ties at the band edge: {record.ties}")


if __name__ == "__main__":
    main()
