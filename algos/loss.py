"""Policy losses in TorchRL's PPO family.

- `klip_objective` (from `klip.shapes.functional`, which needs torch alone): the per-sample
  KL template `w*A + sg(beta)*log pi` with `beta = -w*A*g(w, A)` for a gate `g`, written once.
- `KLipPPOLoss`: that template as a TorchRL `LossModule`; with the `step` shape its
  gradients equal `ClipPPOLoss`'s bit for bit. It subclasses TorchRL's `PPOLoss`, so it
  takes the same actor/critic arguments, tensordict keys (`set_keys`), critic / entropy /
  value-clipping / advantage-normalisation options and value estimators as `ClipPPOLoss`,
  and drops into any TorchRL pipeline.
- `KLipTensorLoss`: the same losses on plain tensors, bitwise equal to `KLipPPOLoss`.
  **This is what `klip train` runs for shapes**; the module is its tested reference.
- `ScalarKLPPOLoss`: the classic PPO-KL with one beta for all samples (fixed, or adapted
  once per rollout), for comparison.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.objectives import ClipPPOLoss, LossModule, PPOLoss

from klip import compat
from klip.algos.networks import (
    ValueHead,
    categorical_head,
    categorical_kl,
    diagonal_gaussian_kl,
    gaussian_entropy,
    gaussian_log_prob,
    has_categorical_policy,
    policy_head,
)
from klip.shapes import CoefficientShape, get_shape_class
from klip.shapes.base import CONTEXT_VARIABLES
from klip.shapes.functional import PolicyForm, klip_objective

# TorchRL's `_standardize` clamps the advantage std at float32's resolution.
ADVANTAGE_STD_MIN = torch.finfo(torch.float).resolution

# Diagnostics written next to the losses (all detached scalars).
KLIP_DIAGNOSTICS = (
    "fraction_in",
    "fraction_kill",
    "fraction_pass",
    "fraction_changed",
    "clip_fraction",
    "gate_mean",
    "beta_abs_kill_mean",
    "kl_k3",
)


def sample_context_names(shape: CoefficientShape) -> tuple[str, ...]:
    """The per-sample context variables `shape` reads (`kl`, `old_log_prob`, `old_action_z`)."""
    return tuple(name for name in shape.context
                 if CONTEXT_VARIABLES[name].kind == "sample")


@torch.no_grad()
def sample_context(names: tuple[str, ...], *, action: Tensor, old_log_prob: Tensor,
                   old_loc: Tensor | None = None, old_scale: Tensor | None = None,
                   loc: Tensor | None = None, scale: Tensor | None = None,
                   old_logits: Tensor | None = None, logits: Tensor | None = None) -> dict[str, Tensor]:
    """The per-sample context `names` asks for, detached, shaped like the `[B, 1]` ratios
    (`old_action_z` `[B, d]`): the per-state KL(rollout policy || current policy) in closed form
    (torch's: of the diagonal Gaussians `loc`/`scale`, or of the categoricals `logits`), the
    rollout log-probability, the standardised action (Gaussian only)."""
    values: dict[str, Tensor] = {}
    categorical = old_logits is not None
    if "kl" in names:
        if categorical:
            assert logits is not None
            values["kl"] = categorical_kl(old_logits, logits.detach()).unsqueeze(-1)
        else:
            assert old_loc is not None and old_scale is not None and loc is not None and scale is not None
            kl = diagonal_gaussian_kl(old_loc, old_scale, loc.detach(), scale.detach())
            values["kl"] = kl.unsqueeze(-1)
    if "old_log_prob" in names:
        values["old_log_prob"] = old_log_prob.unsqueeze(-1)
    if "old_action_z" in names:
        if categorical or old_loc is None or old_scale is None:
            raise ValueError("context 'old_action_z' (a standardised action) needs a Gaussian policy")
        values["old_action_z"] = (action - old_loc) / old_scale
    return values


class _PPOFamilyLoss(PPOLoss):
    """What every policy term here shares with TorchRL's PPO losses; subclasses add the term."""

    def __init__(
        self,
        actor_network: Any,
        critic_network: Any,
        *,
        clip_value: bool | float | None,
        policy_clip_radius: float,
        **kwargs: Any,
    ) -> None:
        # As in ClipPPOLoss, `clip_value=True` means "the policy's own clip radius".
        if isinstance(clip_value, bool):
            clip_value = policy_clip_radius if clip_value else None
        super().__init__(actor_network, critic_network, clip_value=clip_value, **kwargs)

    def _advantage_and_log_weight(
        self, tensordict: TensorDictBase
    ) -> tuple[TensorDictBase, Tensor, Tensor, Tensor | None, Any, Tensor]:
        tensordict = tensordict.clone(False)
        advantage = tensordict.get(self.tensor_keys.advantage, None)
        update_norm = advantage is None
        if advantage is None:
            if self.critic_network is None:
                raise RuntimeError("no advantage in the data and no critic to compute it")
            self.value_estimator(
                tensordict,
                params=compat.ppo_detached_critic_params(self),
                target_params=self.target_critic_network_params,
            )
            advantage = tensordict.get(self.tensor_keys.advantage)
        advantage = compat.ppo_normalized_advantage(self, advantage, tensordict, update_norm)
        log_weight, dist, kl_approx, log_is_weight = compat.ppo_log_weight(
            self, tensordict, advantage.shape[:-1]
        )
        if advantage.shape != log_weight.shape:
            advantage = advantage.expand_as(log_weight)
        return tensordict, advantage, log_weight, log_is_weight, dist, kl_approx

    def _add_entropy_critic_and_reduce(
        self, td_out: TensorDict, tensordict: TensorDictBase, dist: Any, adv_shape: torch.Size
    ) -> TensorDict:
        if self.entropy_bonus:
            entropy, loss_entropy = compat.ppo_entropy_loss(self, dist, adv_shape)
            td_out.set("entropy", entropy.detach().mean())
            td_out.set("loss_entropy", loss_entropy)
        if compat.ppo_has_critic(self):
            loss_critic, value_clip_fraction, explained_variance = self.loss_critic(tensordict)
            td_out.set("loss_critic", loss_critic)
            if value_clip_fraction is not None:
                td_out.set("value_clip_fraction", value_clip_fraction)
            if explained_variance is not None:
                td_out.set("explained_variance", explained_variance)
        td_out = td_out.named_apply(
            lambda name, value: compat.ppo_reduce(self, value, tensordict).squeeze(-1)
            if name.startswith("loss_")
            else value,
        )
        compat.ppo_release_weakrefs(self, tensordict, td_out)
        return td_out

    def update_after_rollout(self, stats: Mapping[str, float]) -> None:
        """Called once per PPO iteration with that iteration's mean loss metrics."""

    def _policy_out_keys(self) -> list[str]:
        raise NotImplementedError

    @property
    def out_keys(self) -> list[str]:
        keys = compat.ppo_cached_out_keys(self)
        if keys is None:
            keys = self._policy_out_keys()
            if self.entropy_bonus:
                keys += ["entropy", "loss_entropy"]
            if compat.ppo_has_critic(self):
                keys.append("loss_critic")
            if self.clip_value:
                keys.append("value_clip_fraction")
            compat.set_ppo_cached_out_keys(self, keys)
        return keys

    @out_keys.setter
    def out_keys(self, values: list[str]) -> None:
        compat.set_ppo_cached_out_keys(self, values)


# Every keyword `ClipPPOLoss` takes: its own, and those it hands to `PPOLoss` (which swallows
# any other keyword silently; KLipPPOLoss refuses those instead). Read from the signatures, so
# a TorchRL release that adds an option is honoured (PPOLoss reads it) rather than refused.
def _ppo_keywords() -> frozenset[str]:
    names: set[str] = set()
    for function in (PPOLoss.__init__, ClipPPOLoss.__init__):
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY or parameter.default is not parameter.empty:
                names.add(parameter.name)
    return frozenset(names - {"actor_network", "critic_network"})


CLIP_PPO_KEYWORDS = _ppo_keywords()
CLIP_EPSILON_NAMES = ("clip_epsilon", "clip_epsilon_low", "clip_epsilon_high")


def band_parameters(shape_class: type[CoefficientShape]) -> tuple[str, ...] | None:
    """The parameters that set a shape's band `[1-eps_low, 1+eps_high]`: `("eps",)`,
    `("eps_low", "eps_high")`, or None for a shape without one (`none`, `dpo`, ...)."""
    if "eps" in shape_class.params:
        return ("eps",)
    if "eps_low" in shape_class.params and "eps_high" in shape_class.params:
        return ("eps_low", "eps_high")
    return None


def _clip_epsilon_pair(clip_epsilon: Any) -> tuple[float, float] | None:
    """`(eps_low, eps_high)` of an asymmetric `clip_epsilon`, None for a scalar."""
    if not isinstance(clip_epsilon, (tuple, list)):
        return None
    if len(clip_epsilon) != 2:
        raise ValueError(f"clip_epsilon tuple must have length 2, got {clip_epsilon}")
    return float(clip_epsilon[0]), float(clip_epsilon[1])


def _shape_with_clip_epsilon(shape: CoefficientShape | str | None, clip_epsilon: Any) -> CoefficientShape:
    """The shape `KLipPPOLoss` runs: `clip_epsilon` sets its band as `ClipPPOLoss`'s clamp
    bounds would be set, or the combination is refused with a ValueError."""
    pair = _clip_epsilon_pair(clip_epsilon)
    if shape is None:  # PPO-Clip itself, with ClipPPOLoss's band
        shape = "clip_higher" if pair is not None else "step"
    if not isinstance(shape, (str, CoefficientShape)):
        raise TypeError(f"shape must be a CoefficientShape or a name, got {type(shape)}")
    cls = get_shape_class(shape) if isinstance(shape, str) else type(shape)
    name = cls.display_name()
    if clip_epsilon is None:
        return cls() if isinstance(shape, str) else shape
    keys = band_parameters(cls)
    if keys is None:
        raise ValueError(f"clip_epsilon: shape {name!r} has no band (no eps, or eps_low and eps_high, "
                         f"parameter) for clip_epsilon to set; leave clip_epsilon out")
    if keys == ("eps",):
        if pair is not None:
            raise ValueError(f"clip_epsilon={tuple(clip_epsilon)} is asymmetric and shape {name!r} has one "
                             f"symmetric eps; use shape='clip_higher' (ClipPPOLoss's asymmetric band)")
        wanted = {"eps": float(clip_epsilon)}
    else:
        low, high = pair if pair is not None else (float(clip_epsilon), float(clip_epsilon))
        wanted = {keys[0]: low, keys[1]: high}
    if isinstance(shape, str):
        return cls(**wanted)  # the shape validates the values, naming the parameter
    differing = {key: value for key, value in wanted.items() if shape.hparams[key] != value}
    if differing:
        given = ", ".join(f"{key}={shape.hparams[key]:g}" for key in differing)
        raise ValueError(f"clip_epsilon={clip_epsilon} disagrees with the shape's {given}: set the band "
                         f"once, on the shape or with clip_epsilon and the shape's name")
    return shape


def _carry_context(old: CoefficientShape, new: CoefficientShape) -> None:
    """Per-update and per-sample context set on `old` (not state: never saved) onto `new`.

    Per-iteration context is a persistent buffer, which `load_state_dict` carries already.
    """
    values: dict[str, Any] = {}
    for name in old.context:
        kind = getattr(CONTEXT_VARIABLES.get(name), "kind", "iteration")
        if kind == "iteration" or name not in getattr(old, "_context_set", ()):
            continue
        values[name] = old._sample_context[name] if kind == "sample" else float(getattr(old, name))
    if values:
        new.set_context(check=False, **values)  # type: ignore[call-arg]


class KLipPPOLoss(_PPOFamilyLoss):
    """PPO with a per-sample KL coefficient `beta = -w*A*g(w, A)` from a coefficient shape.

    A drop-in for TorchRL's `ClipPPOLoss`: with the `step` shape (the default) its
    **gradients** equal `ClipPPOLoss`'s bit for bit, but its `loss_objective` **values**
    differ: it is `-w * sg(A (1-g))`, which is 0 on the clipped samples where
    `ClipPPOLoss` reports `-clip(w) A`. Compare gradients, or parameters after steps.

    Args:
        actor_network, critic_network: as for `ClipPPOLoss`.
        shape: a `CoefficientShape` or a registered shape name. Default: PPO-Clip with
            `ClipPPOLoss`'s band, `step` (eps 0.2 or `clip_epsilon`), or `clip_higher`
            for an asymmetric `clip_epsilon=(low, high)`. The shape's band also
            defines the in/kill/pass regions of the diagnostics and `clip_value=True`.
        clip_epsilon: `ClipPPOLoss`'s option, mapped to the shape's band parameters:
            a float sets `eps` (or `eps_low` and `eps_high` both), a pair `(low, high)`
            sets `eps_low`, `eps_high` (`clip_higher`, `truncate`). Refused with a
            ValueError for a shape without a band, a pair for a symmetric shape, a value
            the shape's parameter range excludes, and a shape instance whose band differs.
            As in `ClipPPOLoss`, the band is then the tensor buffer `clip_epsilon` (or
            `clip_epsilon_low`/`clip_epsilon_high` after a pair), which scripts anneal in
            place (`loss.clip_epsilon.copy_(eps * alpha)`): the next call rebuilds the
            shape with that band (its learned state kept), gating exactly as
            `ClipPPOLoss` clamps; reading the new value costs one host synchronisation
            per change. Assigning a number to it is refused, as in TorchRL.
        form: `"effective"` computes `w * sg(A*(1-g))`, which gives exactly `A` or
            `0` for a gate of exactly 0 or 1 (bitwise equal to `ClipPPOLoss` for
            `step`); `"kl"` computes the explicit `w*A + sg(beta)*log w`. Same
            gradient up to rounding.
        diagnostics: `True` (default) writes into every output `ClipPPOLoss`'s own
            statistics, computed as it computes them (`clip_fraction`, `ESS`,
            `max_ratio`, `mean_ratio`), and klip's region fractions, gate and beta
            statistics; `"deferred"` only records the per-sample inputs and computes
            klip's statistics over all calls since the last `pop_diagnostics()`, once;
            `False` skips them.
        clip_value: `True` uses the shape's `eps`; a float sets the radius.
        Every other keyword `ClipPPOLoss` accepts (`entropy_coeff`, `critic_coeff`,
        `loss_critic_type`, `normalize_advantage`, `reduction`, `separate_losses`,
        `delay_actor`, `max_importance_ratio`, `device`, `functional`, ...) goes to
        TorchRL's `PPOLoss`, which honours it as for `ClipPPOLoss`; any other keyword
        is refused with a TypeError (`PPOLoss` itself would swallow a typo).
    """

    def __init__(
        self,
        actor_network: Any = None,
        critic_network: Any = None,
        *,
        shape: CoefficientShape | str | None = None,
        clip_epsilon: float | tuple[float, float] | None = None,
        form: PolicyForm = "effective",
        diagnostics: bool | Literal["deferred"] = True,
        clip_value: bool | float | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - CLIP_PPO_KEYWORDS)
        if unknown:
            raise TypeError(
                f"KLipPPOLoss got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; it takes "
                f"ClipPPOLoss's keywords and shape, form, diagnostics"
            )
        shape = _shape_with_clip_epsilon(shape, clip_epsilon)
        if form not in ("effective", "kl"):
            raise ValueError(f"form must be 'effective' or 'kl', got {form!r}")
        if diagnostics not in (True, False, "deferred"):
            raise ValueError(f"diagnostics must be True, False or 'deferred', got {diagnostics!r}")
        keys = band_parameters(type(shape))
        # Buffers named as ClipPPOLoss names them: `clip_epsilon`, or the pair after a pair.
        if keys is None:
            band: dict[str, float] = {}
        elif keys == ("eps",) or (clip_epsilon is not None and _clip_epsilon_pair(clip_epsilon) is None):
            band = {"clip_epsilon": shape.hparams[keys[0]]}
        else:
            band = {"clip_epsilon_low": shape.hparams[keys[0]], "clip_epsilon_high": shape.hparams[keys[1]]}
        if clip_value is True and "clip_epsilon_low" in band:
            raise ValueError("clip_value=True cannot infer the value-clip threshold from an asymmetric "
                             "band; pass an explicit float threshold, e.g. clip_value=0.2")
        region_eps = float(getattr(shape, "eps", 0.2))  # as before: the trainer's diagnostics read it
        # `clip_value=True` is ClipPPOLoss's: the value is clipped at the (symmetric) band.
        super().__init__(actor_network, critic_network, clip_value=clip_value,
                         policy_clip_radius=band.get("clip_epsilon", region_eps), **kwargs)
        device = kwargs.get("device")
        if device is None:
            device = next((parameter.device for parameter in self.parameters()), torch.device("cpu"))
        self.shape = shape.to(device)
        self.form = form
        self.diagnostics = diagnostics
        self._records: list[tuple[Tensor, Tensor, Tensor]] = []
        self.register_buffer("region_eps", torch.tensor(region_eps))
        self._band_names = tuple(band)
        for buffer_name, value in band.items():
            # Not persistent: checkpoints of klip's trainer keep their keys; the shape holds the band.
            self.register_buffer(buffer_name, torch.tensor(value, device=device), persistent=False)
        self._band_values = [float(tensor) for tensor in self._band_tensors()]
        self._band_seen = self._band_version()

    def __setattr__(self, name: str, value: Any) -> None:
        # As ClipPPOLoss: scheduling a clip threshold the loss does not have would only create a
        # shadow attribute while the gate keeps its band; refuse it.
        if (name in CLIP_EPSILON_NAMES and getattr(self, "_buffers", None) is not None
                and name not in self._buffers):
            have = [key for key in CLIP_EPSILON_NAMES if key in self._buffers]
            instead = f"schedule {' / '.join(map(repr, have))} instead" if have else (
                f"shape {self.shape.display_name()!r} has no band")
            raise AttributeError(f"Cannot schedule {name!r} on this KLipPPOLoss: {instead}")
        super().__setattr__(name, value)

    def _band_version(self) -> tuple[tuple[int, int], ...]:
        return tuple((id(tensor), tensor._version) for tensor in self._band_tensors())

    def _band_tensors(self) -> list[Tensor]:
        return [self._buffers[name] for name in self._band_names]  # type: ignore[misc]

    def _follow_band(self) -> None:
        """After `clip_epsilon` was changed in place (annealing), give the shape that band."""
        version = self._band_version()
        if version == self._band_seen:
            return
        tensors = self._band_tensors()
        keys = band_parameters(type(self.shape))
        assert keys is not None
        values = [float(tensor) for tensor in tensors]
        shape = self.shape
        # Compared with the last values seen, not the shape's floats: `.double()` replaces
        # the buffers by tensors of the same values, which needs no new shape.
        if values != self._band_values:
            wanted = dict(zip(keys, values * len(keys) if len(values) == 1 else values, strict=True))
            if any(True for _ in shape.parameters()):
                raise ValueError(f"shape {shape.display_name()!r} has trainable parameters; its band "
                                 f"cannot follow clip_epsilon (build a new loss instead)")
            rebuilt = type(shape)(**{**shape.hparams, **wanted})
            dtype = next((b.dtype for b in shape.buffers() if b.is_floating_point()), None)
            rebuilt.to(device=tensors[0].device, dtype=dtype)
            rebuilt.load_state_dict(shape.state_dict())
            rebuilt.train(shape.training)
            _carry_context(shape, rebuilt)
            self.shape = rebuilt
            self._band_values = values
        # The exact tensors the built-in band shapes decide with (their `<param>_tensor`
        # buffers), so that the bounds are ClipPPOLoss's bit for bit in any dtype.
        for key, tensor in zip(keys, tensors * len(keys) if len(tensors) == 1 else tensors, strict=True):
            exact = getattr(self.shape, f"{key}_tensor", None)
            if isinstance(exact, Tensor):
                exact.copy_(tensor)
        if keys == ("eps",):
            self.region_eps.copy_(tensors[0])
        self._band_seen = self._band_version()

    def _clip_bounds(self) -> tuple[Tensor, Tensor] | None:
        """ClipPPOLoss's clamp bounds on the log-ratio, from the band buffers (None: no band)."""
        tensors = self._band_tensors()
        if not tensors:
            return None
        low, high = (tensors[0], tensors[0]) if len(tensors) == 1 else tensors
        return (-low).log1p(), high.log1p()

    def _policy_out_keys(self) -> list[str]:
        if self.diagnostics is not True:
            return ["loss_objective", "kl_approx"]
        return ["loss_objective", "kl_approx", *KLIP_DIAGNOSTICS, "ESS", "max_ratio", "mean_ratio"]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        if self._band_names:
            self._follow_band()
        names = sample_context_names(self.shape)
        # The rollout policy's parameters: a categorical's logits, else a Gaussian's loc and scale.
        categorical = has_categorical_policy(self.actor_network)
        wanted = ("logits",) if categorical else ("loc", "scale")
        # Read before the actor writes the current policy's parameters into the tensordict.
        rollout = {key: tensordict.get(key, None) for key in wanted} if names else {}
        tensordict, advantage, log_weight, log_is_weight, dist, kl_approx = (
            self._advantage_and_log_weight(tensordict)
        )
        context: dict[str, Tensor] = {}
        if names:
            if any(value is None for value in rollout.values()):
                raise KeyError(f"shape {self.shape.display_name()!r} reads {', '.join(names)}: the data "
                               f"needs the rollout policy's {' and '.join(map(repr, wanted))}")
            action = tensordict.get(self.tensor_keys.action)
            old_log_prob = tensordict.get(self.tensor_keys.sample_log_prob)
            if categorical:
                context = sample_context(names, action=action, old_log_prob=old_log_prob,
                                         old_logits=rollout["logits"], logits=dist.logits)
            else:
                context = sample_context(names, action=action, old_log_prob=old_log_prob,
                                         old_loc=rollout["loc"], old_scale=rollout["scale"],
                                         loc=dist.mean, scale=dist.stddev)
        # The gate acts on the proximal ratio; the surrogate is weighted by the
        # behaviour ratio. They coincide unless `delay_actor` or a ratio cap is used.
        log_behav_weight = log_weight if log_is_weight is None else log_weight + log_is_weight
        with self.shape.using_context(check=False, **context) if context else contextlib.nullcontext():
            objective, gate = klip_objective(
                self.shape, log_weight, advantage, form=self.form, log_behaviour_weight=log_behav_weight
            )
        td_out = TensorDict({"loss_objective": -objective})
        td_out.set("kl_approx", kl_approx.detach().mean())
        if self.diagnostics is True:
            td_out.update(self.diagnostics_of(log_weight.detach(), advantage, gate))
            td_out.update(self._clip_ppo_statistics(log_weight.detach(), log_behav_weight.detach()))
        elif self.diagnostics == "deferred":
            self.record_diagnostics(log_weight, advantage, gate)
        return self._add_entropy_critic_and_reduce(td_out, tensordict, dist, advantage.shape[:-1])

    @torch.no_grad()
    def _clip_ppo_statistics(self, log_weight: Tensor, log_behav_weight: Tensor) -> dict[str, Tensor]:
        """`ClipPPOLoss`'s own logged statistics, with its operations."""
        out: dict[str, Tensor] = {}
        bounds = self._clip_bounds()
        if bounds is not None:  # else diagnostics_of's clip_fraction, of the default region
            clipped = log_weight.clamp(*bounds)
            out["clip_fraction"] = (clipped != log_weight).to(log_weight.dtype).mean()
        lw = log_behav_weight.squeeze(-1)
        ess = (2 * lw.logsumexp(0) - (2 * lw).logsumexp(0)).exp()
        out["ESS"] = ess / log_weight.shape[0]
        ratio = log_behav_weight.exp()
        out["max_ratio"] = ratio.max()
        out["mean_ratio"] = ratio.mean()
        return out

    def record_diagnostics(self, log_weight: Tensor, advantage: Tensor, gate: Tensor) -> None:
        """Keep one call's per-sample inputs for `pop_diagnostics` (`"deferred"` mode)."""
        self._records.append((log_weight.detach(), advantage.detach(), gate))

    def pop_diagnostics(self) -> dict[str, float]:
        """The diagnostics over every sample seen since the last call (`"deferred"` mode)."""
        if not self._records:
            return {}
        log_ratio, advantage, gate = (torch.cat(parts) for parts in zip(*self._records, strict=True))
        self._records.clear()
        return {key: float(value) for key, value in self.diagnostics_of(log_ratio, advantage, gate).items()}

    @torch.no_grad()
    def diagnostics_of(self, log_ratio: Tensor, advantage: Tensor, gate: Tensor) -> dict[str, Tensor]:
        """Region fractions, gate and |beta| statistics, k3 KL of a batch of samples."""
        ratio = log_ratio.exp()
        above = log_ratio > self.region_eps.log1p()
        below = log_ratio < (-self.region_eps).log1p()
        positive, negative = advantage > 0, advantage < 0
        kill = (above & positive) | (below & negative)
        passed = (above & negative) | (below & positive)
        # One reduction for all fractions keeps the number of small ops down.
        fractions = torch.stack([kill, passed, gate != 0, above | below]).to(ratio.dtype)
        fractions = fractions.flatten(1).mean(1)
        beta_abs = (ratio * advantage * gate).abs()
        return {
            "fraction_kill": fractions[0],
            "fraction_pass": fractions[1],
            "fraction_in": 1 - fractions[0] - fractions[1],
            "fraction_changed": fractions[2],
            "clip_fraction": fractions[3],
            "gate_mean": gate.mean(),
            "beta_abs_kill_mean": (beta_abs * kill).sum() / kill.sum().clamp_min(1),
            "kl_k3": ((ratio - 1) - log_ratio).mean(),
        }

    def update_after_rollout(self, stats: Mapping[str, float]) -> None:
        self.shape.update_after_rollout(stats)

    def set_context(self, **context: float) -> None:
        """Per-iteration context for conditioned shapes (e.g. `progress`); others ignore it."""
        self.shape.set_context(**context)


def tensor_loss_unsupported(loss_module: LossModule, actor: Any, critic: Any, *,
                            categorical: bool = False) -> str | None:
    """Why `KLipTensorLoss` (with `categorical`: `batched.BatchedKLipLoss`, which also writes out
    a categorical policy) cannot stand in for `loss_module` (None when it can)."""
    if type(loss_module) is not KLipPPOLoss:
        return f"{type(loss_module).__name__} is not KLipPPOLoss"
    if has_categorical_policy(actor):
        if not categorical:
            # `KLipTensorLoss` writes out the Gaussian's log-prob, entropy and KL only.
            return "the actor is categorical (the tensor loss is written for a Gaussian policy)"
        try:
            categorical_head(actor)
        except TypeError as error:
            return str(error)
    else:
        try:
            policy_head(actor)
        except TypeError as error:
            return str(error)
    if not isinstance(critic, ValueHead):
        return "the critic is not a klip.algos.networks.ValueHead"
    checks = {
        "functional parameters": loss_module.functional,
        "a delayed actor": loss_module.delay_actor,
        "an importance-ratio cap": loss_module.max_importance_ratio is not None,
        "advantage scaling by return statistics": loss_module.advantage_norm is not None,
        "advantage-normalisation excluded dims": bool(loss_module.normalize_advantage_exclude_dims),
        "a critic loss other than l2": loss_module.loss_critic_type != "l2",
        "no critic": not compat.ppo_has_critic(loss_module),
        "separate losses": loss_module.separate_losses,
        "a reduction other than mean": loss_module.reduction != "mean",
        "per-head entropy coefficients": compat.ppo_entropy_coeff_map(loss_module) is not None,
        "per-call diagnostics": loss_module.diagnostics is True,
        "per-call explained variance": loss_module.log_explained_variance,
    }
    found = [name for name, present in checks.items() if present]
    return f"the loss uses {', '.join(found)}" if found else None


class KLipTensorLoss:
    """`KLipPPOLoss`'s losses and gradients, bit for bit, on plain tensors: what `klip train` runs.

    On a 64-sample minibatch, `PPOLoss.forward` spends about a third of the update in
    TensorDict and `torch.distributions` bookkeeping. This class repeats TorchRL's operations
    in TorchRL's order (advantage standardisation, the Gaussian log-prob, the policy term
    through the same `klip_objective`, the clipped l2 critic loss, the entropy bonus, the mean
    reductions and their sum order), so its losses and gradients are bitwise the module's
    (`tests/test_update.py`); it is also small enough for `torch.compile`. It covers the
    configurations `PPOModule` builds; `tensor_loss_unsupported` says why it cannot stand in
    for any other, and `klip.algos.update.make_minibatch_loss` then falls back to the module.
    """

    def __init__(
        self, loss_module: KLipPPOLoss, actor: Any, critic: ValueHead, *, compile: bool = False
    ) -> None:
        reason = tensor_loss_unsupported(loss_module, actor, critic)
        if reason is not None:
            raise ValueError(f"KLipTensorLoss cannot replace this loss module: {reason}")
        self.loss_module = loss_module
        self.head = policy_head(actor)
        self.critic = critic
        keys = loss_module.tensor_keys
        # The loss module's keys, so `set_keys` is honoured here too.
        self.in_keys = [self.head.in_keys[0], keys.action, keys.sample_log_prob, keys.advantage,
                        keys.value_target, keys.value]
        # Shapes that read per-sample context need the rollout policy's loc and scale too.
        self._sample_context = sample_context_names(loss_module.shape)
        if self._sample_context:
            self.in_keys += ["loc", "scale"]
        names = ["loss_objective", "kl_approx"]
        if loss_module.entropy_bonus:
            names += ["entropy", "loss_entropy"]
        names.append("loss_critic")
        # Read once: `clip_value` is a tensor buffer, and branching on it inside a
        # compiled function would break the graph.
        self._clips_value = bool(loss_module.clip_value)
        if self._clips_value:
            names.append("value_clip_fraction")
        self._metric_names = names
        self._losses = torch.compile(self.losses, dynamic=False) if compile else self.losses

    @property
    def metric_names(self) -> list[str]:
        return self._metric_names

    def minibatches(self, data: TensorDictBase, size: int) -> Iterator[tuple[Tensor, ...]]:
        columns = [data.get(key) for key in self.in_keys]
        for start in range(0, data.shape[0], size):
            yield tuple(column[start : start + size] for column in columns)

    def __call__(self, minibatch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        total, metrics, log_weight, advantage, gate = self._losses(*minibatch)
        if self.loss_module.diagnostics == "deferred":
            self.loss_module.record_diagnostics(log_weight, advantage, gate)
        return total, metrics

    def losses(
        self,
        observation: Tensor,
        action: Tensor,
        old_log_prob: Tensor,
        advantage: Tensor,
        value_target: Tensor,
        old_value: Tensor,
        old_loc: Tensor | None = None,
        old_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Total loss, metrics, and the per-sample inputs of the diagnostics."""
        loss = self.loss_module
        if loss.normalize_advantage and advantage.numel() > 1:
            advantage = (advantage - advantage.mean()) / advantage.std().clamp_min(ADVANTAGE_STD_MIN)
        loc = self.head.mean(observation)
        scale = self.head.log_std.exp().expand_as(loc)
        log_prob = gaussian_log_prob(action, loc, scale)
        log_weight = (log_prob - old_log_prob).unsqueeze(-1)
        kl_approx = (old_log_prob - log_prob).unsqueeze(-1)
        context: dict[str, Tensor] = {}
        if self._sample_context:
            assert old_loc is not None and old_scale is not None
            context = sample_context(self._sample_context, action=action, old_log_prob=old_log_prob,
                                     old_loc=old_loc, old_scale=old_scale, loc=loc, scale=scale)
        with loss.shape.using_context(check=False, **context) if context else contextlib.nullcontext():
            objective, gate = klip_objective(loss.shape, log_weight, advantage, form=loss.form)
        terms = [(-objective).mean()]
        metrics = [terms[0].detach(), kl_approx.detach().mean()]
        if loss.entropy_bonus:
            entropy = gaussian_entropy(scale).unsqueeze(-1)
            terms.append((-loss.entropy_coeff * entropy).mean())
            metrics += [entropy.detach().mean(), terms[-1].detach()]

        value = self.critic.net(observation)
        value_loss = torch.nn.functional.mse_loss(value_target, value, reduction="none")
        clip_fraction = None
        if self._clips_value:
            change = value - old_value
            clipped = change.clamp(-loss.clip_value, loss.clip_value)
            with torch.no_grad():
                clip_fraction = (change != clipped).to(value.dtype).mean()
            clipped_loss = torch.nn.functional.mse_loss(value_target, old_value + clipped, reduction="none")
            value_loss = torch.maximum(value_loss, clipped_loss)
        terms.append((loss.critic_coeff * value_loss).mean())
        metrics.append(terms[-1].detach())
        if clip_fraction is not None:
            metrics.append(clip_fraction)
        # Summed from 0 in the module's output order, as the trainer sums TorchRL's outputs;
        # one stacked metrics output keeps a compiled graph's outputs few.
        return sum(terms), torch.stack(metrics), log_weight.detach(), advantage.detach(), gate


class ScalarKLPPOLoss(_PPOFamilyLoss):
    """PPO-KL: maximise `w*A - beta * KL(pi_old || pi_new)` with analytic KL and one scalar beta.

    With `adaptive=True`, beta is doubled or halved **once per rollout**
    (`update_after_rollout`) when the rollout's KL `d` leaves `[kl_target/1.5, kl_target*1.5]`.
    `kl_measure="final"` is PPO's rule (Schulman et al. 2017, section 4): `d` is the mean
    KL(rollout policy || updated policy) over the rollout, after the epochs (`rollout_kl`, which
    the trainer hands over as `kl_final`); `"update_mean"` takes the mean of the minibatch KLs
    during the update instead (`kl`), smaller since the policy starts each rollout at the
    rollout policy. TorchRL's `KLPENPPOLoss` adapts at every forward call, i.e. per minibatch,
    which is neither. The rollout distribution parameters (`loc`, `scale`) must be in the data.

    `kl_direction="old_new"` penalises KL(rollout policy || current), PPO's (and TorchRL's);
    `"new_old"` the reverse, KL(current || rollout policy). They differ in what they do to the
    policy's spread: once the mean has moved by `d`, KL(old || new) falls as the new scale
    grows (its `d^2 / (2 sigma_new^2)` term), so it rewards a wider policy; KL(new || old)
    charges `d^2 / (2 sigma_old^2)`, whatever the new scale. Both adapt beta to the KL they penalise.
    """

    def __init__(
        self,
        actor_network: Any = None,
        critic_network: Any = None,
        *,
        beta: float = 1.0,
        adaptive: bool = False,
        kl_target: float = 0.02,
        kl_measure: str = "final",
        kl_direction: str = "old_new",
        clip_value: bool | float | None = None,
        **kwargs: Any,
    ) -> None:
        if kl_measure not in ("final", "update_mean"):
            raise ValueError(f"kl_measure must be 'final' or 'update_mean', got {kl_measure!r}")
        if kl_direction not in ("old_new", "new_old"):
            raise ValueError(f"kl_direction must be 'old_new' or 'new_old', got {kl_direction!r}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if not kl_target > 0:
            raise ValueError(f"kl_target must be > 0, got {kl_target}")
        super().__init__(actor_network, critic_network, clip_value=clip_value,
                         policy_clip_radius=0.2, **kwargs)
        self.adaptive = adaptive
        self.kl_target = kl_target
        self.kl_measure = kl_measure
        self.kl_direction = kl_direction
        self.register_buffer("beta", torch.tensor(float(beta)))

    def _kl(self, rollout: Any, current: Any) -> Tensor:
        """The penalised KL between the rollout and current policies, per sample."""
        if self.kl_direction == "new_old":
            return torch.distributions.kl_divergence(current, rollout)
        return torch.distributions.kl_divergence(rollout, current)

    def _policy_out_keys(self) -> list[str]:
        return ["loss_objective", "kl", "beta", "kl_approx"]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        try:
            previous_dist = self.actor_network.build_dist_from_params(tensordict)
        # tensordict 0.14 reads a missing key as None, which the distribution trips on.
        except (KeyError, AttributeError) as error:
            raise KeyError(
                "ScalarKLPPOLoss needs the rollout policy's distribution parameters "
                "(e.g. 'loc' and 'scale') in the data"
            ) from error
        tensordict, advantage, log_weight, log_is_weight, dist, kl_approx = (
            self._advantage_and_log_weight(tensordict)
        )
        if log_is_weight is not None:
            log_weight = log_weight + log_is_weight
        kl = self._kl(previous_dist, dist).unsqueeze(-1)
        objective = log_weight.exp() * advantage - self.beta * kl
        td_out = TensorDict({"loss_objective": -objective})
        td_out.set("kl", kl.detach().mean())
        td_out.set("beta", self.beta.clone())
        td_out.set("kl_approx", kl_approx.detach().mean())
        return self._add_entropy_critic_and_reduce(td_out, tensordict, dist, advantage.shape[:-1])

    @property
    def needs_rollout_kl(self) -> bool:
        """Whether `update_after_rollout` wants `kl_final`, the updated policy's `rollout_kl`."""
        return self.adaptive and self.kl_measure == "final"

    @torch.no_grad()
    def rollout_kl(self, tensordict: TensorDictBase) -> Tensor:
        """Mean penalised KL (`kl_direction`) of the current policy over the samples of `tensordict`."""
        previous = self.actor_network.build_dist_from_params(tensordict)
        # A fresh TensorDict: the actor writes its own loc and scale into what it is given.
        current = self.actor_network.get_dist(tensordict.select(*self.actor_network.in_keys).clone(False))
        return self._kl(previous, current).mean()

    def update_after_rollout(self, stats: Mapping[str, float]) -> None:
        if not self.adaptive:
            return
        kl = float(stats["kl_final" if self.kl_measure == "final" else "kl"])
        if kl > 1.5 * self.kl_target:
            self.beta.mul_(2.0)
        elif kl < self.kl_target / 1.5:
            self.beta.div_(2.0)
