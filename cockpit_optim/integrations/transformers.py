"""Hugging Face ``Trainer``: ``CockpitCallback`` monitors the Trainer's optimizer.

>>> callback = CockpitCallback(instruments="economy")
>>> Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
>>> callback.monitor.history
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as error:
    raise ImportError(
        "the Hugging Face integration needs transformers: pip install 'cockpit-optim[transformers]'"
    ) from error

from ..errors import CockpitError
from ..optimizer import MonitoredOptimizer
from .common import MonitorSettings

__all__ = ["CockpitCallback"]


def _report_writers(args: Any) -> list[Any]:
    """Exporters into the trackers of ``args.report_to`` (run after their callbacks started them):
    W&B's and MLflow's active runs, and a ``cockpit`` run next to the Trainer's TensorBoard runs."""
    from ..export import MLflowWriter, TensorBoardWriter, WandbWriter

    report_to = args.report_to
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    writers, missing = [], []
    for name in names:
        if name == "tensorboard":
            root = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(
                args.output_dir, "runs"
            )
            writers.append(TensorBoardWriter(os.path.join(root, "cockpit")))
        elif name == "wandb":
            import wandb

            if wandb.run is not None:
                writers.append(WandbWriter(run=wandb.run))
        elif name == "mlflow":
            import mlflow

            run = mlflow.active_run()
            if run is not None:
                writers.append(MLflowWriter(mlflow.get_tracking_uri(), run_id=run.info.run_id))
        elif name not in ("none", "all"):
            missing.append(name)
    if missing:
        warnings.warn(
            f"cockpit readings are not exported to {', '.join(missing)} (supported: tensorboard, "
            "wandb, mlflow); they are in callback.monitor.history and log_dir",
            RuntimeWarning,
            stacklevel=3,
        )
    return writers


class CockpitCallback(TrainerCallback):
    """Wrap the Trainer's optimizer in :class:`MonitoredOptimizer` at ``on_train_begin``.

    The monitor sits inside Accelerate's optimizer wrapper, so it sees what the Trainer does:
    ``gradient_accumulation_steps`` (all micro-batches of an update form its batch), padding
    (``labels == -100`` are not samples), ``bf16`` autocast and gradient clipping
    (``max_grad_norm``; ``GradNorm`` is the norm after clipping). ``loss_fn=None`` uses
    :class:`cockpit_optim.losses.CausalLMLoss`, the shifted token cross-entropy that causal
    language models compute inside ``forward``; pass another per-sample loss description for
    other heads. An optimizer given as ``Trainer(optimizers=(MonitoredOptimizer(...), None))``
    is adopted as it is.

    Readings go to the trackers in ``args.report_to`` (``tensorboard``: the run ``cockpit``
    under the Trainer's TensorBoard folder; ``wandb`` and ``mlflow``: the Trainer's active run)
    under ``cockpit/<Reading>`` at the record's step. A controller that stops sets
    ``control.should_training_stop``. The monitor is closed at the end of training.

    Args:
        instruments, track, controllers, log_dir: as for :class:`MonitoredOptimizer`.
        loss_fn: per-sample loss description (see above).
        log_to_report_to: export readings to the ``report_to`` trackers.
        **options: further :class:`MonitoredOptimizer` keywords (``plot_every``, ``writers``, ...).
    """

    def __init__(
        self,
        instruments: str | Iterable[Any] = "economy",
        track: Any = 1,
        controllers: Sequence[Any] = (),
        log_dir: str | os.PathLike | None = None,
        loss_fn: Any = None,
        *,
        log_to_report_to: bool = True,
        **options: Any,
    ) -> None:
        self.settings = MonitorSettings(instruments, track, controllers, log_dir, options)
        self.loss_fn, self.log_to_report_to = loss_fn, log_to_report_to
        self._monitor: MonitoredOptimizer | None = None

    @property
    def monitor(self) -> MonitoredOptimizer:
        """The monitor of the Trainer's optimizer; available from the start of training."""
        if self._monitor is None:
            raise CockpitError("the monitor exists once Trainer.train has started")
        return self._monitor

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is None or model is None:
            raise CockpitError("CockpitCallback needs the Trainer's model and optimizer")
        inner = getattr(optimizer, "optimizer", optimizer)  # inside Accelerate's wrapper
        loss_fn = self.loss_fn
        if loss_fn is None and not isinstance(inner, MonitoredOptimizer):
            from ..losses import CausalLMLoss

            loss_fn = CausalLMLoss(ignore_index=-100)
        writers = []
        if self.log_to_report_to and state.is_world_process_zero:
            writers = _report_writers(args)
        monitor = self.settings.wrap(inner, model, loss_fn, writers)
        if monitor is not inner:
            _replace_inner(optimizer, monitor)
        self._monitor = monitor

    def on_step_end(self, args, state, control, **kwargs):
        if self._monitor is not None and self._monitor.should_stop:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._monitor is not None:
            self._monitor.close()


def _replace_inner(wrapper: Any, monitor: MonitoredOptimizer) -> None:
    """Put ``monitor`` where Accelerate's optimizer wrapper keeps the torch optimizer (and the
    step methods it patches for loss scaling)."""
    if wrapper is monitor.optimizer:
        raise CockpitError(
            "the Trainer's optimizer is not wrapped by Accelerate; pass "
            "Trainer(optimizers=(MonitoredOptimizer(...), None)) instead"
        )
    wrapper.optimizer = monitor
    if hasattr(wrapper, "_optimizer_original_step_method"):
        from accelerate.optimizer import patch_optimizer_step

        wrapper._optimizer_original_step_method = monitor.step
        wrapper._optimizer_patched_step_method = patch_optimizer_step(wrapper, monitor.step)
