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
            chunk = max(1, _CHUNK_ELEMENTS // max(1, row_len * max(1, rule_positions(rule))))
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


def rule_positions(rule: LayerRule) -> int:
    """Weight-sharing positions a row computation sums over (1 for unshared layers)."""
    inputs = getattr(rule, "a", None)
    return inputs.shape[1] if inputs is not None else 1


def _bin_index(values: Tensor, edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bin indices of in-range values against the reported ``edges`` (bins ``[e_i, e_{i+1})``, the
    last one closed, as numpy), and the masks of under- and overflow."""
    under = values < edges[0]
    over = values > edges[-1]
    inside = values[~(under | over)].to(edges.dtype)
    index = torch.bucketize(inside, edges, right=True) - 1
    return index.clamp_(0, edges.numel() - 2), under, over


def _edges(low: float, high: float, bins: int, device) -> Tensor:
    return torch.linspace(low, high, bins + 1, dtype=torch.float64, device=device)


def histogram_1d(sample: ElementSample, low: float, high: float, bins: int) -> dict:
    """GradHist1d record (SPEC section 3): network-wide and per-parameter int64 counts."""
    layers, total = {}, None
    edges = None
    for name, chunks in sample.values.items():
        counts = torch.zeros(bins, dtype=torch.int64)
        under = over = binned = 0
        for values in chunks:
            values = values[~torch.isnan(values)]
            if edges is None or edges.device != values.device:
                edges = _edges(low, high, bins, values.device)
            index, below, above = _bin_index(values, edges)
            counts += torch.bincount(index, minlength=bins).cpu()
            under += int(below.sum())
            over += int(above.sum())
            binned += values.numel()
        layers[name] = {
            "counts": counts.tolist(),
            "underflow": under,
            "overflow": over,
            "binned": binned,
            "population": sample.population[name],
        }
        total = counts if total is None else total + counts
    return {
        "edges": _edges(low, high, bins, "cpu").tolist(),
        "counts": (total if total is not None else torch.zeros(bins, dtype=torch.int64)).tolist(),
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
    counts = torch.zeros(param_bins * grad_bins, dtype=torch.int64)
    outside = binned = 0
    for name, chunks in sample.values.items():
        for values, params in zip(chunks, sample.params[name]):
            keep = ~torch.isnan(values)
            values, params = values[keep], params[keep]
            binned += values.numel()
            grad_edges = _edges(*grad_range, grad_bins, values.device)
            param_edges = _edges(*param_range, param_bins, values.device)
            g_out = (values < grad_edges[0]) | (values > grad_edges[-1])
            p_out = (params < param_edges[0]) | (params > param_edges[-1])
            inside = ~(g_out | p_out)
            outside += int((~inside).sum())
            gi = _bin_index(values[inside], grad_edges)[0]
            pi = _bin_index(params[inside], param_edges)[0]
            counts += torch.bincount(pi * grad_bins + gi, minlength=param_bins * grad_bins).cpu()
    return {
        "param_edges": _edges(*param_range, param_bins, "cpu").tolist(),
        "grad_edges": _edges(*grad_range, grad_bins, "cpu").tolist(),
        "counts": counts.reshape(param_bins, grad_bins).tolist(),
        "outside": outside,
        "binned": binned,
        "population": sum(sample.population.values()),
    }
