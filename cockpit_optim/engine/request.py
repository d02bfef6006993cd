"""What instruments ask of the engine (:class:`Request`) and what they get (:class:`Statistics`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .curvature import EigenResult
from .trace import TraceEstimate
from .transfer import Deferred, HostTransfer

# Block size of the float64 reductions over all coordinates.
_BLOCK = 2**22


@dataclass(frozen=True)
class HistogramRequest:
    """Binning asked for by a histogram instrument."""

    bins: int | tuple[int, int]
    range: tuple[float, float] | None
    max_elements: int | None


@dataclass(frozen=True)
class TraceRequest:
    """HessTrace's tolerance: relative standard error ``rtol``, at most ``max_products``
    Hessian-vector products (where the trace is estimated)."""

    rtol: float
    max_products: int


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
    trace: TraceRequest | None = None
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
            or self.trace is not None
            or self.max_eigenvalue
        )


@dataclass
class Statistics:
    """Everything instruments read at one step.  Per-parameter lists follow ``names``.

    ``sq_norms[n] = ||g_n||^2``, ``dots[n] = g_n . g`` (float64, shape ``[B]``),
    ``mean_grads`` = ``g``, ``sgs`` = ``sum_n g_n^2`` per coordinate, ``diagonal`` = the TIC's
    curvature diagonal (named by ``diagonal_method``), ``trace`` = HessTrace's trace.  ``unavailable`` maps a statistic that could not be
    computed at this step to the reason.

    Scalars reach the host once per step (:mod:`.transfer`): instruments queue the reductions
    they read in ``prepare`` (:meth:`reduce`), and the fields in ``DEFERRED_FIELDS`` hold a
    :class:`~.transfer.Deferred` until :meth:`resolve` replaces it by its value after the read.
    """

    batch_size: int
    names: list[str]
    lr: float
    losses: Tensor | None = None
    grad_norms: dict[str, float] | Deferred | None = None
    sq_norms: Tensor | None = None
    dots: Tensor | None = None
    mean_grads: list[Tensor] | None = None
    sgs: list[Tensor] | None = None
    hist1d: dict | Deferred | None = None
    hist2d: dict | Deferred | None = None
    diagonal: list[Tensor] | None = None
    diagonal_method: str = "exact"
    max_eigenvalue: EigenResult | None = None
    distance: float | Deferred | None = None
    update_size: float | Deferred | None = None
    alpha: Any = None
    projection: Tensor | None = None
    trace: TraceEstimate | Deferred | None = None
    rank_grad_sq_norm: float | Deferred | None = (
        None  # mean over ranks of ||g_rank||^2 (distributed only)
    )
    rank_batch_size: int | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    transfer: HostTransfer = field(default_factory=HostTransfer, repr=False)
    _reductions: dict[str, tuple[Tensor, Deferred]] = field(default_factory=dict, repr=False)

    def blocks(self, *fields: str) -> Iterator[tuple[Tensor, ...]]:
        """Matching float64 blocks (at most ``2^22`` elements) of per-parameter statistics, e.g.
        ``blocks("mean_grads", "sgs")``: sums over all coordinates in float64 without a
        ``D``-sized float64 copy.  The blocks are copies: callers may modify them in place."""
        for tensors in zip(*(getattr(self, name) for name in fields)):
            flats = [t.detach().reshape(-1) for t in tensors]
            for start in range(0, flats[0].numel(), _BLOCK):
                yield tuple(f[start : start + _BLOCK].to(torch.float64, copy=True) for f in flats)

    def block_sum(self, fields: tuple[str, ...], term: Callable[..., Tensor]) -> Tensor:
        """``sum`` over all blocks of ``term(*blocks)`` (a float64 tensor of a fixed shape), left on
        the statistics' device."""
        total = None
        for blocks in self.blocks(*fields):
            value = term(*blocks)
            total = value if total is None else total.add_(value)
        return total

    def reduce(
        self,
        name: str,
        compute: Callable[[Statistics], Tensor] | None = None,
        inputs: tuple[str, ...] = (),
    ) -> Tensor | None:
        """Queue the reduction ``name`` for the step's host read, once per step, and return its
        device tensor (``None`` when one of its inputs was not computed).  ``name`` is one of
        :data:`REDUCTIONS` unless ``compute`` (with its ``inputs``) is given."""
        if name not in self._reductions:
            if compute is None:
                inputs, compute = REDUCTIONS[name]
            if any(getattr(self, field_name) is None for field_name in inputs):
                return None
            tensor = compute(self)
            self._reductions[name] = (tensor, self.transfer.defer(tensor))
        return self._reductions[name][0]

    def reduced(self, name: str) -> Any:
        """Host value of a reduction queued with :meth:`reduce` (after the step's read).  A shared
        reduction nobody queued is computed here, at the cost of a synchronization on a GPU (name
        it in the instrument's ``reads`` to avoid that)."""
        if name in self._reductions:
            return self._reductions[name][1].value
        if name not in REDUCTIONS:
            raise RuntimeError(
                f"the reduction {name!r} was not queued: call stats.reduce({name!r}, ...) in the "
                "instrument's ``prepare``"
            )
        value = REDUCTIONS[name][1](self)
        return value.tolist() if value.numel() > 1 else float(value)

    def resolve(self) -> None:
        """Replace every deferred field by its host value (after the step's read)."""
        for name in DEFERRED_FIELDS:
            value = getattr(self, name)
            if isinstance(value, Deferred):
                setattr(self, name, value.value)

    @property
    def loss_mean(self) -> float:
        """``L_B = (1/B) sum_n l_n``."""
        return self.reduced("loss_mean")

    @property
    def signal_to_noise(self) -> tuple[float, int]:
        """``(sum_{d: v_d > 0} g_d^2 / v_d, #{d: v_d > 0})`` with the biased per-coordinate
        variance ``v_d = sgs_d / B - g_d^2`` (float64), shared by EarlyStopping and MeanGSNR."""
        total, count = self.reduced("signal_to_noise")
        return total, int(count)

    @property
    def diagonal_sum(self) -> float:
        """``sum_d`` of the curvature diagonal, in float64."""
        return self.reduced("diagonal_sum")

    @property
    def sq_norms_sum(self) -> float:
        """``sum_n ||g_n||^2``."""
        return self.reduced("sq_norms_sum")

    @property
    def dots_sq_sum(self) -> float:
        """``sum_n (g_n . g)^2``."""
        return self.reduced("dots_sq_sum")

    @property
    def grad_sq_norm(self) -> float:
        """``||g||^2`` in float64."""
        return self.reduced("grad_sq_norm")


