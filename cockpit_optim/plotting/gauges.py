"""The cockpit's composite instruments: Alpha, gradient tests, 2-D histogram, hyper-parameters and
performance. Each ``draw_*`` reads only the record keys it shows."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Circle
from matplotlib.transforms import Bbox

from .panels import (
    COLORS,
    GRADIENT_ELEMENT,
    LR_LOG_RATIO,
    MUTED,
    NOTE_SIZE,
    View,
    draw_series,
    legend,
    legend_below,
    log_ticks,
    message,
    style,
    title,
)
from .sources import as_number, latest, series

__all__ = [
    "ALPHA_LIMIT",
    "controller_actions",
    "draw_alpha",
    "draw_gradient_tests",
    "draw_hist2d",
    "draw_hyperparameters",
    "draw_performance",
    "metric_keys",
]

ALPHA_LIMIT = 1.5  # the Alpha axis spans [-ALPHA_LIMIT, ALPHA_LIMIT]
ALPHA_BINS = 30
TESTS = (("NormTest", "norm ball", "blue"), ("InnerTest", "inner band", "orange"))
TESTS += (("OrthoTest", "ortho band", "green"),)
ACTIONS_ANNOTATED = 6  # with more actions, only the newest reason per controller is written
METRIC_PREFIXES = ("train_", "test_", "val_", "valid_", "eval_")


def draw_alpha(ax: Axes, records: Sequence[dict], last_fraction: float) -> None:
    """Alpha on the standardized parabola: histograms of all readings and of the newest
    ``last_fraction`` of them, means in the legend, readings beyond the axis counted at its edges."""
    title(ax, "Alpha", "where on the parabola each step lands")
    if not any("Alpha" in r for r in records):
        message(ax, "Alpha not tracked")
        return
    alphas = series(records, "Alpha")[1]
    if len(alphas) == 0:
        message(ax, "Alpha: no finite reading")
        return
    recent = alphas[-max(1, math.ceil(last_fraction * len(alphas))) :]
    bins = np.linspace(-ALPHA_LIMIT, ALPHA_LIMIT, ALPHA_BINS + 1)
    top = 0.0
    groups = (
        ("all", alphas, f"all {len(alphas)}", COLORS["blue"], 0.45),
        ("last", recent, f"last {last_fraction:.0%} ({len(recent)})", COLORS["orange"], 0.65),
    )
    for row, (group, values, name, color, opacity) in enumerate(groups):
        counts = np.histogram(values, bins=bins)[0] / len(values)
        ax.bar(bins[:-1], counts, width=np.diff(bins), align="edge", color=color, alpha=opacity)
        top = max(top, counts.max())
        mean = float(values.mean())
        ax.axvline(
            mean, color=color, linestyle="--", linewidth=1.2, label=f"{name} · mean {mean:.2f}"
        )
        for side, count, x, ha, text in (
            ("below", int((values < -ALPHA_LIMIT).sum()), 0.01, "left", "◀ {}"),
            ("above", int((values > ALPHA_LIMIT).sum()), 0.99, "right", "{} ▶"),
        ):
            if count:
                ax.text(
                    x,
                    0.62 - 0.1 * row,
                    text.format(count),
                    transform=ax.transAxes,
                    ha=ha,
                    va="center",
                    fontsize=NOTE_SIZE + 0.5,
                    fontweight="bold",
                    color=color,
                    gid=f"alpha-{group}-{side}",
                )
    top = 1.6 * top if top > 0 else 1.0
    x = np.linspace(-ALPHA_LIMIT, ALPHA_LIMIT, 200)
    ax.plot(x, 0.9 * top * (x / ALPHA_LIMIT) ** 2, color=MUTED, linewidth=1.2, zorder=1)
    ax.set_xlim(-ALPHA_LIMIT, ALPHA_LIMIT)
    ax.set_ylim(0, top)
    ax.set_xticks([-1, 0, 1], ["−1 start", "0 valley floor", "1 opposite wall"])
    ax.set_ylabel("fraction of steps")
    legend(ax, loc="upper center")


def _equal_scales(ax: Axes, x_range: tuple[float, float], y_reach: float) -> None:
    """Limits covering ``x_range`` and ``[-y_reach, y_reach]`` with equal units on both axes (so
    the ball is round) while the axes keep their box."""
    box = ax.get_position()
    width, height = box.width * ax.figure.get_figwidth(), box.height * ax.figure.get_figheight()
    span = max(x_range[1] - x_range[0], 2 * y_reach * width / height)
    middle = (x_range[0] + x_range[1]) / 2
    ax.set_xlim(middle - span / 2, middle + span / 2)
    ax.set_ylim(-span * height / width / 2, span * height / width / 2)


def draw_gradient_tests(geometry: Axes, history: Axes, records: Sequence[dict], view: View) -> None:
    """Norm-test ball, inner band and ortho band of the newest step around the mean gradient
    (standardized to ``(1, 0)``), and the three radii over steps."""
    title(geometry, "Gradient tests")
    newest = next(
        (r for r in reversed(records) if any(as_number(r.get(k)) is not None for k, _, _ in TESTS)),
        None,
    )
    if newest is None:
        tracked = any(key in r for key, _, _ in TESTS for r in records)
        message(
            geometry,
            "gradient tests: no finite reading" if tracked else "gradient tests not tracked",
        )
        history.axis("off")
        return
    radii = {k: as_number(newest.get(k)) for k, _, _ in TESTS}
    reach = max([0.5, *(r for r in radii.values() if r is not None)]) * 1.2
    _equal_scales(geometry, (min(-0.25, 1 - reach), 1 + reach), reach)
    if radii["OrthoTest"] is not None:
        geometry.axhspan(-radii["OrthoTest"], radii["OrthoTest"], color=COLORS["green"], alpha=0.18)
    if radii["InnerTest"] is not None:
        inner = radii["InnerTest"]
        geometry.axvspan(1 - inner, 1 + inner, color=COLORS["orange"], alpha=0.22)
    if radii["NormTest"] is not None:
        ball = Circle((1, 0), radii["NormTest"], facecolor=COLORS["blue"], alpha=0.18)
        geometry.add_patch(ball)
        geometry.add_patch(Circle((1, 0), radii["NormTest"], fill=False, color=COLORS["blue"]))
    geometry.annotate(
        "", xy=(1, 0), xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.3}
    )
    geometry.text(0.5, 0.04 * reach, "g", ha="center", va="bottom", fontsize=9, style="italic")
    geometry.set_xlabel(r"along $g$ (units of $\Vert g\Vert$)")
    geometry.set_ylabel("orthogonal to g")
    title(history, "", f"left: step {newest['step']} · right: over steps")
    for key, name, color in TESTS:
        if len(series(records, key)[1]):
            shown = "nan" if radii[key] is None else f"{radii[key]:.3g}"
            draw_series(history, records, key, view, color=COLORS[color], label=f"{name} {shown}")
    low, high = history.get_ylim()  # room for the legend above the lines
    history.set_ylim(low, high + 0.7 * (high - low))
    legend(history, loc="upper right")


def draw_hist2d(main: Axes, top: Axes, side: Axes, corner: Axes, records: Sequence[dict]) -> None:
    """Heat map of (gradient element, parameter) pairs of the newest step with both marginals."""
    corner.axis("off")
    record = latest(records, "GradHist2d")
    if record is None:  # one plain panel over the whole cell
        cell = Bbox.union([ax.get_position() for ax in (main, top, side, corner)])
        for ax in (top, side):
            ax.axis("off")
        main.set_position(cell)
        title(main, "GradHist2d")
        message(main, "GradHist2d not tracked")
        return
    title(top, "GradHist2d")
    hist = record["GradHist2d"]
    counts = np.asarray(hist["counts"], dtype=float)
    grad_edges = np.asarray(hist["grad_edges"], dtype=float)
    param_edges = np.asarray(hist["param_edges"], dtype=float)
    if counts.shape != (len(param_edges) - 1, len(grad_edges) - 1):
        raise ValueError(f"counts of shape {counts.shape} do not match the edges")
    peak = max(counts.max(), 1.0)
    main.pcolormesh(
        grad_edges,
        param_edges,
        np.ma.masked_equal(counts, 0),
        norm=LogNorm(vmin=1, vmax=max(peak, 10.0)),
        cmap="YlGnBu",
        rasterized=True,
    )
    main.set_xlabel(GRADIENT_ELEMENT)
    main.set_ylabel(r"parameter $\theta_d$")
    blue = COLORS["blue"]
    top.bar(
        grad_edges[:-1], counts.sum(axis=0), width=np.diff(grad_edges), align="edge", color=blue
    )
    side.barh(
        param_edges[:-1], counts.sum(axis=1), height=np.diff(param_edges), align="edge", color=blue
    )
    top.set_yscale("log")
    side.set_xscale("log")
    for ax in (top, side):  # marginals show shape only: no count labels
        ax.tick_params(which="both", labelbottom=False, labelleft=False)
    notes = [f"step {record['step']}", "log counts"]
    if int(hist.get("outside", 0)):
        notes.append(f"{int(hist['outside']):,} pairs\noutside")
    corner.text(0.1, 0.5, "\n".join(notes), fontsize=NOTE_SIZE, color=MUTED, va="center")


def controller_actions(records: Sequence[dict]) -> list[tuple[int, dict]]:
    """``(step, action)`` for every controller action in the records, oldest first."""
    return [(r["step"], a) for r in records for a in r.get("actions") or () if isinstance(a, dict)]


def _lr_series(records: Sequence[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (steps, values) pair per parameter group (``lr`` is a float or a list of floats)."""
    groups: dict[int, list[tuple[int, float]]] = {}
    for record in records:
        lrs = record.get("lr")
        for group, lr in enumerate(lrs if isinstance(lrs, list) else [lrs]):
            if (value := as_number(lr)) is not None:
                groups.setdefault(group, []).append((record["step"], value))
    return [tuple(np.asarray(v) for v in zip(*pairs)) for _, pairs in sorted(groups.items())]


