"""The cockpit view (paper Figure 2): step size, gradients and curvature above hyper-parameters and
performance, on an explicit ``Figure`` with an Agg canvas (no pyplot, no global state)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..instruments.base import DECLARED_PANELS, PANELS
from .gauges import (
    draw_alpha,
    draw_gradient_tests,
    draw_hist2d,
    draw_hyperparameters,
    draw_performance,
)
from .layerwise import plot_layerwise
from .panels import (
    COLORS,
    DPI,
    GRADIENT_ELEMENT,
    MUTED,
    STEP_CMAP,
    TICK_SIZE,
    View,
    draw_hist1d,
    draw_series,
    guarded,
    message,
    new_figure,
    save,
    style,
    title,
)
from .sources import Source, latest, records_from

__all__ = ["FIGSIZE", "declared_series", "draw_cockpit", "figure_size", "plot"]

FIGSIZE = (16.0, 12.0)  # inches; 1600 px wide at DPI
EXTRA_ROW_INCHES = 2.6  # added to the height for a row of declared instruments' panels
PANEL_FACE = "#f4f4f4"  # the bottom row: what most practitioners already track
CURVATURE = (
    ("HessMaxEV", "largest Hessian eigenvalue", r"$\lambda_{\max}(H)$"),
    ("HessTrace", "Hessian trace", r"$\mathrm{Tr}(H)$"),
)
#: Readings the fixed panels draw; any other instrument that declares a panel family gets a
#: time-series panel in that column, in a row above the bottom one.
DRAWN = frozenset(
    {"Alpha", "Distance", "UpdateSize", "GradNorm", "GradientNoiseScale", "NormTest", "InnerTest"}
    | {"OrthoTest", "GradHist1d", "GradHist2d", "HessMaxEV", "HessTrace", "TICDiag", "TICTrace"}
)


def declared_series(records: Sequence[dict]) -> list[list[str]]:
    """Per column (:data:`~cockpit_optim.instruments.base.PANELS`), the readings of instruments
    that declare that panel family, are not drawn by a fixed panel and appear in ``records``."""
    present = {key for record in records for key in record}
    columns: list[list[str]] = [[] for _ in PANELS]
    for name, panel in DECLARED_PANELS.items():
        if name in present and name not in DRAWN:
            columns[PANELS.index(panel)].append(name)
    return columns


def figure_size(records: Sequence[dict]) -> tuple[float, float]:
    """The cockpit's size in inches: taller by a row when declared panels are drawn."""
    extra = any(declared_series(records))
    return FIGSIZE[0], FIGSIZE[1] + (EXTRA_ROW_INCHES if extra else 0.0)


def _stacked(fig: Figure, cell, names: Sequence[str]) -> list[Axes]:
    grid = cell.subgridspec(len(names), 1, hspace=0.12)
    axes = [fig.add_subplot(grid[0], label=names[0])]
    axes += [fig.add_subplot(grid[i], sharex=axes[0], label=n) for i, n in enumerate(names[1:], 1)]
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    return axes


def _series_panel(ax: Axes, records: Sequence[dict], key: str, view: View, ylabel: str) -> None:
    if draw_series(ax, records, key, view):
        ax.set_ylabel(ylabel)


def _header(fig: Figure, records: Sequence[dict], view: View, columns: Sequence[float]) -> None:
    fig.text(0.04, 0.965, "Cockpit", fontsize=17, fontweight="bold", va="baseline")
    fig.text(
        0.118,
        0.965,
        f"step {records[-1]['step']}  ·  {len(records)} tracked step{'s' * (len(records) != 1)}",
        fontsize=11,
        color=MUTED,
        va="baseline",
    )
    for x, name in zip(columns, ("STEP SIZE", "GRADIENTS", "CURVATURE")):
        fig.text(x, 0.928, name, fontsize=10, color=MUTED, ha="center", fontweight="bold")
    cax = fig.add_axes((0.80, 0.962, 0.16, 0.011), label="step colorbar")
    bar = fig.colorbar(ScalarMappable(view.norm, STEP_CMAP), cax=cax, orientation="horizontal")
    bar.outline.set_visible(False)
    bar.locator = MaxNLocator(nbins=6, integer=True)
    bar.update_ticks()
    cax.tick_params(labelsize=TICK_SIZE, length=2)
    cax.set_title("points coloured by step", fontsize=TICK_SIZE + 0.5, color=MUTED, pad=3)


