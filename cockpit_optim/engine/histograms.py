"""Histograms of individual gradient elements ``g_{n,d}`` (and of pairs ``(theta_d, g_{n,d})``).

Counts are exact int64 ``bincount`` results: float32 ``torch.histc`` stops counting at ``2^24`` per bin
on the CPU.  Above the element budget, whole rows of individual gradients are drawn uniformly without
replacement from each parameter, the number of rows proportional to the parameter's size (with
stochastic rounding), so every element is equally likely to be binned; no ``B x D`` tensor is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layers import LayerRule

# Exact binning materializes at most this many rows' elements at once.
_CHUNK_ELEMENTS = 2**22


def _row_selection(total_rows: int, fraction: float, generator: torch.Generator) -> Tensor:
    expected = total_rows * fraction
    count = int(expected)
    if torch.rand((), generator=generator).item() < expected - count:
        count += 1
    return torch.randperm(total_rows, generator=generator)[:count]


class ElementSample:
    """Individual gradient elements (and matching parameter values) drawn per parameter."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = {}
        self.params: dict[str, list[Tensor]] = {}
        self.population: dict[str, int] = {}

    @property
    def binned(self) -> int:
        return sum(sum(v.numel() for v in chunks) for chunks in self.values.values())


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
            per_sample, row_len = rule.row_shape(index)
            total_rows = batch * per_sample
            sample.population[name] = batch * param.numel()
            if fraction >= 1.0:
                chosen = torch.arange(total_rows)
            else:
                chosen = _row_selection(total_rows, fraction, generator)
            chosen = chosen.to(param.device)
            chunk = max(1, _CHUNK_ELEMENTS // max(1, row_len * rule.positions))
            values, params = [], []
            flat_param = param.detach().reshape(per_sample, row_len)
            for start in range(0, chosen.numel(), chunk):
                rows = chosen[start : start + chunk]
                samples, within = rows // per_sample, rows % per_sample
                values.append(rule.rows(index, samples, within).reshape(-1))
                if with_params:
                    params.append(flat_param[within].reshape(-1))
            sample.values[name] = values
            sample.params[name] = params
    return sample


# torch.histogram counts in float32 on the CPU, exact up to 2^24 per call: chunk below that.
_EXACT_FLOAT_COUNT = 2**24


def _bucket(values: Tensor, low: float, high: float, bins: int) -> Tensor:
    """Bin index per value (device-side): ``-1`` below, ``bins`` above the range or NaN; bins
    ``[e_i, e_{i+1})`` with the last one closed, ``e = linspace(low, high)`` in the values' dtype."""
    edges = torch.linspace(low, high, bins + 1, dtype=values.dtype, device=values.device)
    index = torch.bucketize(values, edges, right=True) - 1
    index = torch.where(values == edges[-1], bins - 1, index)
    return torch.where(torch.isnan(values), bins, index)


def _count(values: Tensor, low: float, high: float, bins: int) -> Tensor:
    """``[underflow, counts..., overflow, nan]`` (int64, on ``values.device``)."""
    nan = torch.isnan(values).sum()
    under = (values < low).sum()
    over = (values > high).sum()
    if values.device.type == "cpu":  # torch.histogram: one fused pass, edges as in _bucket
        counts = sum(
            torch.histogram(chunk, bins=bins, range=(low, high)).hist.long()
            for chunk in values.split(_EXACT_FLOAT_COUNT)
        )
    else:
        index = _bucket(values, low, high, bins)
        counts = torch.bincount(index[(index >= 0) & (index < bins)], minlength=bins)
    return torch.cat([under.reshape(1), counts, over.reshape(1), nan.reshape(1)])


def _edges(low: float, high: float, bins: int, dtype: torch.dtype) -> list[float]:
    return torch.linspace(low, high, bins + 1, dtype=dtype).double().tolist()


def histogram_1d(sample: ElementSample, low: float, high: float, bins: int) -> dict:
    """GradHist1d record (SPEC section 3): network-wide and per-parameter int64 counts."""
    names = list(sample.values)
    rows, dtype = [], torch.float32
    for name in names:
        chunks = sample.values[name]
        if chunks:
            dtype = chunks[0].dtype
        rows.append(sum(_count(values, low, high, bins).cpu() for values in chunks))
    table = [row.tolist() if isinstance(row, Tensor) else [0] * (bins + 3) for row in rows]
    layers = {}
    for name, row in zip(names, table):
        binned = sum(v.numel() for v in sample.values[name])
        layers[name] = {
            "counts": row[1 : bins + 1],
            "underflow": row[0],
            "overflow": row[bins + 1],
            "binned": binned - row[bins + 2],
            "population": sample.population[name],
        }
    total = [sum(layer["counts"][i] for layer in layers.values()) for i in range(bins)]
    return {
        "edges": _edges(low, high, bins, dtype),
        "counts": total,
        "underflow": sum(layer["underflow"] for layer in layers.values()),
        "overflow": sum(layer["overflow"] for layer in layers.values()),
        "binned": sum(layer["binned"] for layer in layers.values()),
        "population": sum(sample.population.values()),
        "layers": layers,
    }


def histogram_2d(
    sample: ElementSample,
    param_range: tuple[float, float],
    grad_range: tuple[float, float],
    bins: tuple[int, int],
) -> dict:
    """GradHist2d record: ``counts[i][j]`` pairs with ``theta`` in bin i and ``g`` in bin j."""
    param_bins, grad_bins = bins
    counts = torch.zeros(param_bins, grad_bins, dtype=torch.int64)
    binned, dtype = 0, torch.float32
    for name, chunks in sample.values.items():
        for values, params in zip(chunks, sample.params[name]):
            keep = ~torch.isnan(values)
            values, params = values[keep], params[keep]
            binned += values.numel()
            dtype = values.dtype
            if values.device.type == "cpu":
                for pairs in torch.stack([params, values], dim=1).split(_EXACT_FLOAT_COUNT):
                    hist = torch.histogramdd(
                        pairs, bins=[param_bins, grad_bins], range=[*param_range, *grad_range]
                    ).hist
                    counts += hist.long()
            else:
                gi = _bucket(values, *grad_range, grad_bins)
                pi = _bucket(params, *param_range, param_bins)
                inside = (gi >= 0) & (gi < grad_bins) & (pi >= 0) & (pi < param_bins)
                flat = torch.bincount(
                    pi[inside] * grad_bins + gi[inside], minlength=param_bins * grad_bins
                )
                counts += flat.reshape(param_bins, grad_bins).cpu()
    inside_total = int(counts.sum())
    return {
        "param_edges": _edges(*param_range, param_bins, dtype),
        "grad_edges": _edges(*grad_range, grad_bins, dtype),
        "counts": counts.tolist(),
        "outside": binned - inside_total,
        "binned": binned,
        "population": sum(sample.population.values()),
    }