def draw_hyperparameters(ax: Axes, records: Sequence[dict], view: View) -> None:
    """Learning rate per group, batch size (right axis) and every controller action with its reason."""
    lrs, (b_steps, batch) = _lr_series(records), series(records, "batch_size")
    actions = controller_actions(records)
    title(
        ax, "Hyper-parameters", f"{len(actions)} controller action(s) marked ▼" if actions else ""
    )
    if not lrs and not len(batch) and not actions:
        message(ax, "hyper-parameters not recorded")
        return
    handles: list = []
    for group, (steps, values) in enumerate(lrs):
        name = "learning rate" + (f" (group {group})" if len(lrs) > 1 else "")
        handles += ax.plot(
            steps,
            values,
            drawstyle="steps-post",
            marker="o",
            markersize=2.5,
            color=COLORS["blue"],
            alpha=1.0 - 0.25 * min(group, 3),
            label=name,
        )
    ax.set_ylabel("learning rate", color=COLORS["blue"])
    values = np.concatenate([v for _, v in lrs]) if lrs else np.empty(0)
    if view.log_y("lr", values, LR_LOG_RATIO):
        log_ticks(ax)
    elif len(values):
        ax.set_ylim(min(0.0, values.min() * 1.3), max(values.max() * 1.3, 1e-12))
    if len(batch):
        right = ax.twinx()
        style(right, grid=False)
        right.spines["right"].set_visible(True)
        handles += right.plot(
            b_steps,
            batch,
            drawstyle="steps-post",
            marker="o",
            markersize=2.5,
            color=COLORS["orange"],
            linewidth=1.3,
            label="batch size",
        )
        right.set_ylabel("batch size", color=COLORS["orange"])
        right.set_ylim(0, batch.max() * 2.0)  # below the learning rate when both are constant
    handles += _draw_actions(ax, actions)
    view.step_axis(ax)
    ax.set_xlabel("step")
    legend_below(ax, handles, columns=2 if actions else 3)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _draw_actions(ax: Axes, actions: list[tuple[int, dict]]) -> list[Line2D]:
    """A ▼ and a dotted line per action, one colour per controller and target; each action's
    change and reason written beside it when there are few, else the newest reason in the legend."""
    palette = itertools.cycle(COLORS[c] for c in ("red", "purple", "green", "grey"))
    groups: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for step, action in actions:
        key = (str(action.get("controller", "?")), str(action.get("what", "?")))
        groups.setdefault(key, []).append((step, action))
    handles = []
    for (controller, what), items in groups.items():
        color = next(palette)
        for step, action in items:
            ax.axvline(step, color=color, linewidth=0.8, linestyle=":", zorder=1)
            if len(actions) <= ACTIONS_ANNOTATED:
                to = as_number(action.get("to"))
                change = "" if to is None else f"→{to:.3g}"
                why = _short(str(action.get("why", "")), 40)
                ax.text(
                    step,
                    0.95,
                    f" {what}{change}: {why}",
                    rotation=90,
                    va="top",
                    ha="left",
                    fontsize=NOTE_SIZE - 0.5,
                    color=color,
                    transform=ax.get_xaxis_transform(),
                    gid="action",
                )
        steps = [step for step, _ in items]
        ax.plot(
            steps,
            [0.98] * len(steps),
            marker="v",
            markersize=6,
            linestyle="none",
            color=color,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            zorder=5,
        )
        label = f"{controller}: {what} ×{len(items)}"
        if len(actions) > ACTIONS_ANNOTATED:
            step, newest = items[-1]
            label += f", newest (step {step}): {newest.get('why', '')}"
        handles.append(
            Line2D([], [], color=color, marker="v", linestyle=":", label=_short(label, 64))
        )
    return handles


