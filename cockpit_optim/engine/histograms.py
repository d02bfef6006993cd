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

Everything stays on the parameters' device: random numbers come from a generator on that device,
the range is a pair of 0-d tensors, and counts are read with the step's one host read (the
records are built from the host values by :func:`record_1d` and :func:`record_2d`).
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from .layers import LayerRule

# Exact binning materializes at most this many rows' elements at once.
_CHUNK_ELEMENTS = 2**22

Bounds = tuple[Tensor, Tensor]  # (low, high), 0-d float64 tensors on the counts' device


def _count_for(expected: float, rounding: random.Random) -> int:
    """``expected`` rounded stochastically, so the mean count is exact."""
    count = int(expected)
    if rounding.random() < expected - count:
        count += 1
    return count


def _stratified_rows(
    count: int, batch: int, rows: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``count`` pairs ``(sample, row)``: every pair ``count // (batch * rows)`` times, the
    remainder on uniformly random pairs.  Each pair is equally likely, the error is never above
    that of independent pairs, and no random numbers are spent on the repeated part."""
    device = generator.device
    pairs = batch * rows
    repeated = count - count % pairs
    index = torch.arange(repeated, device=device).remainder_(pairs)
    if count > repeated:
        extra = torch.randint(0, pairs, (count - repeated,), generator=generator, device=device)
        index = torch.cat([index, extra])
    return index.div(rows, rounding_mode="floor"), index.remainder_(rows)


class ElementSample:
    """Individual gradient elements (and matching parameter values) drawn per parameter."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = {}
        self.params: dict[str, list[Tensor]] = {}


def draw_elements(
    rules: list[tuple[LayerRule, list[str]]],
    max_elements: int | None,
    generator: torch.Generator,
    rounding: random.Random,
    with_params: bool,
    population: int | None = None,
) -> ElementSample:
    """All elements when ``B*D <= max_elements`` (or ``max_elements is None``), else a subsample
    (``population``: ``B*D`` of the global batch when several ranks draw their share).
    ``generator`` lives on the parameters' device; ``rounding`` rounds each parameter's share."""
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
            flat_param = param.detach().reshape(-1)
            per_sample, row_len = rule.row_shape(index)
            if fraction < 1.0:  # uniform coordinates within each row: no correlated blocks
                count = _count_for(fraction * batch * size, rounding)
                samples, rows = _stratified_rows(count, batch, per_sample, generator)
                if row_len > 1:
                    cols = torch.randint(
                        0, row_len, (count,), generator=generator, device=generator.device
                    )
                else:
                    cols = torch.zeros_like(rows)
                # a model spread over devices: device-to-device copies, no host involved
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


def _bucket(values: Tensor, low: Tensor, high: Tensor, bins: int) -> Tensor:
    """Bin index per value, shifted by one: 0 below the range, ``1..bins`` inside (bins
    ``[e_i, e_{i+1})`` with ``e_i = low + (high - low) i / bins``, the last one closed), ``bins + 1``
    above, ``bins + 2`` for NaN.  The index is ``floor((v - low) / (high - low) * bins)``, exact at
    ``v = low`` and, for symmetric ranges, at ``v = 0``."""
    low, high = low.to(values.device), high.to(values.device)  # no-ops on one device
    scaled = torch.sub(values, low).div_(high - low).mul_(bins).floor_()
    scaled.clamp_(-1, bins).add_(1)
    scaled.masked_fill_(values == high, bins)  # the last bin is closed
    scaled.nan_to_num_(nan=bins + 2)
    return scaled.long()


def _bincount(index: Tensor, size: int) -> Tensor:
    """``bincount(index, minlength=size)`` for ``0 <= index < size``; on a GPU by ``index_add_``,
    since CUDA's ``bincount`` reads the largest index back to the host."""
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size)
    counts = torch.zeros(size, dtype=torch.int64, device=index.device)
    return counts.index_add_(0, index, torch.ones_like(index))


def _count(values: Tensor, low: Tensor, high: Tensor, bins: int) -> Tensor:
    """``[underflow, counts..., overflow, nan]`` (int64, on ``values.device``)."""
    return _bincount(_bucket(values, low, high, bins), bins + 3)


def _edges(low: float, high: float, bins: int) -> list[float]:
    return [low + (high - low) * i / bins for i in range(bins)] + [high]


def counts_1d(sample: ElementSample, low: Tensor, high: Tensor, bins: int) -> Tensor:
    """Per-parameter table ``[underflow, counts..., overflow, nan, drawn]`` (int64, one row per
    parameter in ``sample`` order), on the elements' device."""
    device = _device(sample)
    rows = []
    for chunks in sample.values.values():
        row = torch.zeros(bins + 4, dtype=torch.int64, device=device)
        for values in chunks:
            row[: bins + 3] += _count(values, low, high, bins)
            row[bins + 3] += values.numel()
        rows.append(row)
    return torch.stack(rows)


def table_rows(flat: list[float], bins: int) -> list[list[int]]:
    """The rows of a :func:`counts_1d` table from its flat host values."""
    width = bins + 4
    return [[int(v) for v in flat[i : i + width]] for i in range(0, len(flat), width)]


def record_1d(
    rows: list[list[int]],
    names: list[str],
    populations: list[int],
    low: float,
    high: float,
    bins: int,
) -> dict:
    """GradHist1d record (SPEC section 3) from the host rows of a :func:`counts_1d` table."""
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
    sample: ElementSample, param_range: Bounds, grad_range: Bounds, bins: tuple[int, int]
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
            counts[:size] += _bincount(flat, size)
            counts[size] += values.numel()
    return counts


def record_2d(
    counts: list[float],
    population: int,
    param_range: tuple[float, float],
    grad_range: tuple[float, float],
    bins: tuple[int, int],
) -> dict:
    """GradHist2d record from the host values of a :func:`counts_2d` table: ``counts[i][j]``
    pairs with ``theta`` in bin i and ``g`` in bin j."""
    param_bins, grad_bins = bins
    width = grad_bins + 3
    values = [int(v) for v in counts]
    drawn = values[-1]
    table = [values[i * width : (i + 1) * width] for i in range(param_bins + 3)]
    nan = sum(row[grad_bins + 2] for row in table)
    inside = [row[1 : grad_bins + 1] for row in table[1 : param_bins + 1]]
    return {
        "param_edges": _edges(*param_range, param_bins),
        "grad_edges": _edges(*grad_range, grad_bins),
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
