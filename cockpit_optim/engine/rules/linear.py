"""Linear layers, and the rule shared with convolutions: ``z_{n,:,t} = W u_{n,:,t} + b`` at positions
``t``.  With weight sharing (``T > 1``: sequences, convolutions) norms use "ghost" Gram products
``sum_{t,s} (u_t . u_s)(delta_t . delta_s)`` when ``2 T^2 < p o``; otherwise the layer's individual
gradients are materialized in sample blocks, reduced, and freed at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import BLOCK_ELEMENTS, LayerRule, Reduction, blocks
from .registry import register_rule


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

    def project(self, direction: Sequence[Tensor]) -> Tensor:
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
            for block in blocks(batch, o * p):
                weight += torch.bmm(scaled[block], self.u[block].transpose(1, 2)).square_().sum(0)
        out = [weight.reshape(self.weight.shape)]
        if self.bias is not None:
            out.append(scaled.sum(2).square().sum(0).reshape(self.bias.shape))
        return out

    def reduce(self, *, sq_norms, sum_sq_grads, mean_dots, directions=()):
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
            sum_sq_grads or dots_needed or (sq_norms and 2 * positions**2 >= p * o)
        )
        if materialize and batch * o * p <= BLOCK_ELEMENTS:
            grads = scale * torch.bmm(self.d, self.u.transpose(1, 2)).reshape(batch, -1)
            mean_w = grads.mean(0)
            squares = grads.square() if (sq_norms or sum_sq_grads) else None
            norms_w = squares.sum(1) if sq_norms else None
            sgs_w = squares.sum(0) if sum_sq_grads else None
            dots_w = grads @ mean_w if mean_dots else None
            extra_w = [grads @ m.reshape(-1) for m in matrices]
            del grads, squares
            mean_w = mean_w.reshape(o, p)
        elif materialize:
            mean_w = self._weight_mean()
            norms_w = self.u.new_empty(batch) if sq_norms else None
            sgs_w = self.u.new_zeros(o * p) if sum_sq_grads else None
            dots_w = self.u.new_empty(batch) if mean_dots else None
            extra_w = [self.u.new_empty(batch) for _ in matrices]
            for block in blocks(batch, o * p):
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
            if sum_sq_grads:  # positions == 1 here
                u1, d1 = self.u[:, :, 0], self.d[:, :, 0]
                sgs_w = scale**2 * (d1.square().T @ u1.square())
            against = ([mean_w] if mean_dots else []) + matrices
            products = self._weight_dots_many(against) if against else []
            dots_w = products[0] if mean_dots else None
            extra_w = products[1:] if mean_dots else products
        out.means.append(mean_w.reshape(self.weight.shape))
        out.sq_norms = [norms_w] if sq_norms else None
        out.sum_sq_grads = [sgs_w.reshape(self.weight.shape)] if sum_sq_grads else None
        out.mean_dots, out.projections = dots_w, extra_w
        if self.bias is not None:
            per_sample = self._bias_samples()
            mean_b = per_sample.mean(0)
            out.means.append(mean_b.reshape(self.bias.shape))
            if sq_norms:
                out.sq_norms.append(per_sample.square().sum(1))
            if sum_sq_grads:
                out.sum_sq_grads.append(per_sample.square().sum(0).reshape(self.bias.shape))
            if mean_dots:
                out.mean_dots = out.mean_dots + per_sample @ mean_b
            out.projections = [
                t + per_sample @ v[1].reshape(-1) for t, v in zip(out.projections, directions)
            ]
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


class LinearLayout:
    """``nn.Linear`` as a :class:`SharedLinearRule`: inputs ``(B, ..., p)`` and output gradients
    ``(B, ..., o)`` become ``(B, p, T)`` and ``(B, o, T)`` with ``T`` the positions in between."""

    @staticmethod
    def patches(module: nn.Linear, inputs: Tensor) -> Tensor:
        return inputs.reshape(inputs.shape[0], -1, module.in_features).transpose(1, 2)

    @staticmethod
    def deltas(module: nn.Linear, grad_out: Tensor) -> Tensor:
        return grad_out.reshape(grad_out.shape[0], -1, module.out_features).transpose(1, 2)


@register_rule(nn.Linear, parameters=("weight", "bias"), layout=LinearLayout)
def linear_rule(module: nn.Linear, inputs: Tensor, grad_out: Tensor) -> LayerRule:
    """:class:`SharedLinearRule` of a Linear layer."""
    return SharedLinearRule(
        module.weight,
        module.bias,
        LinearLayout.patches(module, inputs),
        LinearLayout.deltas(module, grad_out),
    )
