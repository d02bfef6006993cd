"""The instrument protocol: a declared :class:`Request` and a pure function of :class:`Statistics`."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from ..engine.request import Request, Statistics
from ..errors import warn_reading

NAN = float("nan")


class Unavailable(Exception):
    """Raised inside ``compute`` when a reading is undefined at this step; the message says why."""


class Instrument:
    """Base class.  Subclasses set ``name`` (the record key) and ``needs`` (a :class:`Request`) and
    implement :meth:`compute`, a pure function of the step's statistics.

    A step makes one device-to-host read: :meth:`prepare` runs before it and queues, on the device,
    the scalars :meth:`compute` uses (shared reductions listed in ``reads``, or its own through
    ``stats.reduce(name, fn, inputs)``); :meth:`compute` runs after it and reads host values
    (``stats.sq_norms_sum``, ``stats.reduced(name)``).  Reading a tensor inside ``compute``
    works but costs a synchronization on a GPU."""

    name: ClassVar[str]
    needs: ClassVar[Request] = Request()
    #: Completed after the optimizer's update (UpdateSize) or at the next step (Alpha); such an
    #: instrument sees ``batch_size``, ``lr`` and ``update_size`` only.
    after_update: ClassVar[bool] = False
    #: Shared reductions (:data:`~cockpit_optim.engine.request.REDUCTIONS`) ``compute`` reads.
    reads: ClassVar[tuple[str, ...]] = ()

    def request(self) -> Request:
        return self.needs

    def prepare(self, stats: Statistics) -> None:
        """Queue on the device what :meth:`compute` will read, before the step's one host read
        (default: the reductions named in ``reads``)."""
        for name in self.reads:
            stats.reduce(name)

    def compute(self, stats: Statistics) -> Any:
        raise NotImplementedError

    def read(self, stats: Statistics) -> Any:
        """``compute`` with the undefined cases turned into ``nan`` and one warning."""
        try:
            value = self.compute(stats)
        except Unavailable as reason:
            warn_reading(f"{self.name} is nan at this step: {reason}")
            return NAN
        if isinstance(value, float) and not math.isfinite(value):
            warn_reading(f"{self.name} is {value} at this step: non-finite loss or gradients")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def require(stats: Statistics, *fields: str) -> None:
    """Raise :class:`Unavailable` unless every statistic in ``fields`` was computed."""
    for name in fields:
        if getattr(stats, name) is None:
            reason = stats.unavailable.get(name, f"statistic '{name}' was not computed")
            raise Unavailable(reason)


def require_batch(stats: Statistics, minimum: int = 2) -> None:
    if stats.batch_size < minimum:
        raise Unavailable(f"batch size {stats.batch_size} (needs at least {minimum} samples)")


def ratio(numerator: float, denominator: float, what: str) -> float:
    if denominator == 0.0:
        raise Unavailable(f"{what} is zero")
    return numerator / denominator
