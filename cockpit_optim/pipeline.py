"""Where records go once complete: controllers first (they may add ``actions``), then the history,
the log, the exporters and the live plot.  Under ``torch.distributed`` every rank follows rank 0's
decisions; only rank 0 writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .log import LogWriter

if TYPE_CHECKING:
    from .engine.combiner import LocalCombiner
    from .instruments import Instrument


@dataclass
class OpenRecord:
    """A record of step ``values["step"]`` being built: the instruments whose readings complete at
    a later step, whether the step's readings failed (then it is dropped, not finished) and the
    single readings that failed (they read ``nan``)."""

    values: dict
    waiting: list[Instrument] = field(default_factory=list)
    failed: bool = False
    errors: dict[str, str] = field(default_factory=dict)  # readings that failed, by instrument

    @property
    def step(self) -> int:
        return self.values["step"]


class RecordPipeline:
    """Finishes records: the ``monitor``'s controllers observe each one (and act on it), then it is
    kept in :attr:`history`, written by ``log`` and ``writers``, and drawn by ``live_plot``."""

    def __init__(
        self,
        monitor: Any,
        combiner: LocalCombiner,
        log: LogWriter | None,
        writers: list[Any],
        live_plot: Any = None,
    ) -> None:
        self.monitor, self.combiner = monitor, combiner
        self.log, self.writers, self.live_plot = log, writers, live_plot
        self.history: list[dict] = []

    def finish(self, record: OpenRecord) -> None:
        if record.failed:
            return
        values = record.values
        actions = []
        controllers = self.monitor.controllers
        for controller in controllers:
            actions.extend(controller.observe(values, self.monitor) or [])
        if self.combiner.world_size > 1 and controllers:
            self._follow_rank0()
        if actions:
            values["actions"] = actions
        self.history.append(values)
        if self.log is not None:
            self.log.write(values)
        for writer in self.writers:
            writer.write(values)
        if self.live_plot is not None:
            self.live_plot.update(self.history)

    def _follow_rank0(self) -> None:
        """Take rank 0's learning rates and stop decision (controllers decide identically from
        identical records; this makes it a guarantee)."""
        monitor = self.monitor
        decision = self.combiner.broadcast_object(
            ([g["lr"] for g in monitor.param_groups], monitor.should_stop, monitor.stop_reason)
        )
        for group, lr in zip(monitor.param_groups, decision[0]):
            group["lr"] = lr
        monitor.should_stop, monitor.stop_reason = decision[1], decision[2]

    def close(self) -> None:
        """The final live plot, and the exporters closed."""
        if self.live_plot is not None:
            self.live_plot.close(self.history)
        for writer in self.writers:
            writer.close()
