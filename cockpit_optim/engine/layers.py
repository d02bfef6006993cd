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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Materialize at most this many elements of individual gradients at once (per layer block).
BLOCK_ELEMENTS = 2**24


def _blocks(batch: int, per_sample: int) -> list[slice]:
    size = max(1, BLOCK_ELEMENTS // max(1, per_sample))
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]


@dataclass
class Reduction:
    """One layer's statistics; per-parameter lists follow ``rule.params``, dots are summed over
    the layer's parameters (shape ``[B]``)."""

    means: list[Tensor]
    sq_norms: list[Tensor] | None = None
    sgs: list[Tensor] | None = None
    mean_dots: Tensor | None = None
    dots: list[Tensor] = field(default_factory=list)


class LayerRule:
    """Statistics of the individual gradients of one layer's parameters (see module docstring)."""

    params: list[Tensor]
    positions: int = 1

    @property
    def batch_size(self) -> int:
        raise NotImplementedError

    def reduce(
        self,
        *,
        sq_norms: bool,
        sgs: bool,
        mean_dots: bool,
        directions: Sequence[Sequence[Tensor]] = (),
    ) -> Reduction:
        """``g``; optionally ``||g_n||^2``, ``sum_n g_n^2``, ``g_n . g`` and ``g_n . v`` for each
        parameter-shaped direction ``v`` (one tensor per parameter of the layer)."""
        raise NotImplementedError

    def dots(self, direction: Sequence[Tensor]) -> Tensor:
        """``g_n . v`` summed over the layer's parameters."""
        raise NotImplementedError

    def row_shape(self, index: int) -> tuple[int, int]:
        """(rows per sample, row length) of parameter ``index``'s individual gradients."""
        raise NotImplementedError

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        """Rows ``g_n[row]`` for the pairs ``(samples[k], rows[k])``; shape ``(k, row length)``."""
        raise NotImplementedError

    def elements(self, index: int, samples: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Single elements ``g_n[row, col]`` of parameter ``index`` in its :meth:`row_shape`
        layout, for the triples ``(samples[k], rows[k], cols[k])``; shape ``k``."""
        raise NotImplementedError

    def materialize(self) -> list[Tensor]:
        """All individual gradients, ``(B, numel)`` per parameter (used for tied weights)."""
        raise NotImplementedError


class SharedLinearRule(LayerRule):
    """``z_{n,:,t} = W u_{n,:,t} + b`` at positions ``t``: Linear (``T = 1``, or sequences) and
    convolutions (``u`` = unfolded input patches, ``(B, p, T)``; ``delta`` is ``(B, o, T)``).

    ``g_n(W) = B sum_t delta_{n,:,t} u_{n,:,t}^T``, ``g_n(b) = B sum_t delta_{n,:,t}``.
    """

    def __init__(
        self, weight: Tensor, bias: Tensor | None, patches: Tensor, deltas: Tensor
    ) -> None:
        self.weight, self.bias = weight, bias
        self.params = [weight] if bias is None else [weight, bias]
        self.u = patches  # (B, p, T)
        self.d = deltas  # (B, o, T)
        self.positions = patches.shape[2]
        self.scale = float(patches.shape[0])

    @property
    def batch_size(self) -> int:
        return self.u.shape[0]

    def _matrix(self, tensor: Tensor) -> Tensor:
        return tensor.reshape(self.d.shape[1], -1)

    def _bias_samples(self) -> Tensor:
        return self.scale * self.d.sum(dim=2)  # (B, o)

    def _weight_mean(self) -> Tensor:
        if self.positions == 1:
            return self.d[:, :, 0].T @ self.u[:, :, 0]
        return torch.einsum("bot,bpt->op", self.d, self.u)

    def _weight_dots(self, matrix: Tensor) -> Tensor:
        """``B sum_t delta_t^T V u_t``: one layer-forward with ``V``, no individual gradients."""
        if self.positions == 1:
            return self.scale * ((self.u[:, :, 0] @ matrix.T) * self.d[:, :, 0]).sum(1)
        return self.scale * (self.d * torch.matmul(matrix, self.u)).sum((1, 2))

    def _weight_dots_many(self, matrices: list[Tensor]) -> list[Tensor]:
        """:meth:`_weight_dots` for several ``V`` at once (one matrix product without sharing)."""
        if self.positions > 1 or len(matrices) == 1:
            return [self._weight_dots(m) for m in matrices]
        u1, d1 = self.u[:, :, 0], self.d[:, :, 0]
        outputs = (u1 @ torch.cat(matrices).T).reshape(u1.shape[0], len(matrices), -1)
        return list((self.scale * (outputs * d1.unsqueeze(1)).sum(2)).unbind(1))

    def dots(self, direction: Sequence[Tensor]) -> Tensor:
        total = self._weight_dots(self._matrix(direction[0]))
        if self.bias is not None:
            total = total + self._bias_samples() @ direction[1].reshape(-1)
        return total

    def second_moments(self) -> list[Tensor]:
        """``sum_n g_n^2`` per coordinate alone (no means, norms or dots), materializing the
        weight's individual gradients in blocks only for shared weights."""
        batch, p, positions = self.u.shape
        o = self.d.shape[1]
        scaled = self.scale * self.d
        if positions == 1:
            weight = scaled[:, :, 0].square().T @ self.u[:, :, 0].square()
        else:
            weight = self.u.new_zeros(o, p)
            for block in _blocks(batch, o * p):
                weight += torch.bmm(scaled[block], self.u[block].transpose(1, 2)).square_().sum(0)
        out = [weight.reshape(self.weight.shape)]
        if self.bias is not None:
            out.append(scaled.sum(2).square().sum(0).reshape(self.bias.shape))
        return out

    def reduce(self, *, sq_norms, sgs, mean_dots, directions=()):
        batch, p, positions = self.u.shape
        o = self.d.shape[1]
        scale = self.scale
        out = Reduction(means=[])
        matrices = [self._matrix(v[0]) for v in directions]
        norms_w = sgs_w = dots_w = None
        extra_w: list[Tensor] = []
        # With shared weights, one inner product g_n . V costs a layer-forward (B o p T), as
        # much as materializing the individual gradients that give all of them at once; ghost
        # norms win only for norms alone on layers with 2 T^2 < p o.
        dots_needed = mean_dots or bool(directions)
        materialize = positions > 1 and (
            sgs or dots_needed or (sq_norms and 2 * positions**2 >= p * o)
        )
        if materialize and batch * o * p <= BLOCK_ELEMENTS:
            grads = scale * torch.bmm(self.d, self.u.transpose(1, 2)).reshape(batch, -1)
            mean_w = grads.mean(0)
            squares = grads.square() if (sq_norms or sgs) else None
            norms_w = squares.sum(1) if sq_norms else None
            sgs_w = squares.sum(0) if sgs else None
            dots_w = grads @ mean_w if mean_dots else None
            extra_w = [grads @ m.reshape(-1) for m in matrices]
            del grads, squares
            mean_w = mean_w.reshape(o, p)
        elif materialize:
            mean_w = self._weight_mean()
            norms_w = self.u.new_empty(batch) if sq_norms else None
            sgs_w = self.u.new_zeros(o * p) if sgs else None
            dots_w = self.u.new_empty(batch) if mean_dots else None
            extra_w = [self.u.new_empty(batch) for _ in matrices]
            for block in _blocks(batch, o * p):
                grads = scale * torch.bmm(self.d[block], self.u[block].transpose(1, 2))
                grads = grads.reshape(grads.shape[0], -1)
                squares = grads.square()
                if norms_w is not None:
                    norms_w[block] = squares.sum(1)
                if sgs_w is not None:
                    sgs_w += squares.sum(0)
                if dots_w is not None:
                    dots_w[block] = grads @ mean_w.reshape(-1)
                for target, m in zip(extra_w, matrices):
                    target[block] = grads @ m.reshape(-1)
                del grads, squares
        else:
            mean_w = self._weight_mean()
            if sq_norms and positions == 1:
                u1, d1 = self.u[:, :, 0], self.d[:, :, 0]
                norms_w = scale**2 * u1.square().sum(1) * d1.square().sum(1)
            elif sq_norms:
                gram_u = torch.bmm(self.u.transpose(1, 2), self.u)
                gram_d = torch.bmm(self.d.transpose(1, 2), self.d)
                norms_w = scale**2 * (gram_u * gram_d).sum((1, 2))
                del gram_u, gram_d
            if sgs:  # positions == 1 here
                u1, d1 = self.u[:, :, 0], self.d[:, :, 0]
                sgs_w = scale**2 * (d1.square().T @ u1.square())
            against = ([mean_w] if mean_dots else []) + matrices
            products = self._weight_dots_many(against) if against else []
            dots_w = products[0] if mean_dots else None
            extra_w = products[1:] if mean_dots else products
        out.means.append(mean_w.reshape(self.weight.shape))
        out.sq_norms = [norms_w] if sq_norms else None
        out.sgs = [sgs_w.reshape(self.weight.shape)] if sgs else None
        out.mean_dots, out.dots = dots_w, extra_w
        if self.bias is not None:
            per_sample = self._bias_samples()
            mean_b = per_sample.mean(0)
            out.means.append(mean_b.reshape(self.bias.shape))
            if sq_norms:
                out.sq_norms.append(per_sample.square().sum(1))
            if sgs:
                out.sgs.append(per_sample.square().sum(0).reshape(self.bias.shape))
            if mean_dots:
                out.mean_dots = out.mean_dots + per_sample @ mean_b
            out.dots = [t + per_sample @ v[1].reshape(-1) for t, v in zip(out.dots, directions)]
        return out

    def row_shape(self, index: int) -> tuple[int, int]:
        o, p = self.d.shape[1], self.u.shape[1]
        return (o, p) if index == 0 else (o, 1)

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        deltas = self.d[samples, rows, :]  # (k, T)
        if index == 1:
            return self.scale * deltas.sum(1, keepdim=True)
        if self.positions == 1:
            return (self.scale * deltas) * self.u[samples, :, 0]
        patches = self.u[samples]  # (k, p, T)
        return self.scale * torch.bmm(patches, deltas.unsqueeze(2)).squeeze(2)

    def materialize(self) -> list[Tensor]:
        weight = self.scale * torch.bmm(self.d, self.u.transpose(1, 2))
        out = [weight.reshape(weight.shape[0], -1)]
        if self.bias is not None:
            out.append(self._bias_samples())
        return out

    def elements(self, index: int, samples: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        batch, p, positions = self.u.shape
        o = self.d.shape[1]
        out_rows = samples * o + rows  # row (n, o) of the deltas
        if index == 1:
            return self.scale * self.d.reshape(batch * o, positions)[out_rows].sum(-1)
        in_rows = samples * p + cols  # row (n, i) of the patches
        if positions == 1:
            deltas = self.d.reshape(-1).take(out_rows)
            return deltas.mul_(self.u.reshape(-1).take(in_rows)).mul_(self.scale)
        d_rows, u_rows = self.d.reshape(batch * o, positions), self.u.reshape(batch * p, positions)
        chunk = max(1, BLOCK_ELEMENTS // (4 * positions))
        return torch.cat(
            [
                self.scale * (d_rows[a] * u_rows[b]).sum(-1)
                for a, b in zip(out_rows.split(chunk), in_rows.split(chunk))
            ]
        )


class MaterializedRule(LayerRule):
    """Layers whose individual gradients are small (normalization affines): given directly as
    ``(B, *param.shape)`` tensors."""

    def __init__(self, params: list[Tensor], per_sample: list[Tensor]) -> None:
        self.params = params
        self.per_sample = [g.reshape(g.shape[0], -1) for g in per_sample]

    @property
    def batch_size(self) -> int:
        return self.per_sample[0].shape[0]

    def dots(self, direction: Sequence[Tensor]) -> Tensor:
        return sum(g @ v.reshape(-1) for g, v in zip(self.per_sample, direction))

    def reduce(self, *, sq_norms, sgs, mean_dots, directions=()):
        means = [g.mean(0) for g in self.per_sample]
        out = Reduction(means=[m.reshape(p.shape) for m, p in zip(means, self.params)])
        if sq_norms:
            out.sq_norms = [g.square().sum(1) for g in self.per_sample]
        if sgs:
            out.sgs = [
                g.square().sum(0).reshape(p.shape) for g, p in zip(self.per_sample, self.params)
            ]
        if mean_dots:
            out.mean_dots = sum(g @ m for g, m in zip(self.per_sample, means))
        out.dots = [self.dots(v) for v in directions]
        return out

    def row_shape(self, index: int) -> tuple[int, int]:
        return (self.per_sample[index].shape[1], 1)

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        return self.per_sample[index][samples, rows].unsqueeze(1)

    def elements(self, index: int, samples: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return self.per_sample[index][samples, rows]

    def materialize(self) -> list[Tensor]:
        return list(self.per_sample)


# --------------------------------------------------------------------------- rule factories


def _linear_rule(module: nn.Linear, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    batch = inputs.shape[0]
    u = inputs.reshape(batch, -1, module.in_features).transpose(1, 2)
    d = grad_out.reshape(batch, -1, module.out_features).transpose(1, 2)
    return SharedLinearRule(module.weight, module.bias, u, d)


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
    patches = _unfold(module, inputs)  # (B, p, T)
    d = grad_out.reshape(batch, module.out_channels, -1)  # (B, o, T)
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


def _batchnorm_rule(module: nn.modules.batchnorm._BatchNorm, inputs, grad_out) -> LayerRule:
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
        return _batchnorm_rule
    if isinstance(module, nn.LayerNorm):
        return _layernorm_rule
    if isinstance(module, nn.GroupNorm):
        return _groupnorm_rule
    return None


class ZeroRule(LayerRule):
    """Parameters that got no gradient at the step (a head the loss did not use): their
    individual gradients are zero, as ``torch.optim`` treats them."""

    def __init__(self, params: list[Tensor], batch: int) -> None:
        self.params, self._batch = params, batch

    @property
    def batch_size(self) -> int:
        return self._batch

    def _zeros(self) -> Tensor:
        return self.params[0].new_zeros(self._batch)

    def dots(self, direction: Sequence[Tensor]) -> Tensor:
        return self._zeros()

    def reduce(self, *, sq_norms, sgs, mean_dots, directions=()):
        out = Reduction(means=[torch.zeros_like(p) for p in self.params])
        if sq_norms:
            out.sq_norms = [self._zeros() for _ in self.params]
        if sgs:
            out.sgs = [torch.zeros_like(p) for p in self.params]
        if mean_dots:
            out.mean_dots = self._zeros()
        out.dots = [self._zeros() for _ in directions]
        return out

    def row_shape(self, index: int) -> tuple[int, int]:
        return (self.params[index].numel(), 1)

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        return self.params[index].new_zeros(samples.numel(), 1)

    def elements(self, index: int, samples: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return self.params[index].new_zeros(samples.numel())

    def materialize(self) -> list[Tensor]:
        return [p.new_zeros(self._batch, p.numel()) for p in self.params]


class SubsetRule(LayerRule):
    """A layer rule restricted to some of its parameters (the others frozen or not optimized):
    directions are padded with zeros, so inner products see the kept parameters only."""

    def __init__(self, rule: LayerRule, keep: list[int]) -> None:
        self.rule, self.keep = rule, keep
        self.params = [rule.params[i] for i in keep]
        self.positions = rule.positions

    @property
    def batch_size(self) -> int:
        return self.rule.batch_size

    def _padded(self, direction: Sequence[Tensor]) -> list[Tensor]:
        full = [torch.zeros_like(p) for p in self.rule.params]
        for i, v in zip(self.keep, direction):
            full[i] = v
        return full

    def dots(self, direction: Sequence[Tensor]) -> Tensor:
        return self.rule.dots(self._padded(direction))

    def reduce(self, *, sq_norms, sgs, mean_dots, directions=()):
        inner = self.rule.reduce(
            sq_norms=sq_norms,
            sgs=sgs,
            mean_dots=False,
            directions=[self._padded(v) for v in directions],
        )
        out = Reduction(means=[inner.means[i] for i in self.keep], dots=inner.dots)
        if sq_norms:
            out.sq_norms = [inner.sq_norms[i] for i in self.keep]
        if sgs:
            out.sgs = [inner.sgs[i] for i in self.keep]
        if mean_dots:
            out.mean_dots = self.dots(out.means)
        return out

    def row_shape(self, index: int) -> tuple[int, int]:
        return self.rule.row_shape(self.keep[index])

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        return self.rule.rows(self.keep[index], samples, rows)

    def elements(self, index: int, samples: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return self.rule.elements(self.keep[index], samples, rows, cols)

    def materialize(self) -> list[Tensor]:
        full = self.rule.materialize()
        return [full[i] for i in self.keep]
