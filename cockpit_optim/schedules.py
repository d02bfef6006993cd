"""Tracking schedules: callables ``step -> bool`` that say at which steps instruments are computed.

A schedule is any callable taking the step counter (0-based, counts ``step()`` calls) and returning
whether that step is tracked.  The two built-ins are small objects with an O(1) membership test.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Schedule = Callable[[int], bool]

__all__ = ["Schedule", "as_schedule", "linear", "logarithmic"]


class linear:
    """Track every ``interval``-th step, starting at ``offset``: steps ``offset + k * interval``."""

    def __init__(self, interval: int, offset: int = 0) -> None:
        if int(interval) < 1:
            raise ValueError(f"linear schedule needs interval >= 1, got {interval}")
        if int(offset) < 0:
            raise ValueError(f"linear schedule needs offset >= 0, got {offset}")
        self.interval = int(interval)
        self.offset = int(offset)

    def __call__(self, step: int) -> bool:
        return step >= self.offset and (step - self.offset) % self.interval == 0

    def __repr__(self) -> str:
        return f"linear(interval={self.interval}, offset={self.offset})"


class logarithmic:
    """Track about ``points`` steps spaced evenly in ``log(step + 1)`` between ``start`` and ``end``.

    The paper (Section 5) recommends log-spaced tracking: early training changes fastest.  Steps are
    rounded to integers and de-duplicated, so fewer than ``points`` steps may result for short ranges;
    ``start`` and ``end`` are always tracked.  Membership is a set lookup.
    """

    def __init__(self, end: int, points: int = 300, start: int = 0) -> None:
        if int(start) < 0 or int(end) < int(start):
            raise ValueError(f"logarithmic schedule needs 0 <= start <= end, got {start}, {end}")
        if int(points) < 1:
            raise ValueError(f"logarithmic schedule needs points >= 1, got {points}")
        self.start, self.end, self.points = int(start), int(end), int(points)
        grid = np.logspace(math.log10(self.start + 1), math.log10(self.end + 1), self.points) - 1
        steps = {round(s) for s in grid} | {self.start, self.end}
        self.steps: frozenset[int] = frozenset(s for s in steps if self.start <= s <= self.end)

    def __call__(self, step: int) -> bool:
        return step in self.steps

    def __repr__(self) -> str:
        return f"logarithmic(end={self.end}, points={self.points}, start={self.start})"


def as_schedule(track: int | Schedule) -> Schedule:
    """Turn the ``track`` argument of :class:`MonitoredOptimizer` into a schedule."""
    if isinstance(track, bool):
        raise TypeError("track must be an int interval or a callable schedule, not a bool")
    if isinstance(track, int):
        return linear(track)
    if callable(track):
        return track
    raise TypeError(
        f"track must be an int interval or a callable step -> bool, got {type(track).__name__}"
    )
