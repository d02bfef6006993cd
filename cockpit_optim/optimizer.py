"""``MonitoredOptimizer``: wraps any ``torch.optim.Optimizer`` and takes the instruments' readings
inside ``step()`` at the steps a schedule selects."""

from __future__ import annotations

import atexit
import math
import os
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from .contract import Request
from .engine.combiner import combiner_for
from .engine.statistics import StatisticsEngine
from .errors import CockpitError, UnsupportedModelError
from .instruments import Instrument, resolve
from .log import LogWriter
from .losses import SampleLoss, check_loss
from .pipeline import OpenRecord, RecordPipeline
from .readings import StepReadings
from .schedules import Schedule, as_schedule
from .transfer import HostTransfer

__all__ = ["MonitoredOptimizer"]

#: Monitors not yet closed: completed at interpreter exit (weakly held).
_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_monitors() -> None:
    for monitor in list(_OPEN):
        try:
            monitor.close()
        except Exception as error:  # exit must not abort on a reading
            warnings.warn(f"closing a MonitoredOptimizer at exit failed: {error!r}", stacklevel=1)


class MonitoredOptimizer(Optimizer):
    """Wrap ``optimizer`` and record the readings of ``instruments`` at tracked steps.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over (some of) ``model``'s parameters.
        model: the module whose forward computes the predictions passed to ``loss_fn``.
        loss_fn: mean-reduced loss module; compute the loss by calling this very object.  For a
            model that computes its loss inside ``forward``, a :class:`~.losses.SampleLoss`
            saying where predictions and targets are (e.g. :class:`~.losses.CausalLMLoss`).
        instruments: ``"economy"``, ``"business"``, ``"full"`` or names / instrument objects.
        track: tracking interval (int) or schedule ``step -> bool`` (see :mod:`.schedules`).
        log_dir: folder for ``cockpit.jsonl``; ``None`` keeps records in memory only.
        controllers: objects with ``observe(record, optimizer) -> list[dict]`` acting on readings.
        seed: seed of the private generator (subsampling, random start vectors).
        plot_every: redraw ``log_dir/cockpit.png`` every this many records, in the background;
            call :meth:`close` at the end of training for the final picture.
        batchnorm_approximation: allow train-mode BatchNorm, whose individual gradients are not
            defined: the gradient of the batch loss w.r.t. each sample's activations stands in
            for that of its own loss, and the batch statistics count as constants.  Records then
            carry ``"approximate": True``.
        process_group: under ``torch.distributed`` (e.g. ``DistributedDataParallel``), the ranks
            whose batches form the global batch (default: all).  Every reading is then computed
            over the global batch on every rank; only rank 0 writes the log and plots.
        writers: exporters (:mod:`cockpit_optim.export`) given each complete record (rank 0 only)
            and the live plot's drawings; closed by :meth:`close`.

    Passive use (no controllers) leaves the parameter trajectory and the global RNG exactly as
    with the bare optimizer.  ``readings`` is the newest complete record, ``history`` all of them.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        model: nn.Module,
        loss_fn: nn.Module | SampleLoss,
        instruments: str | Iterable[str | Instrument] = "economy",
        track: int | Schedule = 1,
        log_dir: str | os.PathLike | None = None,
        controllers: Sequence[Any] = (),
        *,
        seed: int = 0,
        plot_every: int | None = None,
        batchnorm_approximation: bool = False,
        process_group: Any = None,
        writers: Sequence[Any] = (),
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
        if isinstance(optimizer, MonitoredOptimizer):
            raise TypeError("optimizer is already a MonitoredOptimizer")
        check_loss(loss_fn)
        self._init_optimizer_hooks()
        self._closed = False
        self.optimizer, self.model, self.loss_fn = optimizer, model, loss_fn
        self.controllers = list(controllers)
        self.instruments: list[Instrument] = resolve(instruments)
        for controller in self.controllers:  # instruments a controller reads are always tracked
            for name in getattr(controller, "instruments", ()):
                if name not in {i.name for i in self.instruments}:
                    self.instruments.extend(resolve([name]))
        self.schedule = as_schedule(track)
        # A controller with its own ``track`` schedule gets records at those steps as well.
        self._schedules = [self.schedule] + [
            as_schedule(c.track) for c in self.controllers if getattr(c, "track", None) is not None
        ]
        self._combiner = combiner_for(process_group)
        rank = self._combiner.rank
        self._generator = torch.Generator().manual_seed(seed)  # the same on every rank
        request = Request.union(instrument.request() for instrument in self.instruments)
        named = self._monitored_parameters(model, optimizer)
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.engine = StatisticsEngine(
            model,
            loss_fn,
            named,
            self._generator,
            request=request,
            sample_seed=seed + 7919 * (rank + 1),  # histogram draws: per rank, seeded per step
            combiner=self._combiner,
            batchnorm_approximation=batchnorm_approximation,
        )
        self._writer = LogWriter(log_dir) if log_dir is not None and rank == 0 else None
        self.writers = list(writers) if rank == 0 else []
        live_plot = None
        if plot_every is not None and rank == 0:
            if log_dir is None:
                raise ValueError("plot_every needs a log_dir to draw cockpit.png into")
            from .plotting import LivePlot

            live_plot = LivePlot(log_dir, every=plot_every, listeners=self.writers)
        self._records = RecordPipeline(self, self._combiner, self._writer, self.writers, live_plot)
        self._readings = StepReadings(
            self.instruments,
            self.engine,
            self._records,
            self._names,
            self._params,
            self._lr,
            lambda: bool(self.controllers),
            request,
        )
        self.should_stop = False
        self.stop_reason: str | None = None
        self._step = 0
        if self.engine.capture.replaced:
            warnings.warn(
                "another MonitoredOptimizer watched parameters of this model; it is detached "
                "(call close() on a monitor you replace, or use it as a context manager)",
                stacklevel=2,
            )
        _OPEN.add(self)
        self._arm()

    def _init_optimizer_hooks(self) -> None:
        """What ``Optimizer.__init__`` sets up besides the parameters (which stay the wrapped
        optimizer's): step and state-dict hooks (``step`` runs the step hooks itself, without
        the profiler's wrapper, whose cost untracked steps would pay)."""
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()

    def __getstate__(self):
        raise TypeError(
            "a MonitoredOptimizer holds hooks on its model and cannot be pickled or copied; "
            "save opt.state_dict() with torch.save and load it into a new MonitoredOptimizer"
        )

    def __deepcopy__(self, memo):
        self.__getstate__()

    def __enter__(self) -> MonitoredOptimizer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------- torch.optim facade
    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self):  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict:  # type: ignore[override]
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.engine.capture.gradients_reset()  # earlier backward passes no longer count
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        raise CockpitError(
            "add_param_group on a MonitoredOptimizer is not supported: the monitored parameter set "
            "is fixed at construction. Build the wrapped optimizer with all groups first."
        )

    def __repr__(self) -> str:
        names = ", ".join(i.name for i in self.instruments)
        return (
            f"MonitoredOptimizer({self.optimizer!r}, instruments=[{names}], track={self.schedule})"
        )

    def close(self) -> None:
        """End of training: finish a record still waiting for a later step (those readings are
        ``nan``), draw the final live plot (if any), close the writers and detach from the
        model.  Safe to call twice; a monitor left open is closed at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self._readings.close()
        self._records.close()
        self.remove_hooks()

    def remove_hooks(self) -> None:
        """Detach from the model and loss (e.g. before wrapping the same model again)."""
        self.engine.capture.remove()
        self.engine.capture.armed = False

    @property
    def history(self) -> list[dict]:
        """Every complete record, oldest first."""
        return self._records.history

    @history.setter
    def history(self, records: list[dict]) -> None:
        self._records.history = records

    @property
    def readings(self) -> dict:
        """The newest complete record (empty before the first one)."""
        return self.history[-1] if self.history else {}

    @property
    def step_count(self) -> int:
        """Number of ``step()`` calls so far (the next step's index)."""
        return self._step

    # --------------------------------------------------------------------- set-up
    @staticmethod
    def _monitored_parameters(model: nn.Module, optimizer: Optimizer) -> list[tuple[str, Tensor]]:
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [
            (name, p)
            for name, p in model.named_parameters()
            if id(p) in in_optimizer and p.requires_grad
        ]
        found = {id(p) for _, p in named}
        foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in found]
        if any(p.requires_grad for p in foreign):
            raise CockpitError(
                f"{len(foreign)} parameter(s) of the optimizer are not parameters of the model; "
                "pass the model whose parameters the optimizer updates."
            )
        if not named:
            raise CockpitError("the optimizer holds no trainable parameter of the model")
        return named

    def _lr(self) -> float:
        return float(self.param_groups[0].get("lr", math.nan))

    def _records_at(self, step: int) -> bool:
        return self._tracked(step) and self._readings.request.captures

    def _tracked(self, step: int) -> bool:
        return any(schedule(step) for schedule in self._schedules)

    def _arm(self) -> None:
        """Record the next step's forward/backward only if that step needs it."""
        self.engine.capture.clear()
        self.engine.capture.armed = self._records_at(self._step) or self._readings.open is not None

    # ----------------------------------------------------------------------- step
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """:meth:`_monitored_step` between the step hooks of ``torch.optim.Optimizer``."""
        args: tuple = () if closure is None else (closure,)
        kwargs: dict = {}
        for hook in chain(
            _global_optimizer_pre_hooks.values(), self._optimizer_step_pre_hooks.values()
        ):
            result = hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        loss = self._monitored_step(*args, **kwargs)
        for hook in chain(
            self._optimizer_step_post_hooks.values(), _global_optimizer_post_hooks.values()
        ):
            hook(self, args, kwargs)
        return loss

    def _monitored_step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Evaluate ``closure`` (if given), take the readings due at this step, update.

        Every backward pass since the last step (gradient accumulation) belongs to this step's
        batch.  A closure is evaluated once for the readings and that evaluation is handed to
        the wrapped optimizer as its first; later evaluations (``LBFGS``) are not recorded.
        Statistics stay on the device until one host read per step (after the update; before
        it when a completed record must reach controllers first), after which the instruments
        compute and records are finished.  The update is always taken, as the bare optimizer
        would take it, whatever a reading does."""
        if self._closed:
            raise CockpitError(
                "step() on a closed MonitoredOptimizer: nothing was changed. Keep training with "
                "the wrapped optimizer (opt.optimizer) or create a new MonitoredOptimizer."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t = self._step
        tracked = self._tracked(t)
        readings = self._readings
        if readings.theta0 is None and readings.request.distance:  # at the first step() call
            readings.theta0 = [p.detach().clone() for p in self._params]
        try:
            record, stats = readings.before_update(t, tracked)
        except UnsupportedModelError:  # a model the readings are not defined for: fix it first
            self.engine.release()
            self._arm()
            raise
        except Exception as error:  # a failing gauge never stops training
            readings.skip(t, error)
            record, stats, tracked = None, None, False
        before = None
        if tracked and readings.request.update:
            before = [p.detach().clone() for p in self._params]
        self._update(closure, loss)
        try:
            if tracked:
                readings.after_update(record, stats, before)
        except Exception as error:
            readings.skip(t, error, record)
        try:
            if readings.read_at != t:
                readings.read(t)
        except Exception as error:
            readings.skip(t, error)
        finally:
            self.engine.release()
            self._step += 1
            self._arm()
        return loss

    def _update(self, closure: Callable[[], Tensor] | None, loss: Tensor | None) -> None:
        """The wrapped optimizer's step; a closure's first evaluation is the one already made."""
        if closure is None:
            self.optimizer.step()
            return
        first = [True]

        def evaluated_once() -> Tensor:
            if first[0]:
                first[0] = False
                return loss
            with self.engine.capture.suspended():
                return closure()

        self.optimizer.step(evaluated_once)

    # ---------------------------------------------------------------- state dicts
    def state_dict(self) -> dict:
        """:meth:`_state` with the state-dict hooks of ``torch.optim.Optimizer`` applied."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state = self._state()
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state)
            state = state if result is None else result
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """:meth:`_load_state` with the load hooks of ``torch.optim.Optimizer`` applied."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            state_dict = state_dict if result is None else result
        self._load_state(state_dict)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _state(self) -> dict:
        """The wrapped optimizer's state plus the monitor's (step, theta_0, the record waiting for
        a later step, private generator, instruments' states, history, controllers)."""
        self.engine.transfer.read()  # values still on their way (a begun reading's start)
        pending, waiting = None, self._readings.open
        if waiting is not None:
            pending = {"record": waiting.values, "waiting": [i.name for i in waiting.waiting]}
        return {
            "optimizer": self.optimizer.state_dict(),
            "monitor": {
                "step": self._step,
                "should_stop": self.should_stop,
                "stop_reason": self.stop_reason,
                "theta0": self._readings.theta0,
                "pending": pending,
                "generator": self._generator.get_state(),
                "instruments": {i.name: i.state_dict() for i in self.instruments},
                "history": list(self.history),
                "controllers": [
                    c.state_dict() for c in self.controllers if hasattr(c, "state_dict")
                ],
            },
        }

    def _load_state(self, state_dict: dict) -> None:
        """Restore a state from :meth:`state_dict` (a plain optimizer state dict also works).
        With a ``log_dir``, records the restored run had not completed are dropped from the log so
        the continued run neither loses nor duplicates one."""
        if "monitor" not in state_dict:
            self.optimizer.load_state_dict(state_dict)
            return
        self.optimizer.load_state_dict(state_dict["optimizer"])
        monitor = state_dict["monitor"]
        self.engine.transfer = HostTransfer()  # values queued before the restore are dropped
        readings = self._readings
        readings.read_at = -1
        self._step = int(monitor["step"])
        self.should_stop = bool(monitor.get("should_stop", False))
        self.stop_reason = monitor.get("stop_reason")
        readings.theta0 = _like_params(monitor["theta0"], self._params)
        self._generator.set_state(monitor["generator"].cpu())
        states, pending = _instrument_states(monitor, self.instruments)
        for instrument in self.instruments:
            state = dict(states.get(instrument.name, {}))
            if isinstance(state.get("direction"), list):
                state["direction"] = _like_params(state["direction"], self._params)
            instrument.load_state_dict(state)
        readings.open = None
        if pending is not None and "waiting" in pending:
            by_name = {i.name: i for i in self.instruments}
            waiting = [by_name[n] for n in pending["waiting"] if n in by_name]
            readings.open = OpenRecord(pending["record"], waiting) if waiting else None
        self.history = list(monitor["history"])
        for controller, state in zip(
            [c for c in self.controllers if hasattr(c, "load_state_dict")], monitor["controllers"]
        ):
            controller.load_state_dict(state)
        if self._writer is not None:
            first_open = readings.open.step if readings.open is not None else self._step
            self._writer.drop_from(first_open)
        self._arm()


def _like_params(tensors: list[Tensor] | None, params: list[Tensor]) -> list[Tensor] | None:
    """Saved per-parameter tensors moved to their parameters' devices and dtypes."""
    if tensors is None:
        return None
    return [t.to(device=p.device, dtype=p.dtype) for t, p in zip(tensors, params)]


def _instrument_states(monitor: dict, instruments: list[Instrument]) -> tuple[dict, dict | None]:
    """The instruments' states and the waiting record of a saved monitor state.  States saved
    before instruments kept their own (warm start, draw size and the waiting reading in the
    monitor's keys) are handed to every instrument and to those whose readings complete later."""
    pending = monitor["pending"]
    if "instruments" in monitor:
        return monitor["instruments"], pending
    shared = {"vector": monitor.get("eigenvector"), "draws": monitor.get("histogram_draws")}
    shared = {key: value for key, value in shared.items() if value is not None}
    states = {i.name: dict(shared) for i in instruments}
    if pending is not None and "waiting" not in pending:
        later = [i for i in instruments if i.completes_later]
        for instrument in later:
            states[instrument.name].update(
                {key: pending[key] for key in ("size", "direction", "start")}
            )
        pending = {"record": pending["record"], "waiting": [i.name for i in later]}
    return states, pending
