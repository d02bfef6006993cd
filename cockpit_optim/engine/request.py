"""What instruments ask of the engine (:class:`Request`) and what they get (:class:`Statistics`)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .curvature import EigenResult

# Block size of the float64 reductions over all coordinates.
_BLOCK = 2**22


@dataclass(frozen=True)
class HistogramRequest:
    """Binning asked for by a histogram instrument."""

    bins: int | tuple[int, int]
    range: tuple[float, float] | None
    max_elements: int | None


@dataclass(frozen=True)
class Request:
    """What the active instruments need at one step; ``|`` merges two requests."""

    losses: bool = False
    grad_norms: bool = False
    sq_norms: bool = False
    dots: bool = False
    mean_grads: bool = False
    sgs: bool = False
    hist1d: HistogramRequest | None = None
    hist2d: HistogramRequest | None = None
    diagonal: bool = False
    max_eigenvalue: bool = False
    projection: bool = False
    distance: bool = False
    update: bool = False

    def __or__(self, other: Request) -> Request:
        return Request(
            **{
                name: getattr(self, name) or getattr(other, name)
                for name in self.__dataclass_fields__
            }
        )

    @property
    def first_order(self) -> bool:
        return any((self.sq_norms, self.dots, self.mean_grads, self.sgs, self.hist1d, self.hist2d))

    @property
    def captures(self) -> bool:
        """Whether the forward/backward pass must be recorded (hooks armed)."""
        return (
            self.first_order
            or self.projection
            or self.losses
            or self.diagonal
            or self.max_eigenvalue
        )


@dataclass
class Statistics:
    """Everything instruments read at one step.  Per-parameter lists follow ``names``.

    ``sq_norms[n] = ||g_n||^2``, ``dots[n] = g_n . g`` (float64, shape ``[B]``),
    ``mean_grads`` = ``g``, ``sgs`` = ``sum_n g_n^2`` per coordinate, ``diagonal`` = Hessian
    diagonal (or GGN, see ``diagonal_method``).  ``unavailable`` maps a statistic that could not be
    computed at this step to the reason.
    """

    batch_size: int
    names: list[str]
    lr: float
    losses: Tensor | None = None
    grad_norms: dict[str, float] | None = None
    sq_norms: Tensor | None = None
    dots: Tensor | None = None
    mean_grads: list[Tensor] | None = None
    sgs: list[Tensor] | None = None
    hist1d: dict | None = None
    hist2d: dict | None = None
    diagonal: list[Tensor] | None = None
    diagonal_method: str = "exact"
    max_eigenvalue: EigenResult | None = None
    distance: float | None = None
    update_size: float | None = None
    alpha: Any = None
    projection: Tensor | None = None
    trace_stderr: float | None = None
    rank_grad_sq_norm: float | None = None  # mean over ranks of ||g_rank||^2 (distributed only)
    rank_batch_size: int | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    def blocks(self, *fields: str) -> Iterator[tuple[Tensor, ...]]:
        """Matching float64 blocks (at most ``2^22`` elements) of per-parameter statistics, e.g.
        ``blocks("mean_grads", "sgs")``: sums over all coordinates in float64 without a
        ``D``-sized float64 copy.  The blocks are copies: callers may modify them in place."""
        for tensors in zip(*(getattr(self, name) for name in fields)):
            flats = [t.detach().reshape(-1) for t in tensors]
            for start in range(0, flats[0].numel(), _BLOCK):
                yield tuple(f[start : start + _BLOCK].to(torch.float64, copy=True) for f in flats)

    @functools.cached_property
    def signal_to_noise(self) -> tuple[float, int]:
        """``(sum_{d: v_d > 0} g_d^2 / v_d, #{d: v_d > 0})`` with the biased per-coordinate
        variance ``v_d = sgs_d / B - g_d^2`` (float64), shared by EarlyStopping and MeanGSNR."""
        sums = 0  # [sum of ratios, count], kept on the statistics' device until the one read
        for grad, sgs in self.blocks("mean_grads", "sgs"):
            grad2 = grad.square_()
            noise = sgs.div_(self.batch_size).sub_(grad2)
            keep = noise > 0
            ratios = grad2.div_(noise).masked_fill_(keep.logical_not(), 0.0)
            sums = sums + torch.stack([ratios.sum(), keep.sum().double()])
        total, count = torch.as_tensor(sums, dtype=torch.float64).expand(2).tolist()
        return float(total), int(count)

    @functools.cached_property
    def diagonal_sum(self) -> float:
        """``sum_d`` of the curvature diagonal, in float64."""
        return float(sum(block.sum() for (block,) in self.blocks("diagonal")))

    @functools.cached_property
    def sq_norms_sum(self) -> float:
        """``sum_n ||g_n||^2`` (read once per step, shared by the instruments)."""
        return float(self.sq_norms.sum())

    @functools.cached_property
    def dots_sq_sum(self) -> float:
        """``sum_n (g_n . g)^2``."""
        return float(self.dots.square().sum())

    @functools.cached_property
    def grad_sq_norm(self) -> float:
        """``||g||^2`` in float64."""
        return float(sum(grad.square().sum() for (grad,) in self.blocks("mean_grads")))
