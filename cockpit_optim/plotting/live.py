"""Live mode: redraw the cockpit PNG in ``log_dir`` while training runs, off the training thread."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from .cockpit import plot
from .layerwise import plot_layerwise

__all__ = ["LivePlot"]


class LivePlot:
    """Redraws ``log_dir/cockpit.png`` (and optionally ``cockpit_layerwise.png``) every ``every``
    new records.

    Call :meth:`update` with the growing record list after each record (e.g. from
    ``MonitoredOptimizer._finish``), or pass the object as a controller (:meth:`observe`), and
    call :meth:`close` at the end of training. Drawing happens on a background thread
    (``background=True``) with the Agg canvas, so training waits for nothing but a list copy;
    while a drawing is in progress, updates are skipped until it is done. Files are replaced
    atomically. A failing drawing never raises: the first failure is reported once, as a
    ``RuntimeWarning`` from the next :meth:`update` or :meth:`close`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        every: int = 10,
        *,
        layerwise: bool = False,
        log_steps: bool = False,
        background: bool = True,
    ) -> None:
        if int(every) < 1:
            raise ValueError(f"every must be a positive number of records, got {every}")
        self.path = Path(log_dir) / "cockpit.png"
        self.layerwise_path = Path(log_dir) / "cockpit_layerwise.png" if layerwise else None
        self.every, self.log_steps, self.background = int(every), log_steps, background
        self.drawn = 0  # number of records in the newest drawing started
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._warned = False

    def update(self, history: Sequence[dict]) -> None:
        """Start a drawing of ``history`` if ``every`` records arrived since the last one."""
        self._report()
        if len(history) - self.drawn >= self.every and not self._busy():
            self._start(list(history))

    def observe(self, record: dict, optimizer) -> list:
        """Controller protocol (``MonitoredOptimizer(..., controllers=[LivePlot(...)])``): called
        with each completed record before it joins ``optimizer.history``; takes no action."""
        self.update([*optimizer.history, record])
        return []

    def close(self, history: Sequence[dict] | None = None) -> None:
        """Wait for a drawing in progress, then draw ``history`` if it has records not drawn yet."""
        if self._worker is not None:
            self._worker.join()
        if history is not None and len(history) > self.drawn:
            self._draw(list(history))
        self._report()

    def _busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _start(self, records: list[dict]) -> None:
        self.drawn = len(records)
        if self.background:
            self._worker = threading.Thread(
                target=self._draw, args=(records,), name="cockpit-live-plot", daemon=True
            )
            self._worker.start()
        else:
            self._draw(records)

    def _draw(self, records: list[dict]) -> None:
        self.drawn = max(self.drawn, len(records))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _replace(self.path, lambda tmp: plot(records, tmp, log_steps=self.log_steps))
            if self.layerwise_path is not None:
                _replace(self.layerwise_path, lambda tmp: plot_layerwise(records, tmp))
        except Exception as error:  # a failing plot must never stop training
            self._error = self._error or error

    def _report(self) -> None:
        if self._error is not None and not self._warned:
            self._warned = True
            warnings.warn(
                f"live cockpit plot to {self.path} failed (training goes on): {self._error!r}",
                RuntimeWarning,
                stacklevel=3,
            )


def _replace(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` and move the result over ``path`` (never half a file)."""
    tmp = path.with_suffix(".tmp" + path.suffix)
    write(tmp)
    os.replace(tmp, path)