def metric_keys(records: Sequence[dict]) -> list[str]:
    """Scalar metrics beyond the mini-batch loss (``train_*``, ``test_*``, ``val_*``, ...)."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(METRIC_PREFIXES) and as_number(value) is not None:
                keys[key] = None
    return list(keys)


def draw_performance(ax: Axes, records: Sequence[dict], view: View) -> None:
    """Mini-batch loss (coloured by step, centred smoothing) and the other metrics the records
    carry as markers: losses on the left axis, accuracies and other metrics on the right."""
    title(ax, "Performance", "mini-batch loss and metrics")
    metrics = metric_keys(records)
    if not any("Loss" in r for r in records) and not metrics:
        message(ax, "Loss not tracked")
        return
    if any("Loss" in r for r in records):
        draw_series(ax, records, "Loss", view, label="mini-batch loss (centred smoothing)")
    view.step_axis(ax)
    ax.set_ylabel("loss")
    ax.set_xlabel("step")
    right = None
    palette = itertools.cycle(COLORS[c] for c in ("red", "purple", "orange", "green", "grey"))
    for key in metrics:
        target = ax
        if "loss" not in key:
            if right is None:
                right = ax.twinx()
                style(right, grid=False)
                right.spines["right"].set_visible(True)
                right.set_ylabel("accuracy / metric")
            target = right
        steps, values = series(records, key)
        target.plot(  # markers only: a line would claim values between evaluations
            steps,
            values,
            marker="o",
            markersize=4,
            linestyle="none",
            color=next(palette),
            label=key.replace("_", " "),
        )
    handles = ax.get_legend_handles_labels()[0]
    if right is not None:
        handles += right.get_legend_handles_labels()[0]
    if handles:
        legend_below(right or ax, handles)