def draw_cockpit(
    fig: Figure,
    records: Sequence[dict],
    *,
    last_fraction: float = 0.1,
    log_steps: bool = False,
    view: View | None = None,
    series: list[list[str]] | None = None,
) -> None:
    """Draw the cockpit of ``records`` (at least one) into the empty ``fig``; ``view`` fixes the
    step range and ``series`` the declared panels (:func:`declared_series`), e.g. for all frames
    of an animation. Every axes is labelled with the reading it shows (``Axes.get_label()``)."""
    steps = [r["step"] for r in records]
    view = view or View(min(steps), max(steps), log_steps)
    series = declared_series(records) if series is None else series
    rows = 5 if any(series) else 4
    outer = fig.add_gridspec(
        rows,
        3,
        left=0.055,
        right=0.975,
        top=0.905,
        bottom=0.075,
        height_ratios=(1, 1, 1, 1.05) if rows == 4 else (1, 1, 1, 0.9, 1.05),
        hspace=0.42,
        wspace=0.2,
    )
    columns = [
        (outer[0, c].get_position(fig).x0 + outer[0, c].get_position(fig).x1) / 2 for c in range(3)
    ]
    _header(fig, records, view, columns)

    alpha = fig.add_subplot(outer[0, 0], label="Alpha")
    distance, update = _stacked(fig, outer[1, 0], ("Distance", "UpdateSize"))
    noise = None
    if any("GradientNoiseScale" in r for r in records):
        grad_norm, noise = _stacked(fig, outer[2, 0], ("GradNorm", "GradientNoiseScale"))
    else:
        grad_norm = fig.add_subplot(outer[2, 0], label="GradNorm")
    tests_grid = outer[0, 1].subgridspec(1, 2, width_ratios=(1, 1.25), wspace=0.32)
    geometry = fig.add_subplot(tests_grid[0], label="GradientTests")
    history = fig.add_subplot(tests_grid[1], label="GradientTests history")
    hist1d = fig.add_subplot(outer[1, 1], label="GradHist1d")
    grid2d = outer[2, 1].subgridspec(
        2, 2, width_ratios=(4, 1), height_ratios=(1, 3), wspace=0.04, hspace=0.06
    )
    main2d = fig.add_subplot(grid2d[1, 0], label="GradHist2d")
    top2d = fig.add_subplot(grid2d[0, 0], sharex=main2d, label="GradHist2d gradient marginal")
    side2d = fig.add_subplot(grid2d[1, 1], sharey=main2d, label="GradHist2d parameter marginal")
    corner2d = fig.add_subplot(grid2d[0, 1], label="GradHist2d note")
    curvature = [fig.add_subplot(outer[r, 2], label=key) for r, (key, _, _) in enumerate(CURVATURE)]
    tic_diag, tic_trace = _stacked(fig, outer[2, 2], ("TICDiag", "TICTrace"))
    declared = [
        _stacked(fig, outer[3, column], names) if names else []
        for column, names in enumerate(series)
    ]
    bottom = outer[rows - 1, :].subgridspec(1, 2, wspace=0.22)
    hyper = fig.add_subplot(bottom[0], label="HyperParameters")
    performance = fig.add_subplot(bottom[1], label="Performance")
    for ax in fig.axes:
        if ax.get_label() not in ("step colorbar", "GradHist2d note"):
            style(ax)
    for ax in (hyper, performance):
        ax.set_facecolor(PANEL_FACE)

    guarded([alpha], "Alpha", lambda: draw_alpha(alpha, records, last_fraction))

    def _distances() -> None:
        title(distance, "Distance & UpdateSize", "progress vs. step length")
        _series_panel(distance, records, "Distance", view, r"$\Vert\theta_t - \theta_0\Vert$")
        _series_panel(update, records, "UpdateSize", view, r"$\Vert\theta_{t+1} - \theta_t\Vert$")

    guarded([distance, update], "Distance", _distances)
    title(grad_norm, "GradNorm", "mini-batch gradient norm")
    guarded(
        [grad_norm],
        "GradNorm",
        lambda: _series_panel(grad_norm, records, "GradNorm", view, r"$\Vert g\Vert$"),
    )
    if noise is not None:
        title(grad_norm, "GradNorm & noise scale", "critical batch size below")
        guarded(
            [noise],
            "GradientNoiseScale",
            lambda: _series_panel(noise, records, "GradientNoiseScale", view, r"$B_{simple}$"),
        )
    guarded(
        [geometry, history],
        "Gradient tests",
        lambda: draw_gradient_tests(geometry, history, records, view),
    )
    guarded([hist1d], "GradHist1d", lambda: _hist1d(hist1d, records))
    guarded(
        [top2d, main2d, side2d, corner2d],
        "GradHist2d",
        lambda: draw_hist2d(main2d, top2d, side2d, corner2d, records),
    )
    for ax, (key, note, ylabel) in zip(curvature, CURVATURE):
        named = {r[f"{key}_curvature"] for r in records if f"{key}_curvature" in r}
        title(ax, key, note + "".join(f" ({c})" for c in sorted(named)))
        guarded(
            [ax], key, lambda ax=ax, key=key, y=ylabel: _series_panel(ax, records, key, view, y)
        )

    def _tic() -> None:
        named = sorted({r["TICDiag_curvature"] for r in records if "TICDiag_curvature" in r})
        note = "Takeuchi information criterion" + "".join(f" ({c})" for c in named)
        title(tic_diag, "TICDiag & TICTrace", note)
        _series_panel(tic_diag, records, "TICDiag", view, "diag")
        _series_panel(tic_trace, records, "TICTrace", view, "trace")

    guarded([tic_diag, tic_trace], "TIC", _tic)
    for ax in (noise if noise is not None else grad_norm, update, curvature[-1], tic_trace):
        if len(ax.get_xticks()):  # not a panel showing a message
            ax.set_xlabel("step")
    for names, axes in zip(series, declared):
        for key, ax in zip(names, axes):
            title(ax, key)
            guarded([ax], key, lambda ax=ax, key=key: _series_panel(ax, records, key, view, key))
        if axes and len(axes[-1].get_xticks()):
            axes[-1].set_xlabel("step")
    guarded([hyper], "Hyper-parameters", lambda: draw_hyperparameters(hyper, records, view))
    guarded([performance], "Performance", lambda: draw_performance(performance, records, view))


