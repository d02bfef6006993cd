"""Per-layer rules for the statistics of individual gradients, computed from layer inputs and
output gradients without forming the ``B x D`` individual gradients of the whole network.

Every rule answers the same questions for each parameter tensor of one layer:

* ``sq_norms``: ``||g_n||^2`` per sample,
* ``dots(v)``: ``g_n . v`` per sample for a parameter-shaped ``v``,
* ``mean_grads``: ``g = (1/B) sum_n g_n``,
* ``sgs``: ``sum_n g_n^2`` per coordinate,
* ``rows``: selected rows of individual gradients, for histograms.

``g_n`` is the gradient of the individual loss ``l_n``; the captured output gradient ``delta`` is that
of the mean loss, ``delta_n = (1/B) dl_n/dz_n``, hence the factor ``B`` below.

Layers with weight sharing (``T`` positions: convolutions, sequences) use the mixed rule of the
performance notes: "ghost" Gram norms ``sum_{t,s} (a_t.a_s)(delta_t.delta_s)`` when
``2 T^2 < p d_out``, otherwise the layer's individual gradients are materialized in sample blocks,
reduced, and freed at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Materialize at most this many elements of individual gradients at once (per layer block).
BLOCK_ELEMENTS = 2**24


def _blocks(batch: int, per_sample: int) -> list[slice]:
    size = max(1, BLOCK_ELEMENTS // max(1, per_sample))
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]


class LayerRule:
    """Statistics of the individual gradients of one layer's parameters (see module docstring)."""

    params: list[Tensor]

    @property
    def batch_size(self) -> int:
        raise NotImplementedError

    def mean_grads(self) -> list[Tensor]:
        raise NotImplementedError

    def reduce(
        self, *, sq_norms: bool, sgs: bool, dot_with: Sequence[Tensor] | None
    ) -> tuple[list[Tensor] | None, list[Tensor] | None, Tensor | None]:
        """Per-parameter ``||g_n||^2`` and ``sum_n g_n^2``, and ``sum_params g_n . v`` (shape B)."""
        raise NotImplementedError

    def dots(self, vectors: Sequence[Tensor]) -> Tensor:
        """``sum over this layer's parameters of g_n . v`` for parameter-shaped ``vectors``."""
        return self.reduce(sq_norms=False, sgs=False, dot_with=vectors)[2]

    def row_shape(self, index: int) -> tuple[int, int]:
        """(rows per sample, row length) of parameter ``index``'s individual gradients."""
        raise NotImplementedError

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        """Rows ``g_{n}[row]`` for the pairs ``(samples[k], rows[k])``; shape ``(k, row length)``."""
        raise NotImplementedError


