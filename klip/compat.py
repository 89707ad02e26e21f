"""Every private (underscore) API of another library that klip uses, behind one door.

Each entry says the version it was written for and why klip needs it. Accessor functions
below are what the rest of klip calls; methods klip *overrides* in a subclass (TorchRL's
`GymWrapper._step`, Lightning's `_ExperimentWriter._check_log_dir_exists`) cannot be
routed through a function, so they are listed here too. `tests/test_compat.py` checks
every entry against the installed libraries and fails with the entry's message when an
upgrade renames, removes or re-signs one.

This module imports nothing of klip, so `klip.envs` and `klip.algos` can both use it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Any

from lightning_fabric.loggers.csv_logs import _ExperimentWriter as ExperimentWriter


@dataclass(frozen=True)
class PrivateAPI:
    """One private API: where it lives, what klip expects of it, and why klip uses it."""

    owner: str  # importable path of the class that has it
    name: str
    written_for: str
    why: str
    # Expected parameter names (after `self`) of a method; None for an attribute.
    parameters: tuple[str, ...] | None = None

    @property
    def message(self) -> str:
        return (f"{self.owner}.{self.name} is not what klip was written for ({self.written_for}); "
                f"klip uses it because {self.why}. Update klip/compat.py for the installed version.")


TORCHRL = "torchrl 0.14.1"
TENSORDICT = "tensordict 0.14.3"
LIGHTNING = "pytorch-lightning 2.6.6"
GYMNASIUM = "gymnasium 1.4.0"
TORCH = "torch 2.13.0"
OPTUNA = "optuna 5.0.0"

PRIVATE_APIS: tuple[PrivateAPI, ...] = (
    # TorchRL's PPO loss internals: KLip's losses subclass PPOLoss and keep its exact
    # arithmetic (advantage standardisation, log-weights, entropy, critic, reduction).
    PrivateAPI("torchrl.objectives.PPOLoss", "_maybe_normalize_advantage", TORCHRL,
               "the KLip losses standardise advantages exactly as ClipPPOLoss does",
               ("advantage", "tensordict", "update_norm")),
    PrivateAPI("torchrl.objectives.PPOLoss", "_log_weight", TORCHRL,
               "the KLip losses compute log-ratios exactly as ClipPPOLoss does",
               ("tensordict", "adv_shape")),
    PrivateAPI("torchrl.objectives.PPOLoss", "_get_entropy", TORCHRL,
               "the entropy term must match ClipPPOLoss's", ("dist", "adv_shape")),
    PrivateAPI("torchrl.objectives.PPOLoss", "_weighted_loss_entropy", TORCHRL,
               "the entropy term must match ClipPPOLoss's", ("entropy",)),
    PrivateAPI("torchrl.objectives.PPOLoss", "_reduce_loss", TORCHRL,
               "losses are reduced as ClipPPOLoss reduces them", ("loss", "tensordict")),
    PrivateAPI("torchrl.objectives.PPOLoss", "_clear_weakrefs", TORCHRL,
               "PPOLoss.forward releases its parameter weakrefs this way", ("tds",)),
    PrivateAPI("torchrl.objectives.PPOLoss", "_has_critic", TORCHRL,
               "the critic term is added only when the loss has a critic"),
    PrivateAPI("torchrl.objectives.PPOLoss", "_entropy_coeff_map", TORCHRL,
               "the plain-tensor loss refuses per-head entropy coefficients"),
    PrivateAPI("torchrl.objectives.PPOLoss", "_cached_critic_network_params_detached", TORCHRL,
               "advantages computed inside the loss use the detached critic as PPOLoss does"),
    PrivateAPI("torchrl.objectives.PPOLoss", "_out_keys", TORCHRL,
               "out_keys is cached in this attribute by LossModule"),
    # TorchRL's collector keeps the current observation in `_carrier`; exact resume saves it.
    PrivateAPI("torchrl.collectors.Collector", "_carrier", TORCHRL,
               "a resumed run must restore the observation the collector carries between rollouts"),
    # TorchRL's GymWrapper: the lean env overrides its step hooks and reads the wrapped env.
    PrivateAPI("torchrl.envs.GymWrapper", "_step", TORCHRL,
               "VecGymWrapper overrides the per-step path, which spends more time on generic "
               "spec handling than MuJoCo spends simulating", ("tensordict",)),
    PrivateAPI("torchrl.envs.GymWrapper", "_step_proc_data", TORCHRL,
               "VecGymWrapper skips re-checking keys its _step already shaped",
               ("next_tensordict_out",)),
    PrivateAPI("torchrl.envs.GymWrapper", "_replace_reset", TORCHRL,
               "VecGymWrapper fixes a full reset from a tensordict without '_reset'",
               ("reset", "kwargs")),
    PrivateAPI("torchrl.envs.GymWrapper", "_env", TORCHRL,
               "the lean rollout loop steps the gymnasium vector env under the TorchRL env"),
    PrivateAPI("tensordict.TensorDict", "_new_unsafe", TENSORDICT,
               "VecGymWrapper builds each step's output without re-validating its fixed keys",
               ("source", "batch_size", "device", "names", "non_blocking", "lock", "nested")),
    # Lightning's CSV writer deletes an existing metrics.csv when it starts.
    PrivateAPI("lightning_fabric.loggers.csv_logs._ExperimentWriter", "_check_log_dir_exists",
               LIGHTNING, "a resumed run appends to its metrics.csv instead of deleting it", ()),
    PrivateAPI("lightning_fabric.loggers.csv_logs._ExperimentWriter", "_fs", LIGHTNING,
               "the appending writer checks for an existing metrics.csv through Lightning's fs"),
    PrivateAPI("pytorch_lightning.loggers.CSVLogger", "_experiment", LIGHTNING,
               "MetricsCSVLogger installs the appending writer in place of Lightning's"),
    # TorchRL's GAE evaluates the value network in a private method; the engine calls it per
    # agent and then runs one recursion over every agent (`klip.algos.advantage`).
    PrivateAPI("torchrl.objectives.value.GAE", "_call_value_nets", TORCHRL,
               "each agent's values must be the ones its own GAE module computes",
               ("data", "params", "next_params", "single_call", "value_key", "detach_next",
                "vmap_randomness")),
    # gymnasium's TimeLimit keeps its step count privately; exact resume mid-episode needs it.
    PrivateAPI("gymnasium.wrappers.TimeLimit", "_elapsed_steps", GYMNASIUM,
               "a snapshot of an env mid-episode must restore the time-limit counter"),
    PrivateAPI("torch._inductor.config", "compile_threads", TORCH,
               "--compile compiles in-process (a worker pool slowed collection on 2 cores)"),
    # Optuna's trial heartbeat runs inside `study.optimize` only; a study worker that trains
    # several asked trials at once (`klip study run --batch`) runs one per trial itself.
    PrivateAPI("optuna.storages._heartbeat", "get_heartbeat_thread", OPTUNA,
               "a batch of asked trials needs the heartbeat `optimize` gives one trial",
               ("trial_id", "storage")),
)


# -- accessors: the only places klip touches these names -------------------------------
def collector_carrier(collector: Any) -> Any:
    """The TensorDict TorchRL's `Collector` carries between rollouts (current observation)."""
    return collector._carrier


