"""PyTorch Lightning: ``CockpitCallback`` monitors the optimizer(s) of ``configure_optimizers``.

>>> trainer = lightning.Trainer(callbacks=[CockpitCallback(instruments="economy")], ...)
>>> trainer.fit(module, datamodule)          # module.loss_fn is the loss training_step calls
>>> callback.monitor.history                 # the records, also in the trainer's loggers
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone distribution
    try:
        import pytorch_lightning as pl
    except ImportError as error:
        raise ImportError(
            "the Lightning integration needs Lightning: pip install 'cockpit-optim[lightning]'"
        ) from error

from ..errors import CockpitError
from ..export.records import scalars
from ..optimizer import MonitoredOptimizer
from .common import MonitorSettings, batch_size_actions

__all__ = ["CockpitCallback"]


class _LoggerWriter:
    """Scalars of each record through a Lightning logger's ``log_metrics`` (at the record's step)."""

    def __init__(self, logger: Any, nest_params: bool) -> None:
        self.logger, self.nest_params = logger, nest_params

    def write(self, record: dict) -> None:
        self.logger.log_metrics(scalars(record, nest_params=self.nest_params), record["step"])

    def close(self) -> None:
        """Lightning finalizes its loggers itself."""


def _writer_for(logger: Any) -> Any:
    """The richest exporter for a Lightning logger: TensorBoard and W&B loggers get histograms,
    texts and images in their own run; any other logger gets the scalars."""
    from ..export import TensorBoardWriter, WandbWriter

    kind = type(logger).__name__
    if kind == "TensorBoardLogger":
        return TensorBoardWriter(writer=logger.experiment)
    if kind == "WandbLogger":
        return WandbWriter(run=logger.experiment)
    # MLflow's file store keeps a metric as a file: no metric may also be a folder.
    return _LoggerWriter(logger, nest_params=kind != "MLFlowLogger")


class CockpitCallback(pl.Callback):
    """Wrap the optimizer(s) of ``configure_optimizers`` in :class:`MonitoredOptimizer`.

    Works with automatic optimization (the closure Lightning passes to ``optimizer.step`` is run
    by the monitor), ``accumulate_grad_batches`` (all micro-batches of a step form its batch),
    mixed precision (``precision="bf16-mixed"``) and ``gradient_clip_val`` (``GradNorm`` is the
    norm after clipping, what the optimizer uses). A ``MonitoredOptimizer`` returned by
    ``configure_optimizers`` is adopted as it is.

    Readings go to every logger of the trainer at the record's step (``cockpit/<Reading>``;
    TensorBoard and W&B loggers also get the histograms, controller actions and, with
    ``plot_every``, the cockpit image). A controller that stops (``should_stop``) stops the
    trainer; batch-size actions drive an ``AdaptiveBatchSampler`` that the train dataloader uses
    (``DataLoader(dataset, batch_sampler=sampler)``) and are copied to a ``batch_size`` attribute
    of the datamodule (used when Lightning reloads the dataloaders). The monitors are closed at
    the end of training, so every record is complete.

    Args:
        instruments, track, controllers, log_dir: as for :class:`MonitoredOptimizer` (with
            several optimizers, ``log_dir/optimizer_<i>`` and controllers on the first only).
        loss_fn: the loss object that ``training_step`` calls; ``None``: the LightningModule's
            ``loss_fn`` attribute.
        log_to_loggers: export readings to the trainer's loggers.
        **options: further :class:`MonitoredOptimizer` keywords (``plot_every``, ``writers``,
            ``seed``, ...).
    """

    def __init__(
        self,
        instruments: str | Iterable[Any] = "economy",
        track: Any = 1,
        controllers: Sequence[Any] = (),
        log_dir: str | os.PathLike | None = None,
        loss_fn: Any = None,
        *,
        log_to_loggers: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        self.settings = MonitorSettings(instruments, track, controllers, log_dir, options)
        self.loss_fn, self.log_to_loggers = loss_fn, log_to_loggers
        self.monitors: list[MonitoredOptimizer] = []
        self._seen = 0  # records of the first monitor already inspected for actions

    @property
    def monitor(self) -> MonitoredOptimizer:
        """The monitor of the (first) optimizer; available from the start of fitting."""
        if not self.monitors:
            raise CockpitError("the monitor exists once trainer.fit has started")
        return self.monitors[0]

    def _loss_fn(self, pl_module: Any) -> Any:
        if self.loss_fn is not None:
            return self.loss_fn
        loss_fn = getattr(pl_module, "loss_fn", None)
        if loss_fn is None:
            raise CockpitError(
                f"{type(pl_module).__name__} has no loss_fn attribute: pass the loss object that "
                "training_step calls as CockpitCallback(loss_fn=...) or set self.loss_fn in the "
                "LightningModule"
            )
        return loss_fn

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            warnings.warn(
                "manual optimization: call the monitored optimizers (self.optimizers()) as usual; "
                "the readings assume each step() follows the backward passes of its batch",
                RuntimeWarning,
                stacklevel=2,
            )
        writers = []
        if self.log_to_loggers and trainer.is_global_zero:
            writers = [_writer_for(logger) for logger in trainer.loggers]
        optimizers = list(trainer.optimizers)
        loss_fn = None
        if not all(isinstance(o, MonitoredOptimizer) for o in optimizers):
            loss_fn = self._loss_fn(pl_module)
        self.monitors = [
            self.settings.wrap(o, pl_module, loss_fn, writers, i, len(optimizers))
            for i, o in enumerate(optimizers)
        ]
        trainer.optimizers = list(self.monitors)
        self._seen = len(self.monitors[0].history) if self.monitors else 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        samplers = {id(c.sampler) for c in self.settings.controllers if hasattr(c, "sampler")}
        loader = trainer.train_dataloader
        used = getattr(loader, "batch_sampler", None)
        if samplers and id(used) not in samplers:
            warnings.warn(
                "a batch-size controller drives a sampler that the train dataloader does not use; "
                "build it as DataLoader(dataset, batch_sampler=sampler) for its actions to apply",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if not self.monitors:
            return
        monitor = self.monitors[0]
        new, self._seen = monitor.history[self._seen :], len(monitor.history)
        sizes = batch_size_actions(new)
        datamodule = getattr(trainer, "datamodule", None)
        if sizes and datamodule is not None and hasattr(datamodule, "batch_size"):
            datamodule.batch_size = sizes[-1]
        if any(m.should_stop for m in self.monitors):
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        for monitor in self.monitors:
            monitor.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """An interrupted run keeps its records: the monitors (and their writers) are closed."""
        self.on_train_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self._seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._seen = int(state_dict.get("seen", 0))
