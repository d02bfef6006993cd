"""What a record becomes in an experiment tracker: scalars, histograms and action texts.

Tag scheme (shared by every writer):

* a scalar reading ``R`` (also ``lr``, ``batch_size`` and numeric extras) -> ``cockpit/R``;
  booleans become 0 / 1; ``nan`` stays ``nan``; ``step`` is the tracker's step and ``Time``
  its wall time, not scalars;
* a per-parameter dict ``R_params`` -> ``cockpit/R/<param>`` (e.g. ``cockpit/GradNorm/0.weight``);
  any other dict of numbers ``R`` -> ``cockpit/R/<key>``;
* ``GradHist1d`` -> the histogram ``cockpit/GradHist1d`` and one ``cockpit/GradHist1d/<param>``
  per layer, plus the scalars ``cockpit/GradHist1d/underflow`` (``overflow``, ``binned``,
  ``population``); ``GradHist2d`` -> its ``outside``, ``binned`` and ``population`` scalars (the
  2-D counts are shown in the cockpit image);
* ``actions`` -> one text per record under ``cockpit/actions``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PREFIX", "Histogram", "action_text", "histograms", "scalars"]

PREFIX = "cockpit"
NOT_SCALARS = {"step", "Time", "actions"}
HISTOGRAM_COUNTS = ("underflow", "overflow", "outside", "binned", "population")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _flatten(tag: str, value: Mapping, out: dict[str, float]) -> None:
    for key, item in value.items():
        number = _number(item)
        if number is not None:
            out[f"{tag}/{key}"] = number
        elif isinstance(item, Mapping):
            _flatten(f"{tag}/{key}", item, out)


def _is_histogram(value: Any) -> bool:
    return isinstance(value, Mapping) and "counts" in value


def scalars(record: Mapping[str, Any], *, nest_params: bool = True) -> dict[str, float]:
    """Every scalar of ``record`` under its tag (see the module docstring).

    ``nest_params=False`` keeps per-parameter dicts under their own name,
    ``cockpit/R_params/<param>``, for stores in which a metric cannot also be a folder."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in NOT_SCALARS:
            continue
        number = _number(value)
        if number is not None:
            out[f"{PREFIX}/{key}"] = number
        elif _is_histogram(value):
            for name in HISTOGRAM_COUNTS:
                if (count := _number(value.get(name))) is not None:
                    out[f"{PREFIX}/{key}/{name}"] = count
        elif isinstance(value, Mapping):
            stem = key.removesuffix("_params") if nest_params else key
            _flatten(f"{PREFIX}/{stem}", value, out)
    return out


@dataclass(frozen=True)
class Histogram:
    """One 1-D histogram of a record, as counts over ``edges`` (``len(edges) == len(counts)+1``).

    ``underflow`` / ``overflow`` are the elements below ``edges[0]`` / above ``edges[-1]``;
    :attr:`bucket_counts` folds them into the outermost buckets, the only place a tracker's
    histogram (which has no out-of-range bins) can show them."""

    edges: list[float]
    counts: list[int]
    underflow: int = 0
    overflow: int = 0

    @property
    def bucket_counts(self) -> list[int]:
        """``counts`` with the underflow added to the first and the overflow to the last bucket."""
        folded = [int(c) for c in self.counts]
        folded[0] += int(self.underflow)
        folded[-1] += int(self.overflow)
        return folded

    @property
    def num(self) -> int:
        """Number of binned elements (in range or not)."""
        return sum(self.bucket_counts)

    def moments(self) -> tuple[float, float]:
        """Bin-midpoint estimates of the sum and the sum of squares (the record keeps counts
        only; out-of-range elements are placed at the outermost midpoints)."""
        mids = [(a + b) / 2 for a, b in zip(self.edges[:-1], self.edges[1:])]
        counts = self.bucket_counts
        return (
            math.fsum(c * m for c, m in zip(counts, mids)),
            math.fsum(c * m * m for c, m in zip(counts, mids)),
        )


def histograms(record: Mapping[str, Any]) -> dict[str, Histogram]:
    """The 1-D histograms of ``record`` under their tags: ``GradHist1d`` and its layers."""
    out: dict[str, Histogram] = {}
    hist = record.get("GradHist1d")
    if not _is_histogram(hist) or not hist.get("edges") or not hist.get("counts"):
        return out
    edges = [float(e) for e in hist["edges"]]
    out[f"{PREFIX}/GradHist1d"] = _histogram(edges, hist)
    for name, layer in (hist.get("layers") or {}).items():
        if _is_histogram(layer) and len(layer["counts"]) == len(edges) - 1:
            out[f"{PREFIX}/GradHist1d/{name}"] = _histogram(edges, layer)
    return out


def _histogram(edges: list[float], hist: Mapping[str, Any]) -> Histogram:
    return Histogram(
        edges,
        [int(c) for c in hist["counts"]],
        int(hist.get("underflow", 0)),
        int(hist.get("overflow", 0)),
    )


def action_text(record: Mapping[str, Any]) -> str | None:
    """The record's controller actions as Markdown lines, or ``None`` when it has none."""
    actions = record.get("actions") or []
    lines = [
        f"- step {a.get('step', record.get('step'))}: {a.get('controller', '?')} set "
        f"{a.get('what', '?')} {a.get('from')} -> {a.get('to')} ({a.get('why', '')})"
        for a in actions
        if isinstance(a, Mapping)
    ]
    return "\n".join(lines) if lines else None
