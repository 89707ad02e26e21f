"""Every agent's parameters as views of one flat buffer: one Adam step and one clip for all.

Agent after agent, each parameter starting on a 64-byte boundary (as a tensor of its own
does: a BLAS rounds a product of misaligned operands differently), so every agent's block
has the same layout and size and agent i's copy of parameter j sits `i * agent_size` after
agent 0's. That makes "parameter j of every agent" one strided `[agents, numel]` view.

What acts on the buffer computes, per agent, what the agent's own tensors would give:

- Adam is elementwise: on the flat tensor it computes each element as `foreach` Adam on the
  agent's own tensors does (`tests/test_population.py`).
- `clip_per_agent` is `clip_grad_norm_` of each agent, operation for operation: each
  parameter's norm is a row reduction of the strided view (a row of a 2-D reduction is
  reduced as the same 1-D tensor alone is; `tests/test_flat.py`), the total is the norm of
  the agent's row of norms, and scaling is elementwise.
- Gradients accumulate into their views; zeroing them in place instead of dropping them
  changes at most the sign of a zero gradient, which neither Adam nor the norm can see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

# Elements per 64 bytes of float32: where each parameter starts in the flat buffer.
ALIGNMENT = 16


class FlatParameters:
    """One flat parameter tensor (and its gradient) that every agent's parameters are views of."""

    def __init__(self, agents_parameters: Sequence[Sequence[nn.Parameter]]) -> None:
        sizes = [[parameter.numel() for parameter in group] for group in agents_parameters]
        if any(size != sizes[0] for size in sizes):
            raise ValueError("every agent needs parameters of the same sizes, in the same order")
        places, offset = [], 0
        for size in sizes[0]:
            places.append(offset)
            offset += -(-size // ALIGNMENT) * ALIGNMENT
        self.agent_size = offset
        self.num_agents = len(agents_parameters)
        self.parameter_places = places
        self.parameter_sizes = sizes[0]
        flat = torch.zeros(offset * self.num_agents)
        self.parameters: list[tuple[nn.Parameter, int]] = []
        for agent, group in enumerate(agents_parameters):
            for parameter, place, size in zip(group, places, sizes[0], strict=True):
                start = agent * offset + place
                flat[start : start + size] = parameter.detach().reshape(-1)
                parameter.data = flat[start : start + size].view_as(parameter)
                self.parameters.append((parameter, start))
        self.tensor = nn.Parameter(flat)
        self.tensor.grad = torch.zeros_like(flat)
        self.attach_gradients()

    @property
    def gradient(self) -> Tensor:
        return self.tensor.grad

    def agent_slice(self, agent: int) -> slice:
        return slice(agent * self.agent_size, (agent + 1) * self.agent_size)

    def per_agent(self, tensor: Tensor) -> Tensor:
        """`tensor` (laid out as the buffer) as `[agents, agent_size]`."""
        return tensor.view(self.num_agents, self.agent_size)

    def attach_gradients(self) -> None:
        """Point every parameter's `.grad` at its view of the flat gradient (Lightning's
        `zero_grad()` before training, or a user's, sets them to None). Nothing else may hold
        the view: autograd accumulates into a gradient in place only when nothing else does."""
        gradients = self.tensor.grad
        for parameter, offset in self.parameters:
            expected = gradients.data_ptr() + offset * gradients.element_size()
            if parameter.grad is None or parameter.grad.data_ptr() != expected:
                parameter.grad = gradients[offset : offset + parameter.numel()].view_as(parameter)

    @torch.no_grad()
    def clip_per_agent(self, max_norm: float) -> Tensor:
        """`torch.nn.utils.clip_grad_norm_(agent_parameters, max_norm)` for every agent at once;
        returns each agent's total norm `[agents]` (an agent with no gradient keeps none)."""
        gradients = self.tensor.grad
        norms = [torch.linalg.vector_norm(
            gradients.as_strided((self.num_agents, size), (self.agent_size, 1), place), 2.0, dim=1)
            for place, size in zip(self.parameter_places, self.parameter_sizes, strict=True)]
        total = torch.linalg.vector_norm(torch.stack(norms, 1), 2.0, dim=1)
        self.per_agent(gradients).mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0).unsqueeze(1))
        return total


class FlatAdam(torch.optim.Adam):
    """`torch.optim.Adam(foreach=True)` on the one flat buffer: the same `_foreach` calls with
    the same scalars (`torch.optim.adam._multi_tensor_adam` without AMSGrad, weight decay or
    maximisation), without the per-call grouping and checks, which cost more than the
    arithmetic on a buffer this small. State, state dict and schedulers are Adam's own
    (`tests/test_flat.py` holds it to `torch.optim.Adam` bit for bit)."""

    def __init__(self, flat: Tensor, lr: float, eps: float) -> None:
        super().__init__([flat], lr=lr, eps=eps, foreach=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        (parameter,) = group["params"]
        if parameter.grad is None:
            return loss
        state = self.state[parameter]
        if not state:  # as Adam._init_group
            state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        params, grads = [parameter], [parameter.grad]
        exp_avgs, exp_avg_sqs, steps = [state["exp_avg"]], [state["exp_avg_sq"]], [state["step"]]
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        step = state["step"].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        denominator = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominator, [bias_correction2**0.5])
        torch._foreach_add_(denominator, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominator, [(lr / bias_correction1) * -1])
        return loss


__all__ = ["ALIGNMENT", "FlatAdam", "FlatParameters"]