def _hist1d(ax: Axes, records: Sequence[dict]) -> None:
    record = latest(records, "GradHist1d")
    title(
        ax, "GradHist1d", f"individual gradient elements, step {record['step']}" if record else ""
    )
    if record is None:
        message(ax, "GradHist1d not tracked")
        return
    hist = record["GradHist1d"]
    draw_hist1d(ax, hist, hist["edges"], color=COLORS["blue"])
    ax.set_xlabel(GRADIENT_ELEMENT)
    ax.set_ylabel("count")


def plot(
    source: Source,
    path: str | os.PathLike | None = None,
    *,
    layerwise: bool = False,
    last_fraction: float = 0.1,
    log_steps: bool = False,
    dpi: float = DPI,
) -> Figure:
    """Draw the cockpit view of ``source`` and return the ``Figure`` (also written to ``path``).

    Args:
        source: a ``MonitoredOptimizer`` (its ``history``), a list of records, or a log file or
            folder (``cockpit.jsonl``).
        path: image file to write (format from its suffix), or ``None``.
        layerwise: draw the layer-wise view (one gradient histogram per parameter) instead.
        last_fraction: the newest fraction of Alpha readings shown as a second histogram.
        log_steps: log-spaced step axis for all time series.
        dpi: pixels per inch of the written image (the figure is 16 x 12 inches, taller by a
            row for declared panels).

    Each instrument panel reads only its own keys; an instrument absent from the records is shown
    as "not tracked", and ``nan`` readings are skipped.  An instrument class that declares a
    ``panel`` family gets its own time-series panel in that column (in a row added above the
    bottom one) where that class is defined in the drawing process: the CLI draws only the
    package's own instruments.
    """
    if not 0 < last_fraction <= 1:
        raise ValueError(f"last_fraction must be in (0, 1], got {last_fraction}")
    records = records_from(source)
    if layerwise:
        return plot_layerwise(records, path, dpi=dpi)
    if not records:
        raise ValueError("no records to plot")
    fig = new_figure(figure_size(records))
    draw_cockpit(fig, records, last_fraction=last_fraction, log_steps=log_steps)
    if path is not None:
        save(fig, path, dpi)
    return fig
