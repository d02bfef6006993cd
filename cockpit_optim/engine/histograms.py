"""Histograms of individual gradient elements ``g_{n,d}`` (and of pairs ``(theta_d, g_{n,d})``).

Counts are exact int64 ``bincount`` results (float32 ``torch.histc`` stops counting at ``2^24`` per
bin on the CPU).  Below the element budget every element is binned, computed row by row in chunks.
Above it, elements ``(n, d)`` are drawn from each parameter, their number proportional to the
parameter's size (stochastic rounding), stratified over the rows of the individual gradients
(every pair of sample ``n`` and output row gets the same number of draws) with independent uniform
coordinates within the row; each one is computed directly from the layer's input and output
gradient: every element is equally likely to be binned and no ``B x D`` tensor is formed.
(Drawing whole rows instead correlates the draws and multiplies the error several times; the
stratification saves random numbers, and its error equals that of independent draws, measured.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .layers import LayerRule

# Exact binning materializes at most this many rows' elements at once.
_CHUNK_ELEMENTS = 2**22


def _count_for(expected: float, generator: torch.Generator) -> int:
    """``expected`` rounded stochastically, so the mean count is exact."""
    count = int(expected)
    if torch.rand((), generator=generator).item() < expected - count:
        count += 1
    return count


def _stratified_rows(
    count: int, batch: int, rows: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``count`` pairs ``(sample, row)``: every pair ``count // (batch * rows)`` times, the
    remainder on uniformly random pairs.  Each pair is equally likely, the error is never above
    that of independent pairs, and no random numbers are spent on the repeated part."""
    repeats, rest = divmod(count, batch * rows)
    samples = torch.arange(batch).repeat_interleave(rows).repeat(repeats)
    within = torch.arange(rows).repeat(batch * repeats)
    if rest:
        extra = torch.randint(0, batch * rows, (rest,), generator=generator)
        samples = torch.cat([samples, extra // rows])
        within = torch.cat([within, extra % rows])
    return samples, within


class ElementSample:
    """Individual gradient elements (and matching parameter values) drawn per parameter."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = {}
        self.params: dict[str, list[Tensor]] = {}
        self.population: dict[str, int] = {}

    def extend(self, other: ElementSample) -> None:
        """Add the independent draws of ``other`` (same parameters)."""
        for name, chunks in other.values.items():
            self.values[name].extend(chunks)
            self.params[name].extend(other.params[name])


def draw_elements(
    rules: list[tuple[LayerRule, list[str]]],
    max_elements: int | None,
    generator: torch.Generator,
    with_params: bool,
    population: int | None = None,
) -> ElementSample:
    """All elements when ``B*D <= max_elements`` (or ``max_elements is None``), else a subsample
    (``population``: ``B*D`` of the global batch when several ranks draw their share)."""
    sample = ElementSample()
    if population is None:
        population = sum(rule.batch_size * p.numel() for rule, _ in rules for p in rule.params)
    fraction = (
        1.0 if max_elements is None or population <= max_elements else (max_elements / population)
    )
    for rule, names in rules:
        batch = rule.batch_size
        for index, (name, param) in enumerate(zip(names, rule.params)):
            size = param.numel()
            sample.population[name] = batch * size
            flat_param = param.detach().reshape(-1)
            per_sample, row_len = rule.row_shape(index)
            if fraction < 1.0:  # uniform coordinates within each row: no correlated blocks
                count = _count_for(fraction * batch * size, generator)
                samples, rows = _stratified_rows(count, batch, per_sample, generator)
                if row_len > 1:
                    cols = torch.randint(0, row_len, (count,), generator=generator)
                else:
                    cols = torch.zeros(count, dtype=torch.int64)
                samples, rows, cols = (t.to(param.device) for t in (samples, rows, cols))
                sample.values[name] = [rule.elements(index, samples, rows, cols)]
                sample.params[name] = (
                    [flat_param.take(rows.mul_(row_len).add_(cols))] if with_params else []
                )
                continue
            rows = torch.arange(batch * per_sample, device=param.device)
            chunk = max(1, _CHUNK_ELEMENTS // max(1, row_len * rule.positions))
            values, params = [], []
            by_row = flat_param.reshape(per_sample, row_len)
            for block in rows.split(chunk):
                samples, within = block // per_sample, block % per_sample
                values.append(rule.rows(index, samples, within).reshape(-1))
                if with_params:
                    params.append(by_row[within].reshape(-1))
            sample.values[name] = values
            sample.params[name] = params
    return sample


def _bucket(values: Tensor, low: float, high: float, bins: int) -> Tensor:
    """Bin index per value, shifted by one: 0 below the range, ``1..bins`` inside (bins
    ``[e_i, e_{i+1})`` with ``e_i = low + (high - low) i / bins``, the last one closed), ``bins + 1``
    above, ``bins + 2`` for NaN.  The index is ``floor((v - low) / (high - low) * bins)``, exact at
    ``v = low`` and, for symmetric ranges, at ``v = 0``."""
    scaled = torch.sub(values, low).div_(high - low).mul_(bins).floor_()
    scaled.clamp_(-1, bins).add_(1)
    scaled[values == high] = bins  # the last bin is closed
    scaled.nan_to_num_(nan=bins + 2)
    return scaled.long()


def _count(values: Tensor, low: float, high: float, bins: int) -> Tensor:
    """``[underflow, counts..., overflow, nan]`` (int64, on ``values.device``)."""
    return torch.bincount(_bucket(values, low, high, bins), minlength=bins + 3)


def _edges(low: float, high: float, bins: int) -> list[float]:
    return [low + (high - low) * i / bins for i in range(bins)] + [high]


def counts_1d(sample: ElementSample, low: float, high: float, bins: int) -> Tensor:
    """Per-parameter table ``[underflow, counts..., overflow, nan, drawn]`` (int64, one row per
    parameter in ``sample`` order): sums over rounds of draws and over ranks."""
    device = _device(sample)
    rows = []
    for chunks in sample.values.values():
        row = torch.zeros(bins + 4, dtype=torch.int64, device=device)
        for values in chunks:
            row[: bins + 3] += _count(values, low, high, bins)
            row[bins + 3] += values.numel()
        rows.append(row)
    return torch.stack(rows)


def record_1d(
    table: Tensor, names: list[str], populations: list[int], low: float, high: float, bins: int
) -> dict:
    """GradHist1d record (SPEC section 3) from a :func:`counts_1d` table."""
    rows = table.cpu().tolist()
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
    total = table.sum(0).cpu().tolist()
    return {
        "edges": _edges(low, high, bins),
        "counts": total[1 : bins + 1],
        "underflow": total[0],
        "overflow": total[bins + 1],
        "binned": total[bins + 3] - total[bins + 2],
        "population": sum(populations),
        "layers": layers,
    }


def _device(sample: ElementSample) -> torch.device:
    for chunks in sample.values.values():
        if chunks:
            return chunks[0].device
    return torch.device("cpu")


def counts_2d(
    sample: ElementSample,
    param_range: tuple[float, float],
    grad_range: tuple[float, float],
    bins: tuple[int, int],
) -> Tensor:
    """Flat table of pair counts with under/overflow/nan rows and columns, plus the number drawn
    as the last entry (int64): sums over ranks."""
    param_bins, grad_bins = bins
    size = (param_bins + 3) * (grad_bins + 3)
    counts = torch.zeros(size + 1, dtype=torch.int64, device=_device(sample))
    for name, chunks in sample.values.items():
        for values, params in zip(chunks, sample.params[name]):
            g_index = _bucket(values, *grad_range, grad_bins)
            p_index = _bucket(params, *param_range, param_bins)
            flat = p_index.mul_(grad_bins + 3).add_(g_index)
            counts[:size] += torch.bincount(flat, minlength=size)
            counts[size] += values.numel()
    return counts


def record_2d(
    counts: Tensor,
    population: int,
    param_range: tuple[float, float],
    grad_range: tuple[float, float],
    bins: tuple[int, int],
) -> dict:
    """GradHist2d record: ``counts[i][j]`` pairs with ``theta`` in bin i and ``g`` in bin j."""
    param_bins, grad_bins = bins
    counts = counts.cpu()
    drawn = int(counts[-1])
    table = counts[:-1].reshape(param_bins + 3, grad_bins + 3)
    nan = int(table[:, grad_bins + 2].sum())
    inside = table[1 : param_bins + 1, 1 : grad_bins + 1]
    return {
        "param_edges": _edges(*param_range, param_bins),
        "grad_edges": _edges(*grad_range, grad_bins),
        "counts": inside.tolist(),
        "outside": drawn - nan - int(inside.sum()),
        "binned": drawn - nan,
        "population": population,
    }


def expected_l1(table: Tensor, bins: int) -> float:
    """Expected L1 distance between a histogram of ``n`` independent draws and the exact one,
    ``sum_i sqrt(2 p_i (1 - p_i) / (pi n))``, with ``p`` estimated from the counts themselves."""
    counts = table.sum(0)[: bins + 2].double()
    total = float(counts.sum())
    if total == 0:
        return 0.0
    p = counts / total
    return float(torch.sqrt(2 * p * (1 - p) / (math.pi * total)).sum())
