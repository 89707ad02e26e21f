"""TorchRL ``GymWrapper`` with a lean per-step path for our gymnasium vector stack."""

from __future__ import annotations

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import GymWrapper

from klip import compat

__all__ = ["VecGymWrapper"]


class VecGymWrapper(GymWrapper):
    """``GymWrapper`` over a ``SyncVectorEnv(autoreset_mode=DISABLED)`` with Box observations.

    ``GymLikeEnv._step`` spends more time than a MuJoCo step on generic spec encoding, done
    reshaping and validation; our stack always returns float32 observations, float rewards and
    bool done flags of shape ``[num_envs]``, so ``_step`` builds the output TensorDict directly
    (zero-copy ``torch.from_numpy``), already shaped like the specs. Resets keep the stock path.
    """

    def __init__(
        self,
        env: VectorEnv,
        *,
        action_low: np.ndarray | None,
        action_high: np.ndarray | None,
        device: torch.device | str | None = None,
        **kwargs: object,
    ) -> None:
        """`action_low`/`action_high`: a Box task's bounds; None for a Discrete task, whose
        actions are integer indices (`categorical_action_encoding`), not one-hot vectors."""
        # TorchRL reads ``autoreset_mode`` off the outermost gymnasium object (to pass partial
        # resets as ``options["reset_mask"]``), but vector wrappers do not forward attributes.
        env.autoreset_mode = env.unwrapped.autoreset_mode
        if env.autoreset_mode is not AutoresetMode.DISABLED:
            raise ValueError("VecGymWrapper requires AutoresetMode.DISABLED")
        # ``kwargs`` carries flags injected by GymWrapper's metaclass.
        self._discrete = action_low is None
        super().__init__(env, device=device, categorical_action_encoding=self._discrete, **kwargs)
        if not self._discrete:
            self._action_low = torch.as_tensor(action_low, dtype=torch.float32)
            self._action_range = torch.as_tensor(action_high, dtype=torch.float32) - self._action_low

    def _replace_reset(self, reset: torch.Tensor | None, kwargs: dict) -> dict:
        # The stock version calls ``reset.view`` unconditionally, so ``env.reset(td)`` with a
        # tensordict lacking ``"_reset"`` (a full reset) raised AttributeError.
        if reset is None:
            return kwargs
        return super()._replace_reset(reset, kwargs)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").detach().cpu().numpy()
        obs, reward, terminated, truncated, _ = compat.gym_wrapper_env(self).step(action)
        # Zero-copy is safe: every wrapper in the stack returns freshly allocated arrays.
        # Reshape on the numpy side (cheaper than torch views) to the specs' [num_envs, 1].
        terminated = terminated[:, None]
        truncated = truncated[:, None]
        out = {
            "observation": torch.from_numpy(obs),
            "reward": torch.from_numpy(reward.astype(np.float32)[:, None]),
            "terminated": torch.from_numpy(terminated),
            "truncated": torch.from_numpy(truncated),
            "done": torch.from_numpy(terminated | truncated),
        }
        return compat.new_tensordict_unchecked(out, self.batch_size, self.device)

    def _step_proc_data(self, next_tensordict_out: TensorDictBase) -> TensorDictBase:
        # EnvBase reshapes rewards and completes missing done keys here; ``_step`` already
        # emits every key in its spec shape, so this would only re-check them each step.
        return next_tensordict_out

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """Uniform random action within the true action bounds.

        The action spec is unbounded (clipping happens inside the env), and the stock
        ``Composite.rand`` goes through ``TensorDict.from_dict``, which is slow per step.
        """
        if self._discrete:  # the spec is bounded: the stock draw is within it
            return super().rand_action(tensordict)
        shape = (*self.batch_size, *self._action_low.shape)
        action = self._action_low + self._action_range * torch.rand(shape)
        if tensordict is None:
            return TensorDict({"action": action}, batch_size=self.batch_size, device=self.device)
        tensordict.set("action", action)
        return tensordict
