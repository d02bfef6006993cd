"""Live mode: redraw the cockpit PNG in ``log_dir`` while training runs, off the training thread,
or in a notebook output cell (:class:`LiveCockpit`), updated in place."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .cockpit import plot
from .layerwise import plot_layerwise

__all__ = ["LiveCockpit", "LivePlot", "in_notebook", "show_figures_inline"]

NOTEBOOK_DPI = 60  # 960 x 720 px: the whole cockpit within a notebook's width


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython is not imported to find out)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _figure_png(figure: Figure) -> bytes:
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=NOTEBOOK_DPI, facecolor=figure.get_facecolor())
    return buffer.getvalue()


def show_figures_inline() -> None:
    """In a Jupyter kernel, let every matplotlib ``Figure`` (the one :func:`plot` returns
    included) display as a PNG when it is a cell's value. Done on import; a formatter that is
    already registered (matplotlib's inline backend) is kept."""
    if not in_notebook():
        return
    formatter = sys.modules["IPython"].get_ipython().display_formatter.formatters["image/png"]
    try:
        formatter.lookup_by_type(Figure)
    except KeyError:
        formatter.for_type(Figure, _figure_png)


def _png(records: Sequence[dict], log_steps: bool) -> bytes:
    return _figure_png(plot(records, log_steps=log_steps))


class _Display:
    """One notebook output, shown on the first :meth:`show` and replaced in place afterwards."""

    def __init__(self) -> None:
        try:
            from IPython.display import Image, display
        except ImportError as error:
            raise ImportError("the notebook display needs IPython: pip install ipython") from error
        self._image, self._display = Image, display
        self.handle = None
        self.shown = 0  # drawings shown so far (the first displays, the others replace it)

    def show(self, png: bytes) -> None:
        image = self._image(data=png, format="png")
        if self.handle is None:
            self.handle = self._display(image, display_id=True)
        else:
            self.handle.update(image)
        self.shown += 1


class LivePlot:
    """Redraws ``log_dir/cockpit.png`` (and optionally ``cockpit_layerwise.png``) every ``every``
    new records.

    Call :meth:`update` with the growing record list after each record (e.g. from
    the monitor's record pipeline), or pass the object as a controller (:meth:`observe`), and
    call :meth:`close` at the end of training. Drawing happens on a background thread
    (``background=True``) with the Agg canvas, so training waits for nothing but a list copy;
    while a drawing is in progress, updates are skipped until it is done. Files are replaced
    atomically. A failing drawing never raises: the first failure is reported once, as a
    ``RuntimeWarning`` from the next :meth:`update` or :meth:`close`.

    ``listeners`` (exporters, :mod:`cockpit_optim.export`) get each drawing as PNG bytes through
    ``listener.image(png, step)``. In a Jupyter kernel (``inline=None`` detects it) each drawing
    also replaces one output of the cell that trains, from the training thread's next
    :meth:`update` (or :meth:`close`).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        every: int = 10,
        *,
        layerwise: bool = False,
        log_steps: bool = False,
        background: bool = True,
        listeners: Sequence[Any] = (),
        inline: bool | None = None,
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
        self.listeners = [li for li in listeners if hasattr(li, "image")]
        self._display = _Display() if (in_notebook() if inline is None else inline) else None
        self._drawn_png: bytes | None = None  # the newest drawing, not yet shown inline

    def update(self, history: Sequence[dict]) -> None:
        """Start a drawing of ``history`` if ``every`` records arrived since the last one."""
        self._report()
        self._show()
        if len(history) - self.drawn >= self.every and not self._busy():
            self._start(list(history))
            if not self.background:
                self._show()

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
        self._show()
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
            if self.listeners or self._display is not None:
                png = self.path.read_bytes()
                if self._display is not None:
                    self._drawn_png = png
                for listener in self.listeners:
                    listener.image(png, records[-1]["step"])
        except Exception as error:  # a failing plot must never stop training
            self._error = self._error or error

    def _show(self) -> None:
        """Show the newest finished drawing in the notebook (training thread only)."""
        png, self._drawn_png = self._drawn_png, None
        if png is None or self._display is None:
            return
        try:
            self._display.show(png)
        except Exception as error:
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


class LiveCockpit:
    """The cockpit view in a notebook, one output redrawn in place every ``every`` records.

    A writer (``MonitoredOptimizer(..., writers=[LiveCockpit(every=5)])``), a controller
    (``controllers=[LiveCockpit()]``), or fed by hand with :meth:`write`; no file is written.
    Drawing happens on the training thread (IPython's ``display(..., display_id=True)`` and
    ``DisplayHandle.update``). :meth:`close` draws the records not yet shown. A failing drawing
    never raises: it is reported once as a ``RuntimeWarning``.
    """

    def __init__(self, every: int = 10, *, log_steps: bool = False) -> None:
        if int(every) < 1:
            raise ValueError(f"every must be a positive number of records, got {every}")
        self.every, self.log_steps = int(every), log_steps
        self.history: list[dict] = []
        self.drawn = 0
        self._display = _Display()
        self._warned = False

    @property
    def handle(self) -> Any:
        """The IPython ``DisplayHandle`` of the output (``None`` before the first drawing)."""
        return self._display.handle

    @property
    def shown(self) -> int:
        """Number of drawings shown (all in the same output)."""
        return self._display.shown

    def write(self, record: Mapping[str, Any]) -> None:
        """Writer protocol: add a complete record; redraw when ``every`` new ones arrived."""
        self.history.append(dict(record))
        if len(self.history) - self.drawn >= self.every:
            self.show()

    def observe(self, record: Mapping[str, Any], optimizer: Any) -> list:
        """Controller protocol: like :meth:`write`; takes no action."""
        self.write(record)
        return []

    def show(self) -> None:
        """Draw every record so far into the output now."""
        if not self.history:
            return
        self.drawn = len(self.history)
        try:
            self._display.show(_png(self.history, self.log_steps))
        except Exception as error:  # a failing drawing must never stop training
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"live cockpit display failed (training goes on): {error!r}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def close(self) -> None:
        """Draw the records that arrived since the last drawing."""
        if len(self.history) > self.drawn:
            self.show()


show_figures_inline()
