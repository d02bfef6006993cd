"""Building blocks shared by all views: styling, messages, time series and 1-D histograms."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, MaxNLocator

from .sources import series

__all__ = [
    "COLORS",
    "DPI",
    "GRADIENT_ELEMENT",
    "LR_LOG_RATIO",
    "SERIES_LOG_RATIO",
    "View",
    "draw_hist1d",
    "draw_series",
    "guarded",
    "legend",
    "legend_below",
    "log_keys",
    "log_ticks",
    "message",
    "new_figure",
    "save",
    "smoothed",
    "style",
    "title",
    "wants_log",
]

DPI = 100
TITLE_SIZE = 10.5
LABEL_SIZE = 8.5
TICK_SIZE = 7.5
NOTE_SIZE = 7.5
STEP_CMAP = "viridis"
MUTED = "#6b6b6b"
GRADIENT_ELEMENT = r"gradient element $g_{n,d}$"
COLORS = {
    "blue": "#3b6fb6",
    "orange": "#e07b39",
    "green": "#4a9a5b",
    "red": "#c8423b",
    "purple": "#7d5ba6",
    "grey": "#8c8c8c",
    "average": "#202020",
}


SERIES_LOG_RATIO = 100.0  # positive readings spanning more than this get a log y axis
LR_LOG_RATIO = 10.0  # the same for the learning rate


def wants_log(values: np.ndarray, ratio: float) -> bool:
    """Log y axis for positive ``values`` spanning more than ``ratio``."""
    return len(values) > 0 and bool(values.min() > 0 and values.max() > ratio * values.min())


def log_keys(records: Sequence[dict]) -> frozenset[str]:
    """The scalar keys (and ``lr``) whose readings over all ``records`` want a log y axis."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.items():
            items = value if key == "lr" and isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, int | float) and not isinstance(item, bool):
                    values.setdefault(key, []).append(float(item))
    keys = set()
    for key, numbers in values.items():
        finite = np.asarray(numbers)[np.isfinite(numbers)]
        if wants_log(finite, LR_LOG_RATIO if key == "lr" else SERIES_LOG_RATIO):
            keys.add(key)
    return frozenset(keys)


@dataclass(frozen=True)
class View:
    """What all time series of one figure share: the step range, its colours, the step axis scale
    and, when ``y_log`` is given (e.g. from the full run for all frames of an animation), which
    readings get a log y axis; ``None`` decides per figure from the values shown."""

    first_step: int
    last_step: int
    log_steps: bool = False
    y_log: frozenset[str] | None = None

    @property
    def norm(self) -> Normalize:
        return Normalize(self.first_step, max(self.last_step, self.first_step + 1))

    def log_y(self, key: str, values: np.ndarray, ratio: float = SERIES_LOG_RATIO) -> bool:
        """Whether the reading ``key`` (shown with ``values``) gets a log y axis."""
        return wants_log(values, ratio) if self.y_log is None else key in self.y_log

    def step_axis(self, ax: Axes) -> None:
        """Apply the shared step range (linear, or log-spaced with step 0 kept)."""
        if self.log_steps:
            ax.set_xscale("symlog", linthresh=1.0, linscale=0.4)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.set_xlim(max(self.first_step - 0.2, -0.2), self.last_step * 1.15 + 1.0)
        else:
            pad = max(0.5, 0.03 * (self.last_step - self.first_step))
            ax.set_xlim(self.first_step - pad, self.last_step + pad)
            # as many labels as the axis width holds (narrow panels get fewer)
            ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=2))


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A ``Figure`` with its own Agg canvas (works without a display, touches no global state)."""
    fig = Figure(figsize=figsize, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: float = DPI) -> None:
    """Write ``fig`` to ``path`` (format from the suffix) at ``dpi`` pixels per inch."""
    fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())


def style(ax: Axes, *, grid: bool = True) -> None:
    """Small ticks, light grid, no top/right spines."""
    ax.tick_params(labelsize=TICK_SIZE, length=2.5, pad=2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9a9a9a")
    if grid:
        ax.grid(True, color="#e4e4e4", linewidth=0.6)
        ax.set_axisbelow(True)
    ax.xaxis.label.set_size(LABEL_SIZE)
    ax.yaxis.label.set_size(LABEL_SIZE)
    ax.yaxis.offsetText.set_fontsize(TICK_SIZE)
    ax.xaxis.offsetText.set_fontsize(TICK_SIZE)


def title(ax: Axes, text: str, note: str = "") -> None:
    """Bold panel title on the left, an optional grey note on the right."""
    ax.set_title(text, loc="left", fontsize=TITLE_SIZE, fontweight="bold", pad=4)
    if note:
        ax.set_title(note, loc="right", fontsize=NOTE_SIZE, color=MUTED, pad=4)


def legend(ax: Axes, handles: Sequence | None = None, **options) -> None:
    """A small legend on a translucent white box."""
    kwargs = {"fontsize": NOTE_SIZE, "framealpha": 0.85, "edgecolor": "none", "handlelength": 1.4}
    if handles is not None:
        kwargs["handles"] = handles
    ax.legend(**kwargs, **options)


def legend_below(ax: Axes, handles: Sequence, columns: int = 3) -> None:
    """A legend under the panel's x label (for the wide bottom panels)."""
    legend(ax, handles, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=columns, frameon=False)


