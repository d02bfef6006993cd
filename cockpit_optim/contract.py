"""The contract between the engine and the instruments: what an instrument asks for at a step
(:class:`Request`), what it receives (:class:`Statistics`, plain data plus deferred host values),
and the shared reductions over them.  It imports nothing from the engine: instruments import this
module (and :mod:`.transfer`) only, the engine fills it in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

import torch
from torch import Tensor

from .transfer import Deferred, HostTransfer
from .transfer import flat as _flat

# Block size of the float64 reductions over all coordinates.
_BLOCK = 2**22
#: Curvatures an instrument can ask for (see :mod:`cockpit_optim.instruments.curvature`).
CURVATURES = ("exact", "hessian", "ggn", "mc-ggn")


@dataclass(frozen=True)
class HistogramRequest:
    """Binning asked for by a histogram instrument; ``draws`` is the subsample size when ``B*D``
    exceeds ``max_elements`` (the instrument adapts it from step to step)."""

    bins: int | tuple[int, int]
    range: tuple[float, float] | None
    max_elements: int | None
    draws: int = 2**19


@dataclass(frozen=True)
class TraceRequest:
    """The trace's tolerance: relative standard error ``rtol``, at most ``max_products``
    Hessian-vector products (where the trace is estimated)."""

    rtol: float
    max_products: int


@dataclass(frozen=True)
class EigenRequest:
    """Lanczos for the largest Hessian eigenvalue: relative tolerance, iteration cap, and a start
    vector (a warm start from an earlier step; ``None``: random)."""

    rtol: float = 1e-3
    max_iter: int = 100
    start: Tensor | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class Projection:
    """A parameter-shaped direction ``v`` (one tensor per monitored parameter) for ``g_n . v``."""

    direction: tuple[Tensor, ...]


@dataclass(frozen=True)
class EigenResult:
    """Largest eigenvalue, its Ritz vector, the Hessian-vector products used, convergence."""

    value: float
    vector: Tensor | None
    products: int
    converged: bool


@dataclass
class TraceEstimate:
    """``value`` with its standard error, the Hessian-vector products spent, whether the
    standard error met the tolerance (exact values have ``stderr == 0``), and the curvature."""

    value: float
    stderr: float
    products: int
    converged: bool
    curvature: str = "estimate"


@dataclass(frozen=True)
class Request:
    """What the active instruments need at one step; ``|`` merges two requests.

    ``curvature`` names the curvature of the trace and the diagonal (one of :data:`CURVATURES`;
    instruments asking for different ones cannot run together), ``probes`` the Hutchinson
    probes of a Hessian-diagonal estimate."""

    losses: bool = False
    grad_norms: bool = False
    sq_norms: bool = False
    mean_dots: bool = False
    mean_grads: bool = False
    sum_sq_grads: bool = False
    hist1d: HistogramRequest | None = None
    hist2d: HistogramRequest | None = None
    curvature_diagonal: bool = False
    trace: TraceRequest | None = None
    max_eigenvalue: EigenRequest | None = None
    curvature: str | None = None
    probes: int = 0
    projection: Projection | None = None
    distance: bool = False
    update: bool = False

    def __post_init__(self) -> None:
        if self.curvature is not None and self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}")

    def __or__(self, other: Request) -> Request:
        return Request.union((self, other))

    @staticmethod
    def union(requests: Iterable[Request]) -> Request:
        """All of ``requests`` at once (the first given option of each kind, the most probes)."""
        requests = list(requests)
        curvatures = {r.curvature for r in requests if r.curvature}
        if len(curvatures) > 1:
            raise ValueError(
                f"curvature instruments disagree on the curvature: {sorted(curvatures)}"
            )
        merged = {}
        for name in _REQUEST_FIELDS:
            values = [value for r in requests if (value := getattr(r, name))]
            if not values:
                continue
            if name in _SINGLE and any(v != values[0] for v in values[1:]):
                raise ValueError(f"instruments ask for different {name} requests: {values}")
            merged[name] = max(values) if name == "probes" else values[0]
        return Request(**merged)

    @property
    def first_order(self) -> bool:
        return any(
            (
                self.sq_norms,
                self.mean_dots,
                self.mean_grads,
                self.sum_sq_grads,
                self.hist1d,
                self.hist2d,
            )
        )

    @property
    def second_order(self) -> bool:
        return self.curvature_diagonal or self.trace is not None or self.max_eigenvalue is not None

    @property
    def captures(self) -> bool:
        """Whether the forward/backward pass must be recorded (hooks armed)."""
        return self.first_order or self.second_order or self.projection is not None or self.losses


_REQUEST_FIELDS = tuple(f.name for f in dataclass_fields(Request))
#: Options one step can serve only once (a projection by identity, warm starts not compared).
_SINGLE = ("hist1d", "hist2d", "trace", "max_eigenvalue", "projection")


@dataclass
class Statistics:
    """Everything instruments read at one step.  Per-parameter lists follow ``names``.

    ``losses[n] = l_n``, ``sq_norms[n] = ||g_n||^2`` and ``mean_dots[n] = g_n . g`` (float64,
    shape ``[B]``); ``mean_grads`` = ``g``, ``sum_sq_grads`` = ``sum_n g_n^2`` per coordinate;
    ``curvature_diagonal`` = a curvature diagonal named by ``curvature_name``; ``trace`` = a
    curvature trace; ``projection[n] = g_n . v`` for the requested :class:`Projection`;
    ``update`` = ``theta_{t+1} - theta_t`` (after the update only); ``project(v)`` computes
    ``g_n . v`` for another direction while the step's pass is held.  ``unavailable`` maps a
    statistic that could not be computed at this step to the reason.

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
    mean_dots: Tensor | None = None
    mean_grads: list[Tensor] | None = None
    sum_sq_grads: list[Tensor] | None = None
    hist1d: dict | Deferred | None = None
    hist2d: dict | Deferred | None = None
    curvature_diagonal: list[Tensor] | None = None
    curvature_name: str = "exact"
    max_eigenvalue: EigenResult | None = None
    distance: float | Deferred | None = None
    projection: Tensor | None = None
    update: list[Tensor] | None = None
    project: Callable[[list[Tensor]], Tensor | None] | None = field(default=None, repr=False)
    needed_draws: int | Deferred | None = None
    trace: TraceEstimate | Deferred | None = None
    rank_grad_sq_norm: float | Deferred | None = None  # mean over ranks of ||g_rank||^2
    rank_batch_size: int | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    transfer: HostTransfer = field(default_factory=HostTransfer, repr=False)
    _reductions: dict[str, tuple[Tensor, Deferred]] = field(default_factory=dict, repr=False)

    def blocks(self, *fields: str) -> Iterator[tuple[Tensor, ...]]:
        """Matching float64 blocks (at most ``2^22`` elements) of per-parameter statistics, e.g.
        ``blocks("mean_grads", "sum_sq_grads")``: sums over all coordinates in float64 without a
        ``D``-sized float64 copy.  The blocks are copies: callers may modify them in place.
        Statistics of all parameters that fit in one block together form one block (one
        reduction per statistic, not one per parameter)."""
        groups = [getattr(self, name) for name in fields]
        if len(groups[0]) > 1 and sum(t.numel() for t in groups[0]) <= _BLOCK:
            if len({t.device for group in groups for t in group}) == 1:
                yield tuple(torch.cat([_flat(t) for t in group]).double() for group in groups)
                return
        for tensors in zip(*groups):
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
        variance ``v_d = sum_sq_grads_d / B - g_d^2`` (float64)."""
        total, count = self.reduced("signal_to_noise")
        return total, int(count)

    @property
    def curvature_diagonal_sum(self) -> float:
        """``sum_d`` of the curvature diagonal, in float64."""
        return self.reduced("curvature_diagonal_sum")

    @property
    def sq_norms_sum(self) -> float:
        """``sum_n ||g_n||^2``."""
        return self.reduced("sq_norms_sum")

    @property
    def mean_dots_sq_sum(self) -> float:
        """``sum_n (g_n . g)^2``."""
        return self.reduced("mean_dots_sq_sum")

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
    "trace",
    "rank_grad_sq_norm",
    "needed_draws",
)


def _signal_to_noise(stats: Statistics) -> Tensor:
    def term(grad: Tensor, sum_sq_grads: Tensor) -> Tensor:
        grad2 = grad.square_()
        noise = sum_sq_grads.div_(stats.batch_size).sub_(grad2)
        keep = noise > 0
        ratios = grad2.div_(noise).masked_fill_(keep.logical_not(), 0.0)
        return torch.stack([ratios.sum(), keep.sum().double()])

    return stats.block_sum(("mean_grads", "sum_sq_grads"), term)


def flat_norm(tensors: Iterable[Tensor]) -> Tensor:
    """Euclidean norm of a list of tensors, accumulated in float64 (0-d, on their device); one
    norm of their concatenation where that fits in a block."""
    tensors = list(tensors)
    if sum(t.numel() for t in tensors) <= _BLOCK and len({t.device for t in tensors}) == 1:
        flat = torch.cat([_flat(t) for t in tensors])
        return torch.linalg.vector_norm(flat, dtype=torch.float64)
    norms = [torch.linalg.vector_norm(t.detach(), dtype=torch.float64) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


#: Shared reductions: name -> (statistics they need, float64 device tensor from the statistics).
REDUCTIONS: dict[str, tuple[tuple[str, ...], Callable[[Statistics], Tensor]]] = {
    "loss_mean": (("losses",), lambda s: s.losses.double().mean()),
    "sq_norms_sum": (("sq_norms",), lambda s: s.sq_norms.double().sum()),
    "mean_dots_sq_sum": (("mean_dots",), lambda s: s.mean_dots.double().square().sum()),
    "grad_sq_norm": (
        ("mean_grads",),
        lambda s: s.block_sum(("mean_grads",), lambda g: g.square_().sum()),
    ),
    "signal_to_noise": (("mean_grads", "sum_sq_grads"), _signal_to_noise),
    "update_size": (("update",), lambda s: flat_norm(s.update)),
    "curvature_diagonal_sum": (
        ("curvature_diagonal",),
        lambda s: s.block_sum(("curvature_diagonal",), torch.sum),
    ),
}
