"""Curvature instruments: HessTrace, HessMaxEV, TICDiag and TICTrace (paper App. B.7, B.8).

The curvature each one used is named in the record (``<name>_curvature``): ``exact`` (the exact
Hessian diagonal), ``estimate`` (the Hessian trace estimated with a standard error), ``ggn`` /
``mc-ggn`` (the exact / Monte-Carlo generalized Gauss-Newton diagonal) or ``hutchinson`` (a
Hessian diagonal estimate).  See :mod:`cockpit_optim.engine.diagonals` for which one serves where.
"""

from __future__ import annotations

from torch import Tensor

from ..contract import CURVATURES, EigenRequest, Request, Statistics, TraceRequest
from ..errors import warn_reading
from .base import Instrument, Unavailable, require


class _DiagonalInstrument(Instrument):
    def __init__(self, *, curvature: str = "exact", probes: int = 16) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if int(probes) < 2:
            raise ValueError(f"probes must be at least 2 (for a standard error), got {probes}")
        self.curvature, self.probes = curvature, int(probes)

    def request(self) -> Request:
        return self.needs | Request(curvature=self.curvature, probes=self.probes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(curvature={self.curvature!r})"


class HessTrace(_DiagonalInstrument):
    """``Tr(H)`` of the mini-batch loss Hessian: exact where the Hessian diagonal is (sequences of
    layers BackPACK or the GGN passes handle), else estimated on a Lanczos subspace plus adaptive
    Hutchinson probes until the standard error is at most ``rtol * |Tr(H)|`` or ``max_products``
    Hessian-vector products are spent.  The record carries ``HessTrace_stderr``,
    ``HessTrace_hvps`` and ``HessTrace_converged``.  ``curvature="ggn"`` / ``"mc-ggn"`` read the
    trace of the GGN (exact / Monte-Carlo) instead."""

    name = "HessTrace"
    panel = "curvature"

    def __init__(
        self,
        *,
        curvature: str = "exact",
        rtol: float = 0.05,
        max_products: int = 32,
        probes: int = 16,
    ) -> None:
        super().__init__(curvature=curvature, probes=probes)
        if not rtol > 0 or int(max_products) < 2:
            raise ValueError(
                f"HessTrace needs rtol > 0 and max_products >= 2, got {rtol}, {max_products}"
            )
        self.rtol, self.max_products = float(rtol), int(max_products)

    def request(self) -> Request:
        return super().request() | Request(trace=TraceRequest(self.rtol, self.max_products))

    def compute(self, stats: Statistics) -> float:
        require(stats, "trace")
        trace = stats.trace
        if not trace.converged:
            warn_reading(
                f"HessTrace is an estimate whose standard error is above rtol={self.rtol} of it "
                f"after max_products={self.max_products} Hessian-vector products (see "
                "HessTrace_stderr; HessTrace(max_products=...) buys more)"
            )
        return trace.value

    def extras(self, stats: Statistics) -> dict:
        trace = stats.trace
        if trace is None:
            return {}
        return {
            "HessTrace_curvature": trace.curvature,
            "HessTrace_stderr": trace.stderr,
            "HessTrace_hvps": trace.products,
            "HessTrace_converged": trace.converged,
        }


class HessMaxEV(Instrument):
    """Largest algebraic eigenvalue of ``H`` by Lanczos (relative tolerance ``rtol``), warm-started
    from the previous tracked step's eigenvector; the number of Hessian-vector products is
    recorded under ``HessMaxEV_hvps``."""

    name = "HessMaxEV"
    panel = "curvature"

    def __init__(self, *, rtol: float = 1e-3, max_iter: int = 100) -> None:
        self.rtol, self.max_iter = float(rtol), int(max_iter)
        self.vector: Tensor | None = None  # the warm start of the next run

    def request(self) -> Request:
        return Request(max_eigenvalue=EigenRequest(self.rtol, self.max_iter, self.vector))

    def compute(self, stats: Statistics) -> float:
        require(stats, "max_eigenvalue")
        result = stats.max_eigenvalue
        self.vector = None if result.vector is None else result.vector.detach()
        return result.value

    def state_dict(self) -> dict:
        return {"vector": self.vector}

    def load_state_dict(self, state: dict) -> None:
        self.vector = state.get("vector")

    def extras(self, stats: Statistics) -> dict:
        result = stats.max_eigenvalue
        if result is None:
            return {}
        return {"HessMaxEV_hvps": result.products, "HessMaxEV_converged": result.converged}


class _TIC(_DiagonalInstrument):
    """A TIC needs a positive curvature: a diagonal with negative entries (an exact Hessian's, or
    a Hutchinson estimate under ``curvature="hessian"``) makes the reading ``nan``."""

    panel = "curvature"
    needs = Request(curvature_diagonal=True)

    def __init__(self, *, curvature: str = "exact", probes: int = 16, eps: float = 1e-7) -> None:
        super().__init__(curvature=curvature, probes=probes)
        self.eps = float(eps)

    def prepare(self, stats: Statistics) -> None:
        super().prepare(stats)
        stats.reduce(
            "curvature_diagonal_negatives",
            lambda s: s.block_sum(("curvature_diagonal",), lambda d: (d < 0).sum().double()),
            inputs=("curvature_diagonal",),
        )

    def _check(self, stats: Statistics) -> None:
        negatives = int(stats.reduced("curvature_diagonal_negatives"))
        if negatives:
            raise Unavailable(
                f"its curvature diagonal ({stats.curvature_name}) has {negatives} negative "
                "entries, for which the TIC has no meaning; curvature='exact' (the default) "
                "uses the non-negative GGN diagonal where the Hessian's is not known to be"
            )

    def extras(self, stats: Statistics) -> dict:
        if stats.curvature_diagonal is None:
            return {}
        return {f"{self.name}_curvature": stats.curvature_name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(curvature={self.curvature!r}, eps={self.eps})"


class TICDiag(_TIC):
    """``sum_d M_d / (C_dd + eps)`` (eq. 29), ``M_d = (1/B) sum_n g_{n,d}^2``, ``C`` the curvature
    named under ``TICDiag_curvature``."""

    name = "TICDiag"
    needs = Request(curvature_diagonal=True, sum_sq_grads=True)

    def prepare(self, stats: Statistics) -> None:
        super().prepare(stats)

        def tic(s: Statistics) -> Tensor:
            return s.block_sum(
                ("sum_sq_grads", "curvature_diagonal"),
                lambda sum_sq_grads, diagonal: (
                    sum_sq_grads.div_(s.batch_size).div_(diagonal.add_(self.eps)).sum()
                ),
            )

        stats.reduce(self.name, tic, inputs=("sum_sq_grads", "curvature_diagonal"))

    def compute(self, stats: Statistics) -> float:
        require(stats, "curvature_diagonal", "sum_sq_grads")
        self._check(stats)
        return stats.reduced(self.name)


class TICTrace(_TIC):
    """``sum_d M_d / (sum_d C_dd + eps)`` (eq. 28); ``sum_d M_d = (1/B) sum_n ||g_n||^2``, ``C``
    the curvature named under ``TICTrace_curvature``."""

    name = "TICTrace"
    needs = Request(curvature_diagonal=True, sq_norms=True)
    reads = ("sq_norms_sum", "curvature_diagonal_sum")

    def compute(self, stats: Statistics) -> float:
        require(stats, "curvature_diagonal", "sq_norms")
        self._check(stats)
        second = stats.sq_norms_sum / stats.batch_size
        return second / (stats.curvature_diagonal_sum + self.eps)
