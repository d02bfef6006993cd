"""The layer-rule interface and the generic containers: statistics of the individual gradients of
one layer's parameters, computed from its recorded inputs and output gradients without forming
the ``B x D`` individual gradients of the whole network.

Every rule answers the same questions for each parameter tensor of its layer:

* ``sq_norms``: ``||g_n||^2`` per sample,
* ``project(v)``: ``g_n . v`` per sample for a parameter-shaped ``v``,
* ``means``: ``g = (1/B) sum_n g_n``,
* ``sum_sq_grads``: ``sum_n g_n^2`` per coordinate,
* ``rows`` / ``elements``: selected individual-gradient entries, for histograms.

``g_n`` is the gradient of the individual loss ``l_n``; the captured output gradient ``delta`` is that
of the mean loss, ``delta_n = (1/B) dl_n/dz_n``, hence the factor ``B`` in the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

# Materialize at most this many elements of individual gradients at once (per layer block).
BLOCK_ELEMENTS = 2**24


def blocks(batch: int, per_sample: int) -> list[slice]:
    size = max(1, BLOCK_ELEMENTS // max(1, per_sample))
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]


@dataclass
class Reduction:
    """One layer's statistics; per-parameter lists follow ``rule.params``; ``mean_dots``
    (``g_n . g``) and ``projections`` (``g_n . v``, one per direction) are summed over the layer's
    parameters (shape ``[B]``)."""

    means: list[Tensor]
    sq_norms: list[Tensor] | None = None
    sum_sq_grads: list[Tensor] | None = None
    mean_dots: Tensor | None = None
    projections: list[Tensor] = field(default_factory=list)


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
        sum_sq_grads: bool,
        mean_dots: bool,
        directions: Sequence[Sequence[Tensor]] = (),
    ) -> Reduction:
        """``g``; optionally ``||g_n||^2``, ``sum_n g_n^2``, ``g_n . g`` and ``g_n . v`` for each
        parameter-shaped direction ``v`` (one tensor per parameter of the layer)."""
        raise NotImplementedError

    def project(self, direction: Sequence[Tensor]) -> Tensor:
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


class MaterializedRule(LayerRule):
    """Layers whose individual gradients are small (normalization affines): given directly as
    ``(B, *param.shape)`` tensors."""

    def __init__(self, params: list[Tensor], per_sample: list[Tensor]) -> None:
        self.params = params
        self.per_sample = [g.reshape(g.shape[0], -1) for g in per_sample]

    @property
    def batch_size(self) -> int:
        return self.per_sample[0].shape[0]

    def project(self, direction: Sequence[Tensor]) -> Tensor:
        return sum(g @ v.reshape(-1) for g, v in zip(self.per_sample, direction))

    def reduce(self, *, sq_norms, sum_sq_grads, mean_dots, directions=()):
        means = [g.mean(0) for g in self.per_sample]
        out = Reduction(means=[m.reshape(p.shape) for m, p in zip(means, self.params)])
        if sq_norms:
            out.sq_norms = [g.square().sum(1) for g in self.per_sample]
        if sum_sq_grads:
            out.sum_sq_grads = [
                g.square().sum(0).reshape(p.shape) for g, p in zip(self.per_sample, self.params)
            ]
        if mean_dots:
            out.mean_dots = sum(g @ m for g, m in zip(self.per_sample, means))
        out.projections = [self.project(v) for v in directions]
        return out

    def row_shape(self, index: int) -> tuple[int, int]:
        return (self.per_sample[index].shape[1], 1)

    def rows(self, index: int, samples: Tensor, rows: Tensor) -> Tensor:
        return self.per_sample[index][samples, rows].unsqueeze(1)

    def elements(self, index: int, samples: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return self.per_sample[index][samples, rows]

    def materialize(self) -> list[Tensor]:
        return list(self.per_sample)


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

    def project(self, direction: Sequence[Tensor]) -> Tensor:
        return self._zeros()

    def reduce(self, *, sq_norms, sum_sq_grads, mean_dots, directions=()):
        out = Reduction(means=[torch.zeros_like(p) for p in self.params])
        if sq_norms:
            out.sq_norms = [self._zeros() for _ in self.params]
        if sum_sq_grads:
            out.sum_sq_grads = [torch.zeros_like(p) for p in self.params]
        if mean_dots:
            out.mean_dots = self._zeros()
        out.projections = [self._zeros() for _ in directions]
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

    def project(self, direction: Sequence[Tensor]) -> Tensor:
        return self.rule.project(self._padded(direction))

    def reduce(self, *, sq_norms, sum_sq_grads, mean_dots, directions=()):
        inner = self.rule.reduce(
            sq_norms=sq_norms,
            sum_sq_grads=sum_sq_grads,
            mean_dots=False,
            directions=[self._padded(v) for v in directions],
        )
        out = Reduction(means=[inner.means[i] for i in self.keep], projections=inner.projections)
        if sq_norms:
            out.sq_norms = [inner.sq_norms[i] for i in self.keep]
        if sum_sq_grads:
            out.sum_sq_grads = [inner.sum_sq_grads[i] for i in self.keep]
        if mean_dots:
            out.mean_dots = self.project(out.means)
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
