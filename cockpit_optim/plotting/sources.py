"""Where records come from (an optimizer, a list, a log) and how panels read them."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..log import load_log

__all__ = ["Source", "as_number", "latest", "records_from", "series"]

Source = Any  # a MonitoredOptimizer (anything with ``.history``), a list of records, or a log path


def records_from(source: Source) -> list[dict]:
    """The records of ``source``: an object with ``.history``, a sequence of dicts or a log path.

    Raises ``TypeError`` for anything else and ``ValueError`` when an entry is not a record.
    """
    if isinstance(source, str | os.PathLike):
        records = load_log(source)
    elif hasattr(source, "history"):
        records = list(source.history)
    elif isinstance(source, Sequence):
        records = list(source)
    else:
        raise TypeError(
            "source must be a MonitoredOptimizer, a list of records or the path of a log, "
            f"got {type(source).__name__}"
        )
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"record {index} is not a record (a dict with an integer 'step')")
    return records


def as_number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (missing, nan, inf, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and finite values of the scalar reading ``key`` (records without it are skipped)."""
    pairs = [(r["step"], v) for r in records if (v := as_number(r.get(key))) is not None]
    if not pairs:
        return np.empty(0, dtype=int), np.empty(0)
    steps, values = zip(*pairs)
    return np.asarray(steps), np.asarray(values, dtype=float)


def latest(records: Sequence[dict], key: str) -> dict | None:
    """The newest record that carries ``key`` (``None`` when none does)."""
    return next((r for r in reversed(records) if key in r), None)
