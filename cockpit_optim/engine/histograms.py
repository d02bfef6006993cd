"""Histograms of individual gradient elements ``g_{n,d}`` (and of pairs ``(theta_d, g_{n,d})``).

Counts are exact int64 ``bincount`` results (float32 ``torch.histc`` stops counting at ``2^24`` per
bin on the CPU).  Below the element budget every element is binned, computed row by row in chunks.
Above it, elements ``(n, d)`` are drawn independently and uniformly (with replacement) from each
parameter, their number proportional to the parameter's size (stochastic rounding), and each one is
computed directly from the layer's input and output gradient: every element is equally likely to be
binned and no ``B x D`` tensor is formed.  (Drawing whole rows instead correlates the draws and
multiplies the error several times: measured in ``experiments/benchmark_histogram.py``.)
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
) -> ElementSample:
    """All elements when ``B*D <= max_elements`` (or ``max_elements is None``), else a subsample."""
    sample = ElementSample()
    population = sum(rule.batch_size * param.numel() for rule, _ in rules for param in rule.params)
    fraction = (
        1.0 if max_elements is None or population <= max_elements else (max_elements / population)
    )
    for rule, names in rules:
        batch = rule.batch_size
        for index, (name, param) in enumerate(zip(names, rule.params)):
            size = param.numel()
            sample.population[name] = batch * size
            flat_param = param.detach().reshape(-1)
            if fraction < 1.0:  # independent uniform draws: no correlated blocks
                count = _count_for(fraction * batch * size, generator)
                flat = torch.randint(0, batch * size, (count,), generator=generator)
                flat = flat.to(param.device)
                samples, coords = flat // size, flat % size
                sample.values[name] = [rule.elements(index, samples, coords)]
                sample.params[name] = [flat_param[coords]] if with_params else []
                continue
            per_sample, row_len = rule.row_shape(index)
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


def histogram_1d(sample: ElementSample, low: float, high: float, bins: int) -> dict:
    """GradHist1d record (SPEC section 3): network-wide and per-parameter int64 counts."""
    names = list(sample.values)
    table = torch.stack(
        [
            torch.stack([_count(v, low, high, bins) for v in sample.values[name]]).sum(0)
            if sample.values[name]
            else torch.zeros(bins + 3, dtype=torch.int64, device=_device(sample))
            for name in names
        ]
    )
    sizes = [sum(v.numel() for v in sample.values[name]) for name in names]
    rows = table.cpu().tolist()
    total = table.sum(0).cpu().tolist()
    layers = {
        name: {
            "counts": row[1 : bins + 1],
            "underflow": row[0],
            "overflow": row[bins + 1],
            "binned": size - row[bins + 2],
            "population": sample.population[name],
        }
        for name, row, size in zip(names, rows, sizes)
    }
    return {
        "edges": _edges(low, high, bins),
        "counts": total[1 : bins + 1],
        "underflow": total[0],
        "overflow": total[bins + 1],
        "binned": sum(sizes) - total[bins + 2],
        "population": sum(sample.population.values()),
        "layers": layers,
    }


def _device(sample: ElementSample) -> torch.device:
    for chunks in sample.values.values():
        if chunks:
            return chunks[0].device
    return torch.device("cpu")


def histogram_2d(
    sample: ElementSample,
    param_range: tuple[float, float],
    grad_range: tuple[float, float],
    bins: tuple[int, int],
) -> dict:
    """GradHist2d record: ``counts[i][j]`` pairs with ``theta`` in bin i and ``g`` in bin j."""
    param_bins, grad_bins = bins
    counts = torch.zeros((param_bins + 3) * (grad_bins + 3), dtype=torch.int64)
    binned = 0
    for name, chunks in sample.values.items():
        for values, params in zip(chunks, sample.params[name]):
            g_index = _bucket(values, *grad_range, grad_bins)
            p_index = _bucket(params, *param_range, param_bins)
            flat = p_index.mul_(grad_bins + 3).add_(g_index)
            counts += torch.bincount(flat, minlength=counts.numel()).cpu()
            binned += values.numel()
    table = counts.reshape(param_bins + 3, grad_bins + 3)
    nan = int(table[:, grad_bins + 2].sum())
    inside = table[1 : param_bins + 1, 1 : grad_bins + 1]
    return {
        "param_edges": _edges(*param_range, param_bins),
        "grad_edges": _edges(*grad_range, grad_bins),
        "counts": inside.tolist(),
        "outside": binned - nan - int(inside.sum()),
        "binned": binned - nan,
        "population": sum(sample.population.values()),
    }


def merge_1d(first: dict, second: dict) -> dict:
    """Sum of two GradHist1d records over the same edges (two independent rounds of draws)."""
    merged = dict(first)
    merged["counts"] = [a + b for a, b in zip(first["counts"], second["counts"])]
    for key in ("underflow", "overflow", "binned"):
        merged[key] = first[key] + second[key]
    merged["layers"] = {
        name: {
            "counts": [a + b for a, b in zip(layer["counts"], second["layers"][name]["counts"])],
            **{
                key: layer[key] + second["layers"][name][key]
                for key in ("underflow", "overflow", "binned")
            },
            "population": layer["population"],
        }
        for name, layer in first["layers"].items()
    }
    return merged


def expected_l1(record: dict) -> float:
    """Expected L1 distance between a histogram of ``n`` independent draws and the exact one,
    ``sum_i sqrt(2 p_i (1 - p_i) / (pi n))``, with ``p`` estimated from the record itself."""
    counts = [record["underflow"], *record["counts"], record["overflow"]]
    total = sum(counts)
    if total == 0:
        return 0.0
    return sum(math.sqrt(2 * (c / total) * (1 - c / total) / (math.pi * total)) for c in counts)
