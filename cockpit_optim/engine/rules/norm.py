"""Normalization layers: an elementwise affine ``y = gamma * xhat + beta`` of the normalized input
``xhat``, whose individual gradients are small (``(B, C)``) and are materialized directly.

Train-mode BatchNorm mixes the samples of a batch; the engine refuses it unless the user opts in
to treating the batch statistics as constants (an approximation, see ``MonitoredOptimizer``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LayerRule, MaterializedRule
from .registry import register_rule


def _affine_rule(module: nn.Module, normalized: Tensor, grad_out: Tensor, dims) -> LayerRule:
    """Elementwise affine ``y = gamma * xhat + beta``; individual gradients summed over ``dims``."""
    batch = grad_out.shape[0]

    def summed(tensor: Tensor) -> Tensor:
        return tensor.sum(dim=dims) if dims else tensor  # sum(dim=()) would sum everything

    params, per_sample = [], []
    if module.weight is not None:
        params.append(module.weight)
        per_sample.append(batch * summed(grad_out * normalized))
    if module.bias is not None:
        params.append(module.bias)
        per_sample.append(batch * summed(grad_out))
    return MaterializedRule(params, per_sample)


@register_rule(nn.modules.batchnorm._BatchNorm, parameters=("weight", "bias"))
def batchnorm_rule(
    module: nn.modules.batchnorm._BatchNorm, inputs: Tensor, grad_out: Tensor
) -> LayerRule:
    """Affine of BatchNorm.  Eval mode (running statistics): exact.  Train mode (only with the
    documented opt-in): the batch statistics are treated as constants, an approximation."""
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    dims = tuple(i for i in range(inputs.dim()) if i != 1)[1:]
    if module.training or module.running_mean is None:
        axes = (0, *dims)
        mean = inputs.mean(dim=axes, keepdim=True)
        var = inputs.var(dim=axes, keepdim=True, unbiased=False)
    else:
        mean = module.running_mean.reshape(shape)
        var = module.running_var.reshape(shape)
    return _affine_rule(module, (inputs - mean) / torch.sqrt(var + module.eps), grad_out, dims)


@register_rule(nn.LayerNorm, parameters=("weight", "bias"))
def layernorm_rule(module: nn.LayerNorm, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    axes = tuple(range(inputs.dim() - len(module.normalized_shape), inputs.dim()))
    mean = inputs.mean(dim=axes, keepdim=True)
    var = inputs.var(dim=axes, keepdim=True, unbiased=False)
    normalized = (inputs - mean) / torch.sqrt(var + module.eps)
    dims = tuple(range(1, inputs.dim() - len(module.normalized_shape)))
    return _affine_rule(module, normalized, grad_out, dims)


@register_rule(nn.GroupNorm, parameters=("weight", "bias"))
def groupnorm_rule(module: nn.GroupNorm, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    batch = inputs.shape[0]
    grouped = inputs.reshape(batch, module.num_groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, keepdim=True, unbiased=False)
    normalized = ((grouped - mean) / torch.sqrt(var + module.eps)).reshape(inputs.shape)
    dims = tuple(range(2, inputs.dim()))
    return _affine_rule(module, normalized, grad_out, dims)
