"""Every agent's MLPs in one autograd node: forward and backward written out, bitwise autograd's.

A minibatch step of N agents runs 2N small tanh MLPs (each agent's policy mean and critic).
Under autograd each layer is a graph node with its saved tensors, views and bookkeeping, which
costs more than the layer's arithmetic at these sizes. `WrittenOutMLPs` runs all of them in
one `torch.autograd.Function` whose backward calls the kernels autograd's own formulas call,
on the same operands in the same memory layout:

- forward `addmm(b, x, W.t())` (`F.linear` on a matrix) and `tanh`;
- backward `grad.mm(W)` for the layer's input, `grad.t().mm(x)` for its weight (autograd's
  `mm_mat2_backward` for the transposed weight), `grad.sum(0)` for its bias (`sum_to`) and
  `tanh_backward(grad, tanh(x))`.

So every gradient is bitwise what autograd would compute (`tests/test_written_out.py` checks
it against autograd layer by layer and `tests/test_population.py` over whole runs). The
gradient comes back as one tensor over the engine's flat parameter buffer (the parameters
are views of it), which autograd adds to the buffer's gradient in one step: zeros outside
the networks (the log-std), each network parameter's gradient in its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class WrittenOutLayer:
    """One `nn.Linear` whose parameters are views of the flat buffer, with its gradient's place
    in a flat gradient of the same layout."""

    def __init__(self, linear: nn.Linear, flat: Tensor, gradient: Tensor) -> None:
        weight, bias = linear.weight.detach(), linear.bias.detach()
        self.weight, self.weight_t, self.bias = weight, weight.t(), bias
        self.weight_grad = _place(linear.weight, flat, gradient).view_as(weight)
        # `sum_to` reduces with keepdim and then views the result as the bias.
        self.bias_grad = _place(linear.bias, flat, gradient).view(1, -1)


def _place(parameter: Tensor, flat: Tensor, gradient: Tensor) -> Tensor:
    offset = parameter.data_ptr() - flat.data_ptr()
    if not 0 <= offset < flat.numel() * flat.element_size() or not parameter.is_contiguous():
        raise ValueError("the parameter is not a contiguous view of the flat buffer")
    start = offset // flat.element_size()
    return gradient[start : start + parameter.numel()]


def linear_layers(mlp: nn.Sequential, flat: Tensor, gradient: Tensor) -> list[WrittenOutLayer]:
    """The layers of a Linear, Tanh, ..., Linear MLP whose parameters are views of `flat`."""
    modules = list(mlp)
    linears, activations = modules[0::2], modules[1::2]
    if (len(modules) % 2 == 0 or not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears)
            or not all(isinstance(m, nn.Tanh) for m in activations)):
        raise TypeError("written-out MLPs are Linear, Tanh, ..., Linear sequences")
    return [WrittenOutLayer(linear, flat, gradient) for linear in linears]


def mlp_forward(layers: Sequence[WrittenOutLayer], inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The MLP's output and each layer's input (what the backward needs)."""
    saved, hidden = [], inputs
    last = len(layers) - 1
    for index, layer in enumerate(layers):
        saved.append(hidden)
        hidden = torch.addmm(layer.bias, hidden, layer.weight_t)
        if index < last:
            hidden.tanh_()  # in place on the fresh product: the same values as `tanh`
    return hidden, saved


def mlp_backward(layers: Sequence[WrittenOutLayer], saved: Sequence[Tensor], grad_output: Tensor) -> None:
    """Write each layer's weight and bias gradient into its place in the flat gradient."""
    grad = grad_output
    for index in range(len(layers) - 1, -1, -1):
        layer, layer_input = layers[index], saved[index]
        torch.mm(grad.t(), layer_input, out=layer.weight_grad)
        torch.sum(grad, 0, keepdim=True, out=layer.bias_grad)
        if index:  # the observations need no gradient
            grad = torch.ops.aten.tanh_backward(grad.mm(layer.weight), layer_input)


class _WrittenOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, flat: Tensor, mlps: WrittenOutMLPs, inputs: Sequence[Sequence[Tensor]]
                ) -> tuple[Tensor, ...]:
        outputs, saved = [], []
        for group, group_inputs in zip(mlps.networks, inputs, strict=True):
            results = [mlp_forward(layers, x) for layers, x in zip(group, group_inputs, strict=True)]
            outputs.append(torch.stack([output for output, _ in results]))
            saved.append([layer_inputs for _, layer_inputs in results])
        ctx.mlps, ctx.saved = mlps, saved
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, None, None]:
        for group, saved, grad in zip(ctx.mlps.networks, ctx.saved, grad_outputs, strict=True):
            for layers, layer_inputs, agent_grad in zip(group, saved, grad.unbind(0), strict=True):
                mlp_backward(layers, layer_inputs, agent_grad)
        gradient = ctx.mlps.gradient
        ctx.mlps = ctx.saved = None
        return gradient, None, None


class WrittenOutMLPs:
    """Groups of per-agent MLPs (say, every agent's policy mean, every agent's critic) whose
    parameters are views of `flat`; calling it on each group's per-agent inputs returns each
    group's outputs stacked over agents, differentiable with respect to `flat`.

    The gradient it hands back is one buffer kept between calls: each network parameter's
    place is overwritten by every backward, every other place stays zero.
    """

    def __init__(self, flat: Tensor, groups: Sequence[Sequence[nn.Sequential]]) -> None:
        self.flat = flat
        self.gradient = torch.zeros_like(flat.detach())
        self.networks = [[linear_layers(mlp, flat, self.gradient) for mlp in group] for group in groups]

    def __call__(self, *inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        return _WrittenOut.apply(self.flat, self, inputs)


__all__ = ["WrittenOutLayer", "WrittenOutMLPs", "linear_layers", "mlp_backward", "mlp_forward"]
