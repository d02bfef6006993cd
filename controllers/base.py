"""The controller protocol shared by every closed loop in :mod:`cockpit_optim.controllers`.

A controller is a small object that reads complete records and may act on the training run:

* ``instruments``: names of the readings it needs; :class:`~cockpit_optim.MonitoredOptimizer`
  tracks them automatically.
* ``track`` (optional): an interval or schedule of the steps at which the controller needs
  records; the optimizer then tracks at those steps too (in addition to its own schedule).
* ``observe(record, optimizer) -> list[Action]``: called once per complete record, in the order the
  controllers were given.  ``record`` holds ``"step"``, ``"lr"``, ``"batch_size"`` and one key per
  instrument (``nan`` when undefined).  The record of step ``t`` is complete during step ``t + 1``
  when ``Alpha`` is tracked, still *before* the update of step ``t + 1``, so a change made here
  applies from that update on.  The returned actions are stored under ``record["actions"]``.
* ``state_dict()`` / ``load_state_dict(state)``: the controller's own state (plain Python values),
  saved and restored by the optimizer's ``state_dict`` so that a resumed run decides identically.

A controller knows nothing about how a reading was computed; it only uses the record and the
optimizer's public surface (``param_groups``, ``should_stop``, ``stop_reason``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol, TypedDict

__all__ = ["Action", "Controller", "Steerable", "reading"]

#: One action as stored in ``record["actions"]`` (a plain dict, so it goes into the JSON log):
#: ``controller`` (class name), ``step`` (the record's step), ``what`` (``"batch_size"``, ``"lr"``
#: or ``"stop"``), ``from`` / ``to`` (old and new value) and ``why`` (the reading, its value and the
#: threshold or rule that triggered the action).
Action = TypedDict(
    "Action",
    {"controller": str, "step": int, "what": str, "from": Any, "to": Any, "why": str},
)


class Steerable(Protocol):
    """What a controller may touch on the optimizer (a :class:`~cockpit_optim.MonitoredOptimizer`)."""

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...

    should_stop: bool
    stop_reason: str | None


def reading(record: Mapping[str, Any], name: str) -> float:
    """The scalar reading ``name`` of ``record`` as a float; ``nan`` when missing or not a number."""
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


class Controller(ABC):
    """Base class of the controllers: declares ``instruments`` and builds :data:`Action` dicts."""

    #: Names of the readings this controller needs (tracked automatically).
    instruments: tuple[str, ...] = ()
    #: Steps at which it needs records (an interval or ``step -> bool``); ``None``: the
    #: optimizer's own schedule.
    track: Any = None

    @abstractmethod
    def observe(self, record: Mapping[str, Any], optimizer: Steerable) -> list[Action]:
        """Read one complete record, act on ``optimizer`` (or a sampler) and report the actions."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The controller's state as plain Python values."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""

    def action(self, record: Mapping[str, Any], what: str, old: Any, new: Any, why: str) -> Action:
        """An :data:`Action` of this controller for the record's step."""
        return {
            "controller": type(self).__name__,
            "step": int(record.get("step", -1)),
            "what": what,
            "from": old,
            "to": new,
            "why": why,
        }