#: Fields that may hold a :class:`~.transfer.Deferred` until :meth:`Statistics.resolve`.
DEFERRED_FIELDS = (
    "grad_norms",
    "hist1d",
    "hist2d",
    "distance",
    "update_size",
    "trace",
    "rank_grad_sq_norm",
)


def _signal_to_noise(stats: Statistics) -> Tensor:
    def term(grad: Tensor, sgs: Tensor) -> Tensor:
        grad2 = grad.square_()
        noise = sgs.div_(stats.batch_size).sub_(grad2)
        keep = noise > 0
        ratios = grad2.div_(noise).masked_fill_(keep.logical_not(), 0.0)
        return torch.stack([ratios.sum(), keep.sum().double()])

    return stats.block_sum(("mean_grads", "sgs"), term)


#: Shared reductions: name -> (statistics they need, float64 device tensor from the statistics).
REDUCTIONS: dict[str, tuple[tuple[str, ...], Callable[[Statistics], Tensor]]] = {
    "loss_mean": (("losses",), lambda s: s.losses.double().mean()),
    "sq_norms_sum": (("sq_norms",), lambda s: s.sq_norms.double().sum()),
    "dots_sq_sum": (("dots",), lambda s: s.dots.double().square().sum()),
    "grad_sq_norm": (
        ("mean_grads",),
        lambda s: s.block_sum(("mean_grads",), lambda g: g.square_().sum()),
    ),
    "signal_to_noise": (("mean_grads", "sgs"), _signal_to_noise),
    "diagonal_sum": (("diagonal",), lambda s: s.block_sum(("diagonal",), torch.sum)),
}
