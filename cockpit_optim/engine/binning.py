"""Histograms of individual gradient elements ``g_{n,d}`` (and of pairs ``(theta_d, g_{n,d})``).

Counts are exact int64 counts (float32 ``torch.histc`` stops counting at ``2^24`` per bin on the
CPU).  Below the element budget every element is binned.  Above it, elements ``(n, d)`` are drawn
from each parameter, their number proportional to the parameter's size (stochastic rounding),
stratified over the rows of the individual gradients (every pair of sample ``n`` and output row
gets the same number of draws) with independent uniform coordinates within the row; each one is
computed directly from the layer's input and output gradient: every element is equally likely to
be binned and no ``B x D`` tensor is formed.  (Drawing whole rows instead correlates the draws and
multiplies the error several times; the stratification saves random numbers, and its error equals
that of independent draws, measured.)

The draws come from a counter-based hash keyed per step and parameter
(:mod:`.histogram_draws`), so one pass per parameter draws, computes and bins them: a compiled
loop on the CPU when numba is installed (:mod:`.fused_histogram`), torch operations otherwise,
with identical counts.  An element ``x`` is in bin ``i`` iff ``edges[i] <= x < edges[i+1]`` (the
last bin closed) for the very edges of the record, and symmetric ranges have an exact 0 edge.

Everything stays on the parameters' device: the edges are a float64 tensor there, and counts and
edges are read with the step's one host read (the records are built from the host values by
:func:`record_1d` and :func:`record_2d`).
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from . import fused_histogram, histogram_draws
from .histogram_draws import Share
from .rules import LayerRule

Bounds = tuple[Tensor, Tensor]  # (low, high), 0-d float64 tensors on the counts' device


def _count_for(expected: float, rounding: random.Random) -> int:
    """``expected`` rounded stochastically, so the mean count is exact."""
    count = int(expected)
    if rounding.random() < expected - count:
        count += 1
    return count


class ElementSample:
    """The elements binned, per parameter (by name): every one, or the draws of a step."""

    def __init__(self, theta: dict[str, Tensor], fused: bool) -> None:
        self.shares: dict[str, Share] = {}
        self.theta = theta  # flat parameters, for the 2-D histogram
        self.fused = fused  # the compiled loop where it applies, else the torch path

    def bin(self, share: Share, grad_edges: Tensor, param_edges: Tensor | None) -> Tensor:
        """Slot counts of one share (see :func:`.histogram_draws.bin_share`)."""
        theta = self.theta.get(share.name) if param_edges is not None else None
        counts = None
        if self.fused and fused_histogram.supports(share):
            try:
                counts = fused_histogram.bin_share(share, theta, grad_edges, param_edges)
            except Exception as error:  # numba missing a piece or failing to compile
                fused_histogram.disable(error)
        if counts is None:
            counts = histogram_draws.bin_share(share, theta, grad_edges, param_edges)
        return histogram_draws.on(counts, grad_edges.device)


def draw_elements(
    rules: list[tuple[LayerRule, list[str]]],
    max_elements: int | None,
    rounding: random.Random,
    with_params: bool,
    population: int | None = None,
    fused: bool | None = None,
) -> ElementSample:
    """All elements when ``B*D <= max_elements`` (or ``max_elements is None``), else a subsample
    (``population``: ``B*D`` of the global batch when several ranks draw their share).
    ``rounding`` (seeded per step) rounds each parameter's share and draws its hash keys;
    ``fused=None`` uses the compiled loop whenever numba is installed."""
    if population is None:
        population = sum(rule.batch_size * p.numel() for rule, _ in rules for p in rule.params)
    fraction = (
        1.0 if max_elements is None or population <= max_elements else (max_elements / population)
    )
    theta = {
        name: param.detach().reshape(-1)
        for rule, names in rules
        for name, param in zip(names, rule.params)
        if with_params
    }
    sample = ElementSample(theta, fused_histogram.available() if fused is None else fused)
    for rule, names in rules:
        batch = rule.batch_size
        for index, (name, param) in enumerate(zip(names, rule.params)):
            rows, cols = rule.row_shape(index)
            share = Share(name, rule, index, batch, rows, cols, batch * param.numel(), True)
            if fraction < 1.0:
                share.count = _count_for(fraction * batch * param.numel(), rounding)
                share.exact = False
                share.repeated = share.count - share.count % (batch * rows)
                share.keys = tuple(rounding.getrandbits(32) for _ in range(3))
            sample.shares[name] = share
    return sample


def bin_edges(low: Tensor, high: Tensor, bins: int) -> Tensor:
    """``bins + 1`` float64 edges ``(low (bins - i) + high i) / bins`` from ``low`` to ``high``:
    for ``low = -high`` exactly symmetric, with an exact 0 in the middle for even ``bins``."""
    i = torch.arange(bins + 1, dtype=torch.float64, device=low.device)
    grid = (low.double() * (bins - i)).add_(high.double() * i).div_(bins)
    grid[0], grid[-1] = low, high
    return grid


def counts_1d(sample: ElementSample, grad_edges: Tensor) -> Tensor:
    """Per-parameter table ``[underflow, counts..., overflow, nan, drawn]`` (int64, one row per
    parameter in ``sample`` order), on the edges' device."""
    device = grad_edges.device
    drawn = [share.count for share in sample.shares.values()]
    if not drawn:
        return torch.zeros(0, grad_edges.numel() + 3, dtype=torch.int64, device=device)
    slots = torch.stack([sample.bin(share, grad_edges, None) for share in sample.shares.values()])
    drawn = torch.tensor(drawn, dtype=torch.int64).to(device, non_blocking=True)
    return torch.cat([slots, drawn.unsqueeze(1)], dim=1)


