"""``TensorBoardWriter``: records as TensorBoard scalars, exact histograms, texts and images."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .base import Writer, png_array, require
from .records import PREFIX, action_text, histograms, scalars

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter(Writer):
    """Write records to TensorBoard event files in ``log_dir``.

    Each record goes to ``global_step = record["step"]`` with ``walltime = record["Time"]``:
    every scalar under the tag scheme of :mod:`.records`; ``GradHist1d`` (and each layer) as a
    histogram built from the record's exact counts and edges (``add_histogram_raw``, never
    re-binned). TensorBoard histograms have no out-of-range bins, so the underflow is counted in
    the first bucket and the overflow in the last (the exact numbers are the scalars
    ``cockpit/GradHist1d/underflow`` and ``.../overflow``); TensorBoard labels bucket ``i`` by its
    right edge ``edges[i+1]``. ``sum`` / ``sum_squares`` of the histogram are bin-midpoint
    estimates (TensorBoard's views use the counts only). Controller actions become the text
    ``cockpit/actions``, the cockpit view the image ``cockpit/view``.

    Args:
        log_dir: folder of the event files (a ``SummaryWriter``'s ``log_dir``).
        writer: an existing ``torch.utils.tensorboard.SummaryWriter`` to write into instead
            (left open by :meth:`close`, only flushed).
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, writer: Any = None) -> None:
        super().__init__()
        if (log_dir is None) == (writer is None):
            raise ValueError("pass exactly one of log_dir and writer")
        if writer is None:
            require("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(log_dir))
        self.writer, self._owned = writer, log_dir is not None
        self.log_dir = writer.log_dir

    def _write(self, record: Mapping[str, Any]) -> None:
        step, walltime = int(record["step"]), record.get("Time")
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step, walltime=walltime)
        for tag, hist in histograms(record).items():
            total, squares = hist.moments()
            self.writer.add_histogram_raw(
                tag,
                min=hist.edges[0],
                max=hist.edges[-1],
                num=hist.num,
                sum=total,
                sum_squares=squares,
                bucket_limits=hist.edges[1:],
                bucket_counts=hist.bucket_counts,
                global_step=step,
                walltime=walltime,
            )
        text = action_text(record)
        if text is not None:
            self.writer.add_text(f"{PREFIX}/actions", text, step, walltime=walltime)

    def _write_image(self, png: bytes, step: int) -> None:
        self.writer.add_image(f"{PREFIX}/view", png_array(png), step, dataformats="HWC")

    def _close(self) -> None:
        self.writer.flush()
        if self._owned:
            self.writer.close()
