"""klip/compat.py: every private third-party API klip relies on exists as klip expects it,
and every accessor does what its callers rely on."""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest
import torch
from tensordict import TensorDict

from klip import compat
from klip.algos import KLipPPOLoss, make_actor, make_critic
from klip.envs import make_env

OBS_DIM, ACT_DIM = 3, 1


def resolve(path: str) -> Any:
    """The object at an importable dotted path: a module, or an attribute of one."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def clip_loss(**kwargs: Any) -> Any:
    from torchrl.objectives import ClipPPOLoss

    return ClipPPOLoss(make_actor(OBS_DIM, ACT_DIM), make_critic(OBS_DIM), **kwargs)


def collector() -> Any:
    from torchrl.collectors import Collector

    env = make_env("Pendulum-v1")
    return Collector(env, make_actor(OBS_DIM, ACT_DIM), frames_per_batch=4, total_frames=-1,
                     auto_register_policy_transforms=False)


def time_limit() -> gym.wrappers.TimeLimit:
    env = gym.make("Pendulum-v1")
    while not isinstance(env, gym.wrappers.TimeLimit):
        env = env.env
    env.reset(seed=0)
    return env


def csv_logger(tmp_path) -> Any:
    from pytorch_lightning.loggers import CSVLogger

    return CSVLogger(str(tmp_path), name="run", version=0)


# A real instance of each owner, for the attributes (instances set them in __init__).
INSTANCES: dict[str, Callable[[Any], Any]] = {
    "torchrl.objectives.PPOLoss": lambda tmp_path: clip_loss(),
    "torchrl.collectors.Collector": lambda tmp_path: collector(),
    "torchrl.envs.GymWrapper": lambda tmp_path: make_env("Pendulum-v1"),
    "lightning_fabric.loggers.csv_logs._ExperimentWriter": lambda tmp_path: csv_logger(tmp_path).experiment,
    "pytorch_lightning.loggers.CSVLogger": csv_logger,
    "gymnasium.wrappers.TimeLimit": lambda tmp_path: time_limit(),
    "torch._inductor.config": lambda tmp_path: resolve("torch._inductor.config"),
}


@pytest.mark.parametrize("entry", compat.PRIVATE_APIS, ids=lambda e: f"{e.owner}.{e.name}")
def test_private_api_is_what_klip_was_written_for(entry, tmp_path):
    owner = resolve(entry.owner)
    if entry.parameters is not None:  # a method: its leading parameter names
        method = getattr(owner, entry.name, None)
        assert callable(method), entry.message
        names = [name for name in inspect.signature(method).parameters if name != "self"]
        assert names[: len(entry.parameters)] == list(entry.parameters), entry.message
    else:  # an attribute: present on a real instance
        instance = INSTANCES[entry.owner](tmp_path)
        assert isinstance(owner, type) is False or isinstance(instance, owner), entry.owner
        assert hasattr(instance, entry.name), entry.message


def test_every_owner_has_an_instance_factory():
    owners = {entry.owner for entry in compat.PRIVATE_APIS if entry.parameters is None}
    assert owners <= set(INSTANCES)


def test_message_names_the_api_the_version_and_the_reason():
    entry = compat.PRIVATE_APIS[0]
    assert f"{entry.owner}.{entry.name}" in entry.message
    assert entry.written_for in entry.message and entry.why in entry.message


# -- accessors --------------------------------------------------------------------------------
TESTED_ACCESSORS: set[str] = set()


def covers(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    TESTED_ACCESSORS.update(names)
    return lambda test: test


@covers("collector_carrier")
def test_collector_carrier_is_the_next_observation():
    source = collector()
    batch = next(iter(source))
    # Between rollouts the carrier holds where the next rollout starts: the last next-observation.
    assert torch.equal(compat.collector_carrier(source)["observation"],
                       batch["next", "observation"][..., -1, :])
    source.shutdown()


@covers("gym_wrapper_env")
def test_gym_wrapper_env_is_the_vector_env_it_steps():
    env = make_env("Pendulum-v1", num_envs=2, seed=0, normalize=False)
    vector_env = compat.gym_wrapper_env(env)
    assert isinstance(vector_env, gym.vector.VectorEnv) and vector_env.num_envs == 2


@covers("new_tensordict_unchecked")
def test_new_tensordict_unchecked_holds_the_given_tensors():
    value = torch.arange(6.0).reshape(3, 2)
    td = compat.new_tensordict_unchecked({"x": value}, torch.Size([3]), None)
    assert isinstance(td, TensorDict) and td.batch_size == (3,)
    assert td["x"] is value


@covers("time_limit_elapsed_steps", "set_time_limit_elapsed_steps")
def test_time_limit_steps_read_and_written():
    env = time_limit()
    env.step(env.action_space.sample())
    env.step(env.action_space.sample())
    assert compat.time_limit_elapsed_steps(env) == 2
    compat.set_time_limit_elapsed_steps(env, 199)
    *_, truncated, _ = env.step(env.action_space.sample())
    assert truncated and compat.time_limit_elapsed_steps(env) == 200


def ppo_batch(loss: Any) -> TensorDict:
    generator = torch.Generator().manual_seed(0)
    observation = torch.randn(8, OBS_DIM, generator=generator)
    batch = TensorDict({"observation": observation}, [8])
    with torch.no_grad():
        loss.actor_network(batch)
    batch["action_log_prob"] = batch["action_log_prob"] - 0.1
    batch["advantage"] = torch.randn(8, 1, generator=generator)
    batch["value_target"] = torch.randn(8, 1, generator=generator)
    batch["state_value"] = torch.randn(8, 1, generator=generator)
    return batch


@covers("ppo_normalized_advantage", "ppo_log_weight", "ppo_entropy_loss", "ppo_reduce")
def test_ppo_internals_compute_what_their_names_say():
    loss = clip_loss(normalize_advantage=True, entropy_coeff=0.01)
    batch = ppo_batch(loss)
    advantage = compat.ppo_normalized_advantage(loss, batch["advantage"], batch, False)
    torch.testing.assert_close(advantage.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(advantage.std(), torch.tensor(1.0))
    log_weight, dist, kl_approx, log_is_weight = compat.ppo_log_weight(loss, batch, advantage.shape[:-1])
    torch.testing.assert_close(log_weight, torch.full((8, 1), 0.1))
    torch.testing.assert_close(kl_approx, -log_weight)
    assert log_is_weight is None
    entropy, loss_entropy = compat.ppo_entropy_loss(loss, dist, advantage.shape[:-1])
    torch.testing.assert_close(loss_entropy, -loss.entropy_coeff * entropy)
    assert compat.ppo_reduce(loss, torch.arange(4.0), batch).item() == 1.5  # the mean


@covers("ppo_has_critic", "ppo_entropy_coeff_map", "ppo_detached_critic_params")
def test_ppo_flags_and_detached_critic_parameters():
    loss = clip_loss()
    assert compat.ppo_has_critic(loss) is True
    assert compat.ppo_entropy_coeff_map(loss) is None
    params = compat.ppo_detached_critic_params(loss)
    assert all(not value.requires_grad for value in params.values(True, True))
    from torchrl.objectives import ClipPPOLoss

    actor_only = ClipPPOLoss(make_actor(OBS_DIM, ACT_DIM), None, critic_coeff=None)
    assert compat.ppo_has_critic(actor_only) is False


@covers("ppo_cached_out_keys", "set_ppo_cached_out_keys", "ppo_release_weakrefs")
def test_out_keys_cache_and_weakref_release():
    loss = KLipPPOLoss(make_actor(OBS_DIM, ACT_DIM), make_critic(OBS_DIM), diagnostics=False)
    keys = loss.out_keys  # computed once, then cached
    assert compat.ppo_cached_out_keys(loss) == keys
    compat.set_ppo_cached_out_keys(loss, ["loss_objective"])
    assert loss.out_keys == ["loss_objective"]
    batch = ppo_batch(loss)
    out = loss(batch)  # forward releases the weakrefs through ppo_release_weakrefs
    assert "loss_objective" in out
    compat.ppo_release_weakrefs(loss, batch, out)  # idempotent


@covers("appending_csv_experiment")
def test_appending_csv_experiment_keeps_an_existing_metrics_file(tmp_path):
    first = csv_logger(tmp_path)
    writer = compat.appending_csv_experiment(first)
    assert isinstance(writer, compat.AppendingExperimentWriter)
    assert compat.appending_csv_experiment(first) is writer  # created once
    writer.log_metrics({"a": 1.0}, step=0)
    writer.save()
    again = compat.appending_csv_experiment(csv_logger(tmp_path))
    assert again.metrics_keys == ["a", "step"]
    again.log_metrics({"a": 2.0}, step=1)
    again.save()
    with open(again.metrics_file_path) as file:
        lines = file.read().splitlines()
    assert lines[0] == "a,step" and len(lines) == 3


@covers("configure_inductor")
def test_configure_inductor_compiles_in_process(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK", raising=False)
    # The config module's own patch() restores both settings afterwards.
    with inductor_config.patch({"compile_threads": 8, "cpp.vec_isa_ok": None}):
        compat.configure_inductor()
        assert inductor_config.compile_threads == 1 and inductor_config.cpp.vec_isa_ok is True
    with inductor_config.patch({"cpp.vec_isa_ok": None}):
        monkeypatch.setenv("TORCHINDUCTOR_VEC_ISA_OK", "0")
        compat.configure_inductor()
        assert inductor_config.cpp.vec_isa_ok is None  # the variable restores inductor's probe


# The thread is Optuna's experimental heartbeat, driven here without Study.optimize on purpose.
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@covers("heartbeat_thread")
def test_heartbeat_thread_records_a_trials_heartbeat_while_it_runs(tmp_path):
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1,
                                         grace_period=2)
    study = optuna.create_study(storage=storage, study_name="h")
    trial = study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("h"),
                                                                trial.number)
    with compat.heartbeat_thread(trial_id, storage):
        pass
    # A trial with a heartbeat goes stale once the grace period passes without another one.
    assert storage._get_stale_trial_ids(storage.get_study_id_from_name("h")) == []
    # Heartbeat times are stored to the second: allow the grace period plus that rounding.
    deadline = time.monotonic() + 10
    while storage._get_stale_trial_ids(storage.get_study_id_from_name("h")) != [trial_id]:
        assert time.monotonic() < deadline, "the trial never went stale: no heartbeat was recorded"
        time.sleep(0.25)


@covers("gae_write_values")
def test_gae_write_values_writes_what_the_gae_module_writes():
    from klip.algos.advantage import make_gae
    from klip.algos.networks import make_critic

    torch.manual_seed(0)
    module = make_gae(0.99, 0.95, make_critic(OBS_DIM))
    data = TensorDict({"observation": torch.randn(1, 6, OBS_DIM),
                       "next": {"observation": torch.randn(1, 6, OBS_DIM), "reward": torch.randn(1, 6, 1),
                                "done": torch.zeros(1, 6, 1, dtype=torch.bool),
                                "terminated": torch.zeros(1, 6, 1, dtype=torch.bool)}}, [1, 6])
    expected = module(data.clone())
    compat.gae_write_values(module, data)
    assert torch.equal(data["state_value"], expected["state_value"])
    assert torch.equal(data["next", "state_value"], expected["next", "state_value"])


def test_every_accessor_has_a_test():
    accessors = {name for name, value in vars(compat).items()
                 if inspect.isfunction(value) and value.__module__ == compat.__name__}
    assert accessors == TESTED_ACCESSORS
