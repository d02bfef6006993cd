"""Exporters: cockpit records in TensorBoard, Weights & Biases and MLflow.

Pass writers to the monitor, ``MonitoredOptimizer(..., writers=[TensorBoardWriter("tb")])``, or
replay a finished log, ``export("run", [TensorBoardWriter("tb")])`` /
``cockpit-optim export run --tensorboard tb``. The frameworks are imported only when a writer is
created (extras ``[tensorboard]``, ``[wandb]``, ``[mlflow]``). The tag scheme is described in
:mod:`.records`.
"""

from __future__ import annotations

from .base import Writer
from .convert import export
from .mlflow import MLflowWriter
from .tensorboard import TensorBoardWriter
from .wandb import WandbWriter

__all__ = ["MLflowWriter", "TensorBoardWriter", "WandbWriter", "Writer", "export"]
