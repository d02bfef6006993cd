"""Curvature instruments: HessTrace, HessMaxEV, TICDiag and TICTrace (paper App. B.7, B.8)."""

from __future__ import annotations

from torch import Tensor

from ..engine.request import Request, Statistics
from .base import Instrument, require

CURVATURES = ("exact", "ggn", "mc-ggn")


class _DiagonalInstrument(Instrument):
    """Reads the curvature diagonal: exact for ``nn.Sequential`` models BackPACK supports, else a
    Hutchinson estimate with ``probes`` Hessian-vector products (``curvature: "hutchinson"``)."""

    def __init__(self, *, curvature: str = "exact", probes: int = 16) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if int(probes) < 2:
            raise ValueError(f"probes must be at least 2 (for a standard error), got {probes}")
        self.curvature, self.probes = curvature, int(probes)

    def extras(self, stats: Statistics) -> dict:
        out = {"curvature": stats.diagonal_method}
        if stats.trace_stderr is not None:
            out["HessTrace_stderr"] = stats.trace_stderr
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(curvature={self.curvature!r})"


class HessTrace(_DiagonalInstrument):
    """``Tr(H)`` of the mini-batch loss Hessian (``curvature="exact"``), or of the GGN / its
    Monte-Carlo estimate (named under the record's ``curvature`` key)."""

    name = "HessTrace"
    needs = Request(diagonal=True)
    reads = ("diagonal_sum",)

    def compute(self, stats: Statistics) -> float:
        require(stats, "diagonal")
        return stats.diagonal_sum


class HessMaxEV(Instrument):
    """Largest algebraic eigenvalue of ``H`` by Lanczos (relative tolerance ``rtol``); the number of
    Hessian-vector products is recorded under ``HessMaxEV_hvps``."""

    name = "HessMaxEV"
    needs = Request(max_eigenvalue=True)

    def __init__(self, *, rtol: float = 1e-3, max_iter: int = 100) -> None:
        self.rtol, self.max_iter = float(rtol), int(max_iter)

    def compute(self, stats: Statistics) -> float:
        require(stats, "max_eigenvalue")
        return stats.max_eigenvalue.value

    def extras(self, stats: Statistics) -> dict:
        result = stats.max_eigenvalue
        if result is None:
            return {}
        return {"HessMaxEV_hvps": result.products, "HessMaxEV_converged": result.converged}


class _TIC(_DiagonalInstrument):
    def __init__(self, *, curvature: str = "exact", probes: int = 16, eps: float = 1e-7) -> None:
        super().__init__(curvature=curvature, probes=probes)
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(curvature={self.curvature!r}, eps={self.eps})"


class TICDiag(_TIC):
    """``sum_d M_d / (H_dd + eps)`` (eq. 29), ``M_d = (1/B) sum_n g_{n,d}^2``."""

    name = "TICDiag"
    needs = Request(diagonal=True, sgs=True)

    def prepare(self, stats: Statistics) -> None:
        def tic(s: Statistics) -> Tensor:
            return s.block_sum(
                ("sgs", "diagonal"),
                lambda sgs, diagonal: sgs.div_(s.batch_size).div_(diagonal.add_(self.eps)).sum(),
            )

        stats.reduce(self.name, tic, inputs=("sgs", "diagonal"))

    def compute(self, stats: Statistics) -> float:
        require(stats, "diagonal", "sgs")
        return stats.reduced(self.name)


class TICTrace(_TIC):
    """``sum_d M_d / (Tr(H) + eps)`` (eq. 28); ``sum_d M_d = (1/B) sum_n ||g_n||^2``."""

    name = "TICTrace"
    needs = Request(diagonal=True, sq_norms=True)
    reads = ("sq_norms_sum", "diagonal_sum")

    def compute(self, stats: Statistics) -> float:
        require(stats, "diagonal", "sq_norms")
        second = stats.sq_norms_sum / stats.batch_size
        return second / (stats.diagonal_sum + self.eps)