class SharedLinearRule(LayerRule):
    """``z_{n,t} = W a_{n,t} + b`` for positions ``t``: Linear (T = 1 or sequences) and convolutions
    (``a`` = unfolded input patches).  ``g_n(W) = B sum_t delta_{n,t} a_{n,t}^T``,
    ``g_n(b) = B sum_t delta_{n,t}``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, inputs: Tensor, deltas: Tensor) -> None:
        self.weight, self.bias = weight, bias
        self.params = [weight] if bias is None else [weight, bias]
        self.a = inputs  # (B, T, p)
        self.d = deltas  # (B, T, o)
        self.scale = float(inputs.shape[0])

    @property
    def batch_size(self) -> int:
        return self.a.shape[0]

    @property
    def _positions(self) -> int:
        return self.a.shape[1]

    def _weight_matrix(self, tensor: Tensor) -> Tensor:
        return tensor.reshape(self.d.shape[2], -1)

    def mean_grads(self) -> list[Tensor]:
        o, p = self.d.shape[2], self.a.shape[2]
        grad_w = self.d.reshape(-1, o).T @ self.a.reshape(-1, p)
        out = [grad_w.reshape(self.weight.shape)]
        if self.bias is not None:
            out.append(self.d.sum(dim=(0, 1)).reshape(self.bias.shape))
        return out

    def _bias_samples(self) -> Tensor:
        return self.scale * self.d.sum(dim=1)  # (B, o)

    def reduce(self, *, sq_norms, sgs, dot_with):
        a, d, scale = self.a, self.d, self.scale
        batch, positions, p = a.shape
        o = d.shape[2]
        norms_w = sgs_w = dots = None
        ghost = 2 * positions * positions < p * o
        if positions == 1:
            a1, d1 = a[:, 0], d[:, 0]
            if sq_norms:
                norms_w = scale**2 * (a1 * a1).sum(1) * (d1 * d1).sum(1)
            if sgs:
                sgs_w = (scale**2 * ((d1 * d1).T @ (a1 * a1))).reshape(self.weight.shape)
            if dot_with is not None:
                v = self._weight_matrix(dot_with[0])
                dots = scale * ((a1 @ v.T) * d1).sum(1)
        elif sgs or (sq_norms and not ghost):
            norms_w = torch.empty(batch, dtype=a.dtype, device=a.device) if sq_norms else None
            sgs_w = torch.zeros(o, p, dtype=a.dtype, device=a.device) if sgs else None
            dots = (
                torch.empty(batch, dtype=a.dtype, device=a.device) if dot_with is not None else None
            )
            v = self._weight_matrix(dot_with[0]) if dot_with is not None else None
            for block in _blocks(batch, o * p):
                grads = scale * torch.bmm(d[block].transpose(1, 2), a[block])  # (b, o, p)
                if norms_w is not None:
                    norms_w[block] = grads.square().sum((1, 2))
                if sgs_w is not None:
                    sgs_w += grads.square().sum(0)
                if dots is not None:
                    dots[block] = (grads * v).sum((1, 2))
                del grads
            sgs_w = sgs_w.reshape(self.weight.shape) if sgs_w is not None else None
        else:
            if sq_norms:
                gram_a = torch.bmm(a, a.transpose(1, 2))
                gram_d = torch.bmm(d, d.transpose(1, 2))
                norms_w = scale**2 * (gram_a * gram_d).sum((1, 2))
                del gram_a, gram_d
            if dot_with is not None:
                v = self._weight_matrix(dot_with[0])
                dots = scale * ((a @ v.T) * d).sum((1, 2))
        norms = [norms_w] if sq_norms else None
        sums = [sgs_w] if sgs else None
        if self.bias is not None:
            per_sample = self._bias_samples()
            if sq_norms:
                norms.append(per_sample.square().sum(1))
            if sgs:
                sums.append(per_sample.square().sum(0).reshape(self.bias.shape))
            if dot_with is not None:
                dots = dots + per_sample @ dot_with[1].reshape(-1)
        return norms, sums, dots

    def row_shape(self, index: int) -> tuple[int, int]:
        o, p = self.d.shape[2], self.a.shape[2]
        return (o, p) if index == 0 else (o, 1)

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        deltas = self.d[samples, :, rows]  # (k, T)
        if index == 1:
            return self.scale * deltas.sum(1, keepdim=True)
        return self.scale * torch.bmm(deltas.unsqueeze(1), self.a[samples]).squeeze(1)


class MaterializedRule(LayerRule):
    """Layers whose individual gradients are small (normalization affines): given directly as
    ``(B, *param.shape)`` tensors."""

    def __init__(self, params: list[Tensor], per_sample: list[Tensor]) -> None:
        self.params = params
        self.per_sample = [g.reshape(g.shape[0], -1) for g in per_sample]

    @property
    def batch_size(self) -> int:
        return self.per_sample[0].shape[0]

    def mean_grads(self) -> list[Tensor]:
        return [g.mean(0).reshape(p.shape) for g, p in zip(self.per_sample, self.params)]

    def reduce(self, *, sq_norms, sgs, dot_with):
        norms = [g.square().sum(1) for g in self.per_sample] if sq_norms else None
        sums = (
            [g.square().sum(0).reshape(p.shape) for g, p in zip(self.per_sample, self.params)]
            if sgs
            else None
        )
        dots = None
        if dot_with is not None:
            dots = sum(g @ v.reshape(-1) for g, v in zip(self.per_sample, dot_with))
        return norms, sums, dots

    def row_shape(self, index: int) -> tuple[int, int]:
        return (self.per_sample[index].shape[1], 1)

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        return self.per_sample[index][samples, rows].unsqueeze(1)


# --------------------------------------------------------------------------- rule factories


def _linear_rule(module: nn.Linear, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    batch = inputs.shape[0]
    a = inputs.reshape(batch, -1, module.in_features)
    d = grad_out.reshape(batch, -1, module.out_features)
    return SharedLinearRule(module.weight, module.bias, a, d)


def _unfold(module: nn.modules.conv._ConvNd, inputs: Tensor) -> Tensor:
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


def _conv_rule(module: nn.modules.conv._ConvNd, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    batch = inputs.shape[0]
    patches = _unfold(module, inputs).transpose(1, 2)  # (B, T, p)
    d = grad_out.reshape(batch, module.out_channels, -1).transpose(1, 2)  # (B, T, o)
    return SharedLinearRule(module.weight, module.bias, patches, d)


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


def _batchnorm_eval_rule(module: nn.modules.batchnorm._BatchNorm, inputs, grad_out) -> LayerRule:
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    mean = module.running_mean.reshape(shape)
    std = torch.sqrt(module.running_var.reshape(shape) + module.eps)
    dims = tuple(i for i in range(inputs.dim()) if i != 1)[1:]
    return _affine_rule(module, (inputs - mean) / std, grad_out, dims)


def _layernorm_rule(module: nn.LayerNorm, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    axes = tuple(range(inputs.dim() - len(module.normalized_shape), inputs.dim()))
    mean = inputs.mean(dim=axes, keepdim=True)
    var = inputs.var(dim=axes, keepdim=True, unbiased=False)
    normalized = (inputs - mean) / torch.sqrt(var + module.eps)
    dims = tuple(range(1, inputs.dim() - len(module.normalized_shape)))
    return _affine_rule(module, normalized, grad_out, dims)


def _groupnorm_rule(module: nn.GroupNorm, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    batch = inputs.shape[0]
    grouped = inputs.reshape(batch, module.num_groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, keepdim=True, unbiased=False)
    normalized = ((grouped - mean) / torch.sqrt(var + module.eps)).reshape(inputs.shape)
    dims = tuple(range(2, inputs.dim()))
    return _affine_rule(module, normalized, grad_out, dims)


def rule_factory(module: nn.Module):
    """The rule builder for ``module``, or ``None`` when the engine has no exact rule for it.

    Raises ``UnsupportedModelError`` for a train-mode BatchNorm (handled by the caller).
    """
    if isinstance(module, nn.Linear):
        return _linear_rule
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(
        module, nn.modules.conv._ConvTransposeNd
    ):
        return _conv_rule if module.groups == 1 else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _batchnorm_eval_rule
    if isinstance(module, nn.LayerNorm):
        return _layernorm_rule
    if isinstance(module, nn.GroupNorm):
        return _groupnorm_rule
    return None
