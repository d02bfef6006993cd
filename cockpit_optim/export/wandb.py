"""``WandbWriter``: records as Weights & Biases metrics, histograms, texts and images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Writer, png_array, require
from .records import PREFIX, action_text, histograms, scalars

__all__ = ["WandbWriter"]

STEP = f"{PREFIX}/step"


class WandbWriter(Writer):
    """Log records to a W&B run, against their own step axis ``cockpit/step``.

    Every ``cockpit/*`` key is defined with ``step_metric="cockpit/step"`` (the record's step),
    so the export neither needs nor disturbs the run's own step counter (a Lightning or Trainer
    logger writing to the same run keeps its steps). Scalars follow the tag scheme of
    :mod:`.records`; ``GradHist1d`` (and each layer) becomes a ``wandb.Histogram`` of the exact
    counts over the record's edges (underflow and overflow counted in the outermost bins; W&B
    takes at most 512 bins); controller actions are the text ``cockpit/actions`` and the cockpit
    view the image ``cockpit/view``.

    Args:
        run: an existing run (e.g. ``wandb.run``); it stays open after :meth:`close`.
        **init_kwargs: passed to ``wandb.init`` when ``run`` is ``None``; that run is finished by
            :meth:`close`. Offline use: ``mode="offline"`` (or ``WANDB_MODE=offline``).
    """

    def __init__(self, run: Any = None, **init_kwargs: Any) -> None:
        super().__init__()
        self._wandb = require("wandb", "wandb")
        if run is not None and init_kwargs:
            raise ValueError("pass either run or wandb.init arguments, not both")
        self._owned = run is None
        self.run = self._wandb.init(**init_kwargs) if run is None else run
        self.run.define_metric(STEP)
        self.run.define_metric(f"{PREFIX}/*", step_metric=STEP)

    def _write(self, record: Mapping[str, Any]) -> None:
        data: dict[str, Any] = {STEP: int(record["step"]), **scalars(record)}
        for tag, hist in histograms(record).items():
            data[tag] = self._wandb.Histogram(np_histogram=(hist.bucket_counts, hist.edges))
        text = action_text(record)
        if text is not None:
            data[f"{PREFIX}/actions"] = text
        self.run.log(data)

    def _write_image(self, png: bytes, step: int) -> None:
        self.run.log({STEP: step, f"{PREFIX}/view": self._wandb.Image(png_array(png))})

    def _close(self) -> None:
        if self._owned:
            self.run.finish()
