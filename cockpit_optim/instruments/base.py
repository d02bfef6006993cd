"""The instrument protocol: a declared :class:`~cockpit_optim.contract.Request` and a pure function
of :class:`~cockpit_optim.contract.Statistics`, with optional later phases and state."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

from ..contract import Request, Statistics
from ..errors import warn_reading

NAN = float("nan")

#: Panel families of the cockpit view, left to right.
PANELS = ("step size", "gradients", "curvature")
#: ``name -> panel family`` of every instrument class that declares one (read by the plots).
DECLARED_PANELS: dict[str, str] = {}


class Unavailable(Exception):
    """Raised inside ``compute`` when a reading is undefined at this step; the message says why."""


class Instrument:
    """Base class.  Subclasses set ``name`` (the record key) and ``needs`` (a :class:`Request`) and
    implement :meth:`compute`, a pure function of the step's statistics.

    A step makes one device-to-host read: :meth:`prepare` runs before it and queues, on the device,
    the scalars :meth:`compute` uses (shared reductions listed in ``reads``, or its own through
    ``stats.reduce(name, fn, inputs)``); :meth:`compute` runs after it and reads host values
    (``stats.sq_norms_sum``, ``stats.reduced(name)``).  Reading a tensor inside ``compute``
    works but costs a synchronization on a GPU.

    Phases: an ``after_update`` instrument computes from the statistics after the optimizer's
    update (``update`` and the ``update_size`` reduction, the step's ``losses`` and ``project``).  An instrument
    whose reading ``completes_later`` starts in :meth:`begin` after the update, names what the
    next step must collect in :meth:`pending`, queues in :meth:`complete` at that step and gives
    its reading from :meth:`conclude` after that step's read; the record waits for it.

    ``panel`` (one of :data:`PANELS`) draws the reading as a time series in that column of the
    cockpit view; options and warm starts live on the instance (:meth:`state_dict`).
    """

    name: ClassVar[str]
    needs: ClassVar[Request] = Request()
    #: Shared reductions (:data:`~cockpit_optim.contract.REDUCTIONS`) ``compute`` reads.
    reads: ClassVar[tuple[str, ...]] = ()
    after_update: ClassVar[bool] = False
    completes_later: ClassVar[bool] = False
    panel: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        panel = getattr(cls, "panel", None)
        if panel is not None and panel not in PANELS:
            raise ValueError(f"{cls.__name__}.panel must be one of {PANELS}, got {panel!r}")
        name = cls.__dict__.get("name")
        if name is not None:
            if panel is None:
                DECLARED_PANELS.pop(name, None)
            else:
                DECLARED_PANELS[name] = panel

    def request(self) -> Request:
        """What this step needs (default ``needs``; options and warm starts may add to it)."""
        return self.needs

    def prepare(self, stats: Statistics) -> None:
        """Queue on the device what :meth:`compute` will read, before the step's one host read
        (default: the reductions named in ``reads``)."""
        for name in self.reads:
            stats.reduce(name)

    def compute(self, stats: Statistics) -> Any:
        raise NotImplementedError

    def extras(self, stats: Statistics) -> dict:
        """Further record entries (``<name>_...``) besides the reading."""
        return {}

    def read(self, stats: Statistics) -> Any:
        """``compute`` with the undefined cases turned into ``nan`` and one warning."""
        return self._guarded(lambda: self.compute(stats))

    # ---------------------------------------------------- readings completed at the next step
    def begin(self, stats: Statistics) -> None:
        """After the update of a tracked step (``completes_later``): start the reading."""

    def pending(self) -> Request | None:
        """What the next step must collect to complete a begun reading (``None``: nothing)."""
        return None

    def complete(self, stats: Statistics) -> None:
        """At the next step, before its read: queue what :meth:`conclude` needs."""

    def conclude(self) -> Any:
        """After the completing step's read: the reading (raise :class:`Unavailable` if undefined)."""
        raise NotImplementedError

    def read_pending(self) -> Any:
        """:meth:`conclude` with the undefined cases turned into ``nan`` and one warning."""
        return self._guarded(self.conclude)

    def abandon(self) -> None:
        """Drop a begun reading (training ended, or the step's readings failed)."""

    # ---------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly (warm starts, adapted budgets)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def _guarded(self, compute: Callable[[], Any]) -> Any:
        try:
            value = compute()
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
