"""The layer-wise view: one gradient histogram per parameter tensor, in network order, on one
shared value axis (paper Section 3.2: degenerate layers hide in the network-wide histogram)."""

from __future__ import annotations

import math
import os

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .panels import (
    COLORS,
    DPI,
    GRADIENT_ELEMENT,
    MUTED,
    NOTE_SIZE,
    TITLE_SIZE,
    draw_hist1d,
    guarded,
    message,
    new_figure,
    save,
    style,
)
from .sources import Source, latest, records_from

__all__ = ["plot_layerwise"]

COLUMNS = 4
MIN_TITLE_SIZE = 7.0


def _two_line_title(ax: Axes, name: str, note: str) -> None:
    """The parameter's name in bold on top (shrunk, then shortened in the middle, until it fits
    the panel's width) and the grey ``note`` on its own line below it."""
    ax.text(0, 1.02, note, transform=ax.transAxes, fontsize=NOTE_SIZE, color=MUTED, va="bottom")
    heading = ax.set_title(name, loc="left", fontsize=TITLE_SIZE, fontweight="bold", pad=14)
    renderer = ax.figure.canvas.get_renderer()
    width = ax.get_window_extent(renderer).width
    size, text = TITLE_SIZE, name
    while heading.get_window_extent(renderer).width > width:
        if size > MIN_TITLE_SIZE:
            size -= 0.5
            heading.set_fontsize(size)
        else:
            keep = (len(text) - 2) // 2
            if keep < 2:
                break
            text = name[:keep] + "…" + name[len(name) - keep :]
            heading.set_text(text)


def plot_layerwise(
    source: Source, path: str | os.PathLike | None = None, *, dpi: float = DPI
) -> Figure:
    """Draw the newest step's per-parameter ``GradHist1d`` histograms and return the ``Figure``
    (also written to ``path`` at ``dpi``). Each axes is labelled with its parameter's name."""
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
            save(fig, path, dpi)
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
        top=1 - 1.05 / height,
        hspace=0.7,
        wspace=0.18,
    )
    first = None
    for index, (name, layer) in enumerate(layers.items()):
        ax = fig.add_subplot(grid[index // COLUMNS, index % COLUMNS], sharex=first, label=name)
        first = first or ax
        style(ax)
        _two_line_title(ax, name, f"{int(layer.get('population', 0)):,} elements")
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
        save(fig, path, dpi)
    return fig
