"""The writer protocol shared by the exporters: ``write(record)``, ``image(png, step)``, ``close()``.

A writer never stops training: the first failure of a writer is reported once, as a
``RuntimeWarning`` naming the writer and the error, and later records are still attempted (a
full disk may clear up). Images arrive from the live plot's drawing thread; they are emitted
from the training thread with the next record (or at :meth:`~Writer.close`).
"""

from __future__ import annotations

import importlib
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any

import numpy as np

__all__ = ["Writer", "png_array", "require"]


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is not installed: pip install 'cockpit-optim[{extra}]'"
        ) from error


def png_array(png: bytes) -> np.ndarray:
    """An RGB image (height, width, 3; uint8) decoded from PNG bytes."""
    from PIL import Image

    with Image.open(BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


class Writer(ABC):
    """Base of the exporters: guards every call and queues images for the training thread."""

    def __init__(self) -> None:
        self._warned = False
        self._lock = threading.Lock()
        self._image: tuple[bytes, int] | None = None
        self.closed = False

    def write(self, record: Mapping[str, Any]) -> None:
        """Export one complete record (and a cockpit image drawn since the last record)."""
        self._guard(self._emit_image)
        self._guard(self._write, record)

    def image(self, png: bytes, step: int) -> None:
        """Queue the cockpit view (PNG bytes) drawn from the records up to ``step``."""
        with self._lock:
            self._image = (bytes(png), int(step))

    def close(self) -> None:
        """Emit a queued image and end the export (finishing a run this writer started)."""
        if self.closed:
            return
        self.closed = True
        self._guard(self._emit_image)
        self._guard(self._close)

    def _emit_image(self) -> None:
        with self._lock:
            queued, self._image = self._image, None
        if queued is not None:
            self._write_image(*queued)

    def _guard(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception as error:  # an exporter must never stop training
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"{type(self).__name__} failed (training goes on; further failures are not "
                    f"reported): {error!r}",
                    RuntimeWarning,
                    stacklevel=4,
                )

    @abstractmethod
    def _write(self, record: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def _write_image(self, png: bytes, step: int) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...