def table_rows(flat: list[float], bins: int) -> list[list[int]]:
    """The rows of a :func:`counts_1d` table from its flat host values."""
    width = bins + 4
    return [[int(v) for v in flat[i : i + width]] for i in range(0, len(flat), width)]


def record_1d(
    rows: list[list[int]],
    names: list[str],
    populations: list[int],
    grad_edges: list[float],
    bins: int,
) -> dict:
    """The 1-D histogram record from the host rows of a :func:`counts_1d` table and
    the host values of its edges."""
    layers = {
        name: {
            "counts": row[1 : bins + 1],
            "underflow": row[0],
            "overflow": row[bins + 1],
            "binned": row[bins + 3] - row[bins + 2],
            "population": population,
        }
        for name, row, population in zip(names, rows, populations)
    }
    total = [sum(column) for column in zip(*rows)]
    return {
        "edges": list(grad_edges),
        "counts": total[1 : bins + 1],
        "underflow": total[0],
        "overflow": total[bins + 1],
        "binned": total[bins + 3] - total[bins + 2],
        "population": sum(populations),
        "layers": layers,
    }


def counts_2d(sample: ElementSample, param_edges: Tensor, grad_edges: Tensor) -> Tensor:
    """Flat table of pair counts with under/overflow/nan rows and columns, plus the number drawn
    as the last entry (int64): sums over ranks."""
    size = (param_edges.numel() + 2) * (grad_edges.numel() + 2)
    counts = torch.zeros(size + 1, dtype=torch.int64, device=grad_edges.device)
    for share in sample.shares.values():
        counts[:size] += sample.bin(share, grad_edges, param_edges)
    counts[size] = sum(share.count for share in sample.shares.values())
    return counts


def record_2d(
    counts: list[float], population: int, all_edges: list[float], bins: tuple[int, int]
) -> dict:
    """The 2-D histogram record from the host values of a :func:`counts_2d` table and of its edges
    (parameter edges, then gradient edges): ``counts[i][j]`` pairs with ``theta`` in bin i and
    ``g`` in bin j."""
    param_bins, grad_bins = bins
    width = grad_bins + 3
    values = [int(v) for v in counts]
    drawn = values[-1]
    table = [values[i * width : (i + 1) * width] for i in range(param_bins + 3)]
    nan = sum(row[grad_bins + 2] for row in table)
    inside = [row[1 : grad_bins + 1] for row in table[1 : param_bins + 1]]
    return {
        "param_edges": list(all_edges[: param_bins + 1]),
        "grad_edges": list(all_edges[param_bins + 1 :]),
        "counts": inside,
        "outside": drawn - nan - sum(map(sum, inside)),
        "binned": drawn - nan,
        "population": population,
    }


def expected_l1(rows: list[list[int]], bins: int) -> float:
    """Expected L1 distance between a histogram of ``n`` independent draws and the exact one,
    ``sum_i sqrt(2 p_i (1 - p_i) / (pi n))``, with ``p`` estimated from the counts themselves
    (host rows of a :func:`counts_1d` table)."""
    counts = [sum(column) for column in zip(*rows)][: bins + 2]
    total = sum(counts)
    if total == 0:
        return 0.0
    return sum(math.sqrt(2 * (c / total) * (1 - c / total) / (math.pi * total)) for c in counts)