def log_ticks(ax: Axes) -> None:
    """Log-scaled y axis labelled at powers of ten; an axis spanning less than a decade also
    labels some of the ticks in between (else it would carry no label at all)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(numticks=4))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def message(ax: Axes, text: str) -> None:
    """Replace the panel's content by a centred grey message (e.g. "not tracked")."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_color("#d0d0d0")
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=LABEL_SIZE + 0.5,
        color=MUTED,
        style="italic",
        gid="message",
    )


def guarded(axes: Sequence[Axes], name: str, draw: Callable[[], None]) -> None:
    """Run ``draw``; if the records cannot be drawn, say so in the panel and warn (never raise)."""
    try:
        draw()
    except Exception as error:  # a malformed record spoils one panel, never the figure
        warnings.warn(f"cockpit panel {name} cannot be drawn: {error!r}", stacklevel=3)
        for ax in axes:
            ax.cla()
            style(ax)
        title(axes[0], name)
        message(axes[0], f"cannot draw {name}:\n{type(error).__name__}")


def smoothed(values: np.ndarray, half_width: int | None = None) -> np.ndarray:
    """A centred smooth line through ``values``: inside, point ``i`` is the value at ``i`` of the
    least-squares parabola through ``values[i - h : i + h + 1]`` (Savitzky-Golay); within ``h``
    of either end, where that window does not fit, the mean of the symmetric window
    ``values[i - k : i + k + 1]``, ``k = min(i, n - 1 - i)`` (the end points as they are). Neither
    lags behind a trend, as a trailing average does, nor cuts through a bend, as a wide mean does.
    By default ``h = round(n / 10)``, at most 40; below ``h = 2`` the values are kept."""
    from scipy.signal import savgol_coeffs  # scipy is heavy to import; only plots need this

    values = np.asarray(values, dtype=float)
    n = len(values)
    h = min(40, round(n / 10)) if half_width is None else int(half_width)
    h = min(h, (n - 1) // 2)
    out = values.copy()
    if h < 2:
        return out
    out[h : n - h] = np.convolve(values, savgol_coeffs(2 * h + 1, 2), mode="valid")
    for k in range(1, h):  # the shrinking symmetric windows near both ends
        out[k] = values[: 2 * k + 1].mean()
        out[n - 1 - k] = values[n - 1 - 2 * k :].mean()
    return out


def draw_series(
    ax: Axes,
    records: Sequence[dict],
    key: str,
    view: View,
    *,
    color: str | None = None,
    label: str | None = None,
    size: float = 14.0,
) -> bool:
    """Scatter the finite readings of ``key`` over steps with a centred smooth line through them
    (:func:`smoothed`, of the logarithms on a log y axis).

    Points are coloured by step unless ``color`` is given. Returns ``False`` (after writing the
    reason into the panel) when there is nothing to draw.
    """
    if not any(key in r for r in records):
        message(ax, f"{key} not tracked")
        return False
    steps, values = series(records, key)
    if len(values) == 0:
        message(ax, f"{key}: no finite reading")
        return False
    if color is None:
        ax.scatter(
            steps, values, c=steps, cmap=STEP_CMAP, norm=view.norm, s=size, linewidths=0, zorder=3
        )
        line_color = COLORS["average"]
    else:
        ax.scatter(steps, values, color=color, s=size * 0.6, alpha=0.45, linewidths=0, zorder=3)
        line_color = color
    log_y = view.log_y(key, values) and values.min() > 0
    average = np.exp(smoothed(np.log(values))) if log_y else smoothed(values)
    ax.plot(steps, average, color=line_color, linewidth=1.4, zorder=4, label=label)
    view.step_axis(ax)
    if log_y:
        log_ticks(ax)
    return True


def _compact(number: int) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if number >= limit:
            return f"{number / limit:.3g}{suffix}"
    return str(number)


def draw_hist1d(ax: Axes, hist: dict, edges: Sequence[float], *, color: str) -> None:
    """Bars of ``hist["counts"]`` over ``edges`` on a log count axis, with the elements outside the
    edges (``underflow``/``overflow``) written at the edges and a note when only a subsample was
    binned."""
    counts = np.asarray(hist["counts"], dtype=float)
    edges = np.asarray(edges, dtype=float)
    if len(edges) != len(counts) + 1:
        raise ValueError(f"{len(counts)} counts need {len(counts) + 1} edges, got {len(edges)}")
    filled = counts > 0  # zero-height bars cannot be drawn on a log axis
    ax.bar(
        edges[:-1][filled],
        counts[filled],
        width=np.diff(edges)[filled],
        align="edge",
        color=color,
        linewidth=0,
    )
    if not filled.any():
        ax.text(
            0.5,
            0.5,
            "no element inside the range",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="#777777",
        )
    log_ticks(ax)
    ax.set_ylim(0.7, max(counts.max(), 1.0) * 3.0)
    ax.set_xlim(edges[0], edges[-1])
    for side, x, ha, arrow in (
        ("underflow", 0.015, "left", "◀ {} below"),
        ("overflow", 0.985, "right", "{} above ▶"),
    ):
        count = int(hist.get(side, 0))
        if count:
            ax.text(
                x,
                0.96,
                arrow.format(f"{count:,}"),
                transform=ax.transAxes,
                ha=ha,
                va="top",
                fontsize=NOTE_SIZE,
                color=COLORS["red"],
                gid=side,
            )
    binned, population = int(hist.get("binned", 0)), int(hist.get("population", 0))
    if 0 < binned < population:
        ax.text(
            0.5,
            0.96,
            f"subsample: {_compact(binned)} of {_compact(population)}",
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=NOTE_SIZE,
            color=MUTED,
        )
