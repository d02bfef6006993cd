"""The cockpit over training as an animated GIF (matplotlib's Pillow writer, no display)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.animation import PillowWriter

from .cockpit import declared_series, draw_cockpit, figure_size
from .panels import View, log_keys, new_figure
from .sources import Source, records_from

__all__ = ["GIF_DPI", "animate"]

GIF_DPI = 100.0  # 1600 x 1200 pixels: the text as large as in the PNG


def animate(
    source: Source,
    path: str | os.PathLike,
    *,
    frames: int = 30,
    fps: float = 4.0,
    dpi: float = GIF_DPI,
    last_fraction: float = 0.1,
    log_steps: bool = False,
) -> Path:
    """Write a GIF of the cockpit growing over training and return its path.

    Frame ``k`` shows the first records up to an evenly spaced cut (at most ``frames`` frames, the
    last one shows all records); all frames share the step axis, the colours and the y-axis scales
    (linear or log) of the full run. ``dpi`` sets the size: 16 x 12 inches, 1600 x 1200 pixels at
    the default.
    """
    records = records_from(source)
    if not records:
        raise ValueError("no records to animate")
    if int(frames) < 1 or fps <= 0 or dpi <= 0:
        raise ValueError(f"frames, fps and dpi must be positive, got {frames}, {fps} and {dpi}")
    steps = [r["step"] for r in records]
    view = View(min(steps), max(steps), log_steps, y_log=log_keys(records))
    cuts = np.unique(np.linspace(1, len(records), min(int(frames), len(records))).round())
    fig = new_figure(figure_size(records))
    series = declared_series(records)  # the same layout in every frame
    path = Path(path)
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi):
        for cut in cuts.astype(int):
            fig.clear()
            draw_cockpit(fig, records[:cut], last_fraction=last_fraction, view=view, series=series)
            writer.grab_frame(facecolor="white")
    return path
