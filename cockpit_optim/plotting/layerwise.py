"""The layer-wise view: one gradient histogram per parameter tensor, in network order, on one
shared value axis (paper Section 3.2: degenerate layers hide in the network-wide histogram)."""

from __future__ import annotations

import math
import os

from matplotlib.figure import Figure

from .panels import (
    COLORS,
    GRADIENT_ELEMENT,
    MUTED,
    draw_hist1d,
    guarded,
    message,
    new_figure,
    save,
    style,
    title,
)
from .sources import Source, latest, records_from

__all__ = ["plot_layerwise"]

COLUMNS = 4


def plot_layerwise(source: Source, path: str | os.PathLike | None = None) -> Figure:
    """Draw the newest step's per-parameter ``GradHist1d`` histograms and return the ``Figure``
    (also written to ``path``). Each axes is labelled with its parameter's name."""
    records = records_from(source)
    if not records:
        raise ValueError("no records to plot")
    record = latest(records, "GradHist1d")
    hist = record["GradHist1d"] if record else None
    layers = (hist.get("layers") if isinstance(hist, dict) else None) or {}
    rows = max(1, math.ceil(len(layers) / COLUMNS))
    fig = new_figure((16.0, 0.9 + 2.5 * rows))
    heading = "Layer-wise gradient histograms"
    fig.text(0.04, 1 - 0.45 / fig.get_figheight(), heading, fontsize=15, fontweight="bold")
    if not layers:
        ax = fig.add_subplot(label="GradHist1d")
        style(ax)
        reason = "GradHist1d not tracked" if record is None else "no per-parameter histograms"
        message(ax, reason)
        if path is not None:
            save(fig, path)
        return fig
    fig.text(
        0.96,
        1 - 0.45 / fig.get_figheight(),
        f"step {record['step']}  ·  shared value axis  ·  log counts",
        fontsize=11,
        color=MUTED,
        ha="right",
    )
    height = fig.get_figheight()
    grid = fig.add_gridspec(
        rows,
        COLUMNS,
        left=0.05,
        right=0.98,
        bottom=0.5 / height + 0.02,
        top=1 - 0.85 / height,
        hspace=0.55,
        wspace=0.18,
    )
    first = None
    for index, (name, layer) in enumerate(layers.items()):
        ax = fig.add_subplot(grid[index // COLUMNS, index % COLUMNS], sharex=first, label=name)
        first = first or ax
        style(ax)
        title(ax, name, f"{int(layer.get('population', 0)):,} elements")
        guarded(
            [ax],
            name,
            lambda ax=ax, layer=layer: draw_hist1d(ax, layer, hist["edges"], color=COLORS["blue"]),
        )
        if index // COLUMNS == rows - 1 or index + COLUMNS >= len(layers):
            ax.set_xlabel(GRADIENT_ELEMENT)
        if index % COLUMNS == 0:
            ax.set_ylabel("count")
    if path is not None:
        save(fig, path)
    return fig
