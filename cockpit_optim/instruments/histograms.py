"""GradHist1d and GradHist2d (paper App. B.5): histograms of individual gradient elements."""

from __future__ import annotations

from dataclasses import replace

from ..contract import HistogramRequest, Request, Statistics
from .base import Instrument, require

# The budget caps the draws: each tracked step draws what the previous one needed for an expected L1
# error of 0.75% of the normalized histogram, 2^19 at first (experiments/benchmark_histogram.py).
DEFAULT_MAX_ELEMENTS = 2**20


class _Histogram(Instrument):
    """Both histograms bin one shared sample; each carries the subsample size from step to step
    (the next step draws what this one needed: ``stats.needed_draws``)."""

    panel = "gradients"
    spec: HistogramRequest

    def _adapt(self, stats: Statistics) -> None:
        if isinstance(stats.needed_draws, int):
            self.spec = replace(self.spec, draws=stats.needed_draws)

    def state_dict(self) -> dict:
        return {"draws": self.spec.draws}

    def load_state_dict(self, state: dict) -> None:
        if "draws" in state:
            self.spec = replace(self.spec, draws=int(state["draws"]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bins={self.spec.bins}, range={self.spec.range}, "
            f"max_elements={self.spec.max_elements})"
        )


def _check(bins, value_range, max_elements) -> None:
    if value_range is not None and not float(value_range[0]) < float(value_range[1]):
        raise ValueError(f"range must be (low, high) with low < high, got {value_range}")
    if max_elements is not None and int(max_elements) < 1:
        raise ValueError(f"max_elements must be positive or None, got {max_elements}")


class GradHist1d(_Histogram):
    """Histogram of the ``B x D`` elements ``g_{n,d}``, network-wide and per parameter.

    ``range=None`` bins ``[-6 r, 6 r]`` with ``r`` the root mean square of all elements (reported in
    ``edges``; symmetric, with an exact 0 edge for even ``bins``); element ``x`` is in bin ``i`` iff
    ``edges[i] <= x < edges[i+1]`` (the last bin closed); elements outside are counted as
    under/overflow, never dropped or clamped.  With
    ``B*D <= max_elements`` every element is binned; above, an unbiased subsample of at most
    ``max_elements`` (``binned < population``), as many as an expected L1 error of 0.75% needs;
    ``max_elements=None`` always bins all.
    """

    name = "GradHist1d"

    def __init__(
        self,
        *,
        bins: int = 100,
        range: tuple[float, float] | None = None,
        max_elements: int | None = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        _check(bins, range, max_elements)
        if int(bins) < 1:
            raise ValueError(f"bins must be positive, got {bins}")
        self.spec = HistogramRequest(int(bins), range, max_elements)

    def request(self) -> Request:
        return Request(hist1d=self.spec)

    def compute(self, stats: Statistics) -> dict:
        self._adapt(stats)
        require(stats, "hist1d")
        return stats.hist1d


class GradHist2d(_Histogram):
    """Histogram of the pairs ``(theta_d, g_{n,d})``: ``bins = (parameter bins, gradient bins)``.

    Parameter edges span ``[min theta, max theta]``; gradient edges as in :class:`GradHist1d`;
    both follow the bin rule of :class:`GradHist1d`.  The pairs are the same elements (all, or the
    same draws) as GradHist1d's.
    """

    name = "GradHist2d"

    def __init__(
        self,
        *,
        bins: tuple[int, int] = (40, 50),
        range: tuple[float, float] | None = None,
        max_elements: int | None = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        _check(bins, range, max_elements)
        if len(bins) != 2 or min(int(b) for b in bins) < 1:
            raise ValueError(f"bins must be two positive ints, got {bins}")
        self.spec = HistogramRequest((int(bins[0]), int(bins[1])), range, max_elements)

    def request(self) -> Request:
        return Request(hist2d=self.spec)

    def compute(self, stats: Statistics) -> dict:
        self._adapt(stats)
        require(stats, "hist2d")
        return stats.hist2d
