"""Convolutions (``groups == 1``, not transposed): the input unfolded into patches ``u`` of shape
``(B, C_in * prod(kernel), T)`` makes a convolution a :class:`~.linear.SharedLinearRule` over its
``T`` output positions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import LayerRule
from .linear import SharedLinearRule
from .registry import register_rule


def unfold(module: nn.modules.conv._ConvNd, inputs: Tensor) -> Tensor:
    """Patches ``(B, C_in * prod(k), T)`` in the order of ``weight.reshape(C_out, -1)``."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = F.pad(inputs, module._reversed_padding_repeated_twice, mode=mode)
    spatial = inputs.dim() - 2
    if spatial == 2:
        return F.unfold(padded, module.kernel_size, dilation=module.dilation, stride=module.stride)
    if spatial == 1:
        patches = F.unfold(
            padded.unsqueeze(2),
            (1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            stride=(1, module.stride[0]),
        )
        return patches
    from unfoldNd import unfoldNd

    return unfoldNd(padded, module.kernel_size, dilation=module.dilation, stride=module.stride)


class ConvLayout:
    """A convolution's patches ``(B, p, T)`` and output gradients ``(B, C_out, T)``."""

    @staticmethod
    def patches(module: nn.modules.conv._ConvNd, inputs: Tensor) -> Tensor:
        return unfold(module, inputs)

    @staticmethod
    def deltas(module: nn.modules.conv._ConvNd, grad_out: Tensor) -> Tensor:
        return grad_out.reshape(grad_out.shape[0], module.out_channels, -1)


def _plain(module: nn.modules.conv._ConvNd) -> bool:
    return module.groups == 1 and not module.transposed


@register_rule(
    nn.modules.conv._ConvNd, parameters=("weight", "bias"), layout=ConvLayout, when=_plain
)
def conv_rule(module: nn.modules.conv._ConvNd, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    """:class:`~.linear.SharedLinearRule` of a convolution over its output positions."""
    return SharedLinearRule(
        module.weight,
        module.bias,
        ConvLayout.patches(module, inputs),
        ConvLayout.deltas(module, grad_out),
    )
