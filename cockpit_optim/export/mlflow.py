"""``MLflowWriter``: records as MLflow metrics, action texts and images."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .base import Writer, png_array, require
from .records import PREFIX, action_text, scalars

__all__ = ["MLflowWriter"]

BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch call


class MLflowWriter(Writer):
    """Log records to an MLflow run through an ``MlflowClient`` (no global active run).

    Scalars follow the tag scheme of :mod:`.records` as metric keys at ``step = record["step"]``
    (timestamp from ``Time``), except that per-parameter readings are ``cockpit/R_params/<param>``
    (MLflow's file store keeps a metric as a file, which cannot also be the folder of
    ``cockpit/R/<param>``). MLflow has no histogram type: ``GradHist1d`` is exported as its
    out-of-range and bin counts only (the histogram itself is in the cockpit image). Controller
    actions accumulate in the text artifact ``cockpit/actions.md``, the cockpit view is the image
    ``cockpit/view``.

    Args:
        tracking_uri: where runs are stored (``None``: MLflow's default, ``MLFLOW_TRACKING_URI``).
            A local folder is ``"file:///path/mlruns"`` (recent MLflow versions need
            ``MLFLOW_ALLOW_FILE_STORE=true`` for it) or a ``sqlite:///`` database.
        experiment_name: experiment of a new run (created if missing; ``None``: the default one).
        run_id: log into this existing run, which stays open after :meth:`close`; otherwise a new
            run is created and ended (``FINISHED``) by :meth:`close`.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_id: str | None = None,
        *,
        run_name: str | None = None,
    ) -> None:
        super().__init__()
        tracking = require("mlflow.tracking", "mlflow")
        self._entities = require("mlflow.entities", "mlflow")
        self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
        self._owned = run_id is None
        if run_id is None:
            run_id = self.client.create_run(self._experiment(experiment_name), run_name=run_name)
            run_id = run_id.info.run_id
        self.run_id = run_id
        self._actions: list[str] = []

    def _experiment(self, name: str | None) -> str:
        if name is None:
            return "0"
        experiment = self.client.get_experiment_by_name(name)
        return experiment.experiment_id if experiment else self.client.create_experiment(name)

    def _write(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        stamp = int(1000 * float(record.get("Time", time.time())))
        metrics = [
            self._entities.Metric(tag, value, stamp, step)
            for tag, value in scalars(record, nest_params=False).items()
        ]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH])
        text = action_text(record)
        if text is not None:
            self._actions.append(text)
            self.client.log_text(self.run_id, "\n".join(self._actions), f"{PREFIX}/actions.md")

    def _write_image(self, png: bytes, step: int) -> None:
        self.client.log_image(self.run_id, png_array(png), key=f"{PREFIX}/view", step=step)

    def _close(self) -> None:
        if self._owned:
            self.client.set_terminated(self.run_id)