def gae_write_values(module: Any, data: Any) -> None:
    """Write `module`'s (a TorchRL `GAE` with a value network) values of `data`'s observations and
    next observations into `data`, as its forward does before the advantage recursion."""
    from torchrl.objectives.utils import hold_out_net

    with hold_out_net(module.value_network):
        module._call_value_nets(data=data, params=None, next_params=None, single_call=module.shifted,
                                value_key=module.tensor_keys.value, detach_next=True,
                                vmap_randomness=module.vmap_randomness)


def gym_wrapper_env(wrapper: Any) -> Any:
    """The gymnasium env under a TorchRL `GymWrapper`."""
    return wrapper._env


def new_tensordict_unchecked(source: dict[str, Any], batch_size: Any, device: Any) -> Any:
    """A `TensorDict` from already-shaped tensors, skipping the per-key validation."""
    from tensordict import TensorDict

    return TensorDict._new_unsafe(source, batch_size=batch_size, device=device)


def time_limit_elapsed_steps(time_limit: Any) -> int:
    return time_limit._elapsed_steps


def set_time_limit_elapsed_steps(time_limit: Any, steps: int | None) -> None:
    time_limit._elapsed_steps = steps


def ppo_normalized_advantage(loss: Any, advantage: Any, tensordict: Any, update_norm: bool) -> Any:
    return loss._maybe_normalize_advantage(advantage, tensordict, update_norm=update_norm)


def ppo_log_weight(loss: Any, tensordict: Any, adv_shape: Any) -> tuple[Any, Any, Any, Any]:
    """`(log_weight, dist, kl_approx, log_is_weight)` as `ClipPPOLoss` computes them."""
    return loss._log_weight(tensordict, adv_shape=adv_shape)


def ppo_detached_critic_params(loss: Any) -> Any:
    return loss._cached_critic_network_params_detached


def ppo_entropy_loss(loss: Any, dist: Any, adv_shape: Any) -> tuple[Any, Any]:
    """`(entropy, weighted entropy loss)` as `ClipPPOLoss` computes them."""
    entropy = loss._get_entropy(dist, adv_shape=adv_shape)
    return entropy, loss._weighted_loss_entropy(entropy)


def ppo_has_critic(loss: Any) -> bool:
    return loss._has_critic


def ppo_entropy_coeff_map(loss: Any) -> Any:
    return loss._entropy_coeff_map


def ppo_reduce(loss: Any, value: Any, tensordict: Any) -> Any:
    return loss._reduce_loss(value, tensordict)


def ppo_release_weakrefs(loss: Any, tensordict: Any, td_out: Any) -> None:
    loss._clear_weakrefs(tensordict, td_out, "actor_network_params", "critic_network_params",
                         "target_actor_network_params", "target_critic_network_params")


def ppo_cached_out_keys(loss: Any) -> list[str] | None:
    return loss._out_keys


def set_ppo_cached_out_keys(loss: Any, keys: list[str]) -> None:
    loss._out_keys = keys


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps (and appends to) an existing metrics file."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = list(header)


def appending_csv_experiment(logger: Any) -> AppendingExperimentWriter:
    """The experiment of a `CSVLogger`, created as an `AppendingExperimentWriter`."""
    if logger._experiment is None:
        logger._experiment = AppendingExperimentWriter(log_dir=logger.log_dir)
    return logger._experiment


def heartbeat_thread(trial_id: int, storage: Any) -> Any:
    """Optuna's heartbeat of one trial, as a context manager (a no-op without heartbeats)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id, storage)


def configure_inductor() -> None:
    """Inductor settings for one training process per core."""
    import torch._inductor.config as inductor_config  # imported only when compiling

    # Its default pool of compile workers, alive after compiling, slowed the training
    # process's collection on 2 cores: compile in-process.
    inductor_config.compile_threads = 1
    # Before trusting the vector ISA the CPU reports, inductor builds and loads a probe
    # library in child processes at every start. TORCHINDUCTOR_VEC_ISA_OK=0 restores it.
    if "TORCHINDUCTOR_VEC_ISA_OK" not in os.environ:
        inductor_config.cpp.vec_isa_ok = True
