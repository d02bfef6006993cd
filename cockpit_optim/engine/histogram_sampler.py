"""The histogram part of the engine: which elements ``g_{n,d}`` are binned at a step, in which
range, and how many draws the next step needs (the binning itself is :mod:`.binning`).

Up to a request's ``max_elements`` every element is binned.  Above it, ``draws`` elements (at
most ``max_elements``) are drawn, a number the histogram instruments carry from step to step: the
engine reports, with the step's read, what the step's histogram needed for the expected L1
sampling error ``sum_i sqrt(2 p_i (1 - p_i) / (pi n))`` (independent draws; stratifying them
never raises it) to reach :data:`TARGET_L1`.
"""

from __future__ import annotations

import hashlib
import math
import random

import torch
from torch import Tensor

from ..contract import HistogramRequest, Request, Statistics
from ..transfer import HostTransfer
from .binning import (
    Bounds,
    bin_edges,
    counts_1d,
    counts_2d,
    draw_elements,
    expected_l1,
    record_1d,
    record_2d,
    table_rows,
)
from .combiner import LocalCombiner
from .rules import LayerRule

# Default gradient range of the histograms: +- this many RMS values of all elements g_{n,d}.
ADAPTIVE_RANGE_RMS = 6.0
# The expected L1 error the draws aim for, and the fewest draws a step asks of the next.
TARGET_L1 = 0.0075
MIN_DRAWS = 2**15
# Gradient bins of the table that sizes the draws when only the 2-D histogram is requested.
DEFAULT_BINS = 100


def needed_draws(rows: list[list[int]], bins: int) -> int:
    """Draws for :data:`TARGET_L1` given a histogram's table rows (5% margin)."""
    drawn = sum(row[-1] for row in rows)
    needed = math.ceil(drawn * (expected_l1(rows, bins) / TARGET_L1) ** 2)
    return max(MIN_DRAWS, math.ceil(1.05 * needed))


class HistogramSampler:
    """Bins one shared sample of elements for the 1-D and 2-D histograms, on the device."""

    def __init__(self, params: list[Tensor], sample_seed: int, combiner: LocalCombiner) -> None:
        self.params = params
        self.sample_seed = sample_seed  # per rank: draws seeded per step from it
        self.combiner = combiner
        self._generators: dict[torch.device, torch.Generator] = {}

    def streams(self, step: int) -> tuple[torch.Generator, random.Random]:
        """The step's random streams for this rank: a generator on the parameters' device and a
        host stream (per-parameter rounding), both seeded from ``(sample_seed, step)`` so a
        resumed run draws exactly as an uninterrupted one."""
        digest = hashlib.blake2b(f"{self.sample_seed}/{step}".encode(), digest_size=8)
        seed = int.from_bytes(digest.digest(), "little") >> 1
        device = self.params[0].device
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device].manual_seed(seed), random.Random(seed)

    def sample(
        self,
        request: Request,
        stats: Statistics,
        rules: list[tuple[LayerRule, list[str]]],
        local_batch: int,
        step: int,
        transfer: HostTransfer,
    ) -> None:
        """Set ``stats.hist1d`` / ``stats.hist2d`` (deferred) and, when subsampled,
        ``stats.needed_draws`` (what the next step should draw)."""
        specs = [s for s in (request.hist1d, request.hist2d) if s is not None]
        budgets = [s.max_elements for s in specs]
        budget = None if None in budgets else max(budgets)
        populations = {
            name: rule.batch_size * p.numel() * stats.batch_size // local_batch
            for rule, names in rules
            for name, p in zip(names, rule.params)
        }
        population = sum(populations.values())
        draws = None
        if budget is not None and population > budget:  # else every element
            draws = min(budget, max(s.draws for s in specs))
        generator, rounding = self.streams(step)
        sample = draw_elements(rules, draws, rounding, request.hist2d is not None, population)
        device = generator.device
        sq_total = stats.reduce("sq_norms_sum")
        rms = torch.sqrt(sq_total / population) if population else torch.zeros((), device=device)
        adaptive = ADAPTIVE_RANGE_RMS * rms
        adaptive = torch.where((rms > 0) & torch.isfinite(rms), adaptive, 1.0)

        def grad_range(spec: HistogramRequest | None) -> Bounds:
            if spec is not None and spec.range is not None:
                return tuple(_scalar(float(v), device) for v in spec.range)
            return -adaptive, adaptive

        spec1 = request.hist1d or HistogramRequest(DEFAULT_BINS, None, budget)
        bins = int(spec1.bins)
        names = list(sample.shares)
        if request.hist1d is not None or draws is not None:  # else no 1-D table is needed
            grad_edges = bin_edges(*grad_range(spec1), bins)
            (table,) = self.combiner.sum([counts_1d(sample, grad_edges)])
        if request.hist1d is not None:
            stats.hist1d = transfer.defer(
                table,
                grad_edges,
                convert=lambda flat, edges: record_1d(
                    table_rows(flat, bins), names, [populations[n] for n in names], edges, bins
                ),
            )
        if draws is not None:
            stats.needed_draws = transfer.defer(
                table, convert=lambda flat: needed_draws(table_rows(flat, bins), bins)
            )
        if request.hist2d is not None:
            spec = request.hist2d
            bins2 = tuple(spec.bins)
            edges = [self._param_edges(bins2[0]), bin_edges(*grad_range(spec), bins2[1])]
            (counts,) = self.combiner.sum([counts_2d(sample, *edges)])
            stats.hist2d = transfer.defer(
                counts,
                torch.cat(edges),
                convert=lambda flat, all_edges: record_2d(flat, population, all_edges, bins2),
            )

    def _param_edges(self, bins: int) -> Tensor:
        """Edges over ``[min theta, max theta]`` of the monitored parameters (a unit range
        around a constant, ``[-1, 1]`` for non-finite values), on the device."""
        extremes = torch.stack(
            [torch.stack(torch.aminmax(p.detach())) for p in self.params if p.numel()]
        )
        low, high = extremes[:, 0].min().double(), extremes[:, 1].max().double()
        finite = torch.isfinite(low) & torch.isfinite(high)
        low, high = torch.where(finite, low, -1.0), torch.where(finite, high, 1.0)
        degenerate = high <= low
        low = torch.where(degenerate, low - 0.5, low)
        high = torch.where(degenerate, high + 0.5, high)
        return bin_edges(low, high, bins)


def _scalar(value: float, device: torch.device) -> Tensor:
    """A 0-d float64 tensor filled on ``device`` (no host-to-device copy, which would wait)."""
    return torch.full((), value, dtype=torch.float64, device=device)
