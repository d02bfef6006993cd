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


def _bin_index(values: Tensor, low: float, high: float, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bin indices of in-range values (last bin closed), and masks of under- and overflow."""
    under = values < low
    over = values > high
    inside = ~(under | over)
    scaled = (values[inside].double() - low) * (bins / (high - low))
    index = scaled.floor().long().clamp_(0, bins - 1)  # value == high lands in the last bin
    return index, under, over


def histogram_1d(sample: ElementSample, low: float, high: float, bins: int) -> dict:
    """GradHist1d record (SPEC section 3): network-wide and per-parameter int64 counts."""
    layers, total = {}, None
    for name, chunks in sample.values.items():
        counts = torch.zeros(bins, dtype=torch.int64)
        under = over = binned = 0
        for values in chunks:
            values = values[~torch.isnan(values)]
            index, below, above = _bin_index(values, low, high, bins)
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
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64).tolist()
    return {
        "edges": edges,
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
            g_under = values < grad_range[0]
            g_over = values > grad_range[1]
            p_under = params < param_range[0]
            p_over = params > param_range[1]
            inside = ~(g_under | g_over | p_under | p_over)
            outside += int((~inside).sum())
            gi = (
                (
                    (values[inside].double() - grad_range[0])
                    * (grad_bins / (grad_range[1] - grad_range[0]))
                )
                .floor()
                .long()
            )
            pi = (
                (
                    (params[inside].double() - param_range[0])
                    * (param_bins / (param_range[1] - param_range[0]))
                )
                .floor()
                .long()
            )
            gi.clamp_(0, grad_bins - 1)
            pi.clamp_(0, param_bins - 1)
            counts += torch.bincount(pi * grad_bins + gi, minlength=param_bins * grad_bins).cpu()
    return {
        "param_edges": torch.linspace(*param_range, param_bins + 1, dtype=torch.float64).tolist(),
        "grad_edges": torch.linspace(*grad_range, grad_bins + 1, dtype=torch.float64).tolist(),
        "counts": counts.reshape(param_bins, grad_bins).tolist(),
        "outside": outside,
        "binned": binned,
        "population": sum(sample.population.values()),
    }
