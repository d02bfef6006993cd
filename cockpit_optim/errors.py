"""Errors and warnings that name the fix."""

from __future__ import annotations

import warnings

__all__ = [
    "CockpitError",
    "ReadingWarning",
    "UnsupportedLossError",
    "UnsupportedModelError",
    "warn_reading",
]


class CockpitError(RuntimeError):
    """Base class of the errors raised by cockpit-optim."""


class UnsupportedLossError(CockpitError, TypeError):
    """The loss function cannot give the individual losses the instruments need."""


class UnsupportedModelError(CockpitError, ValueError):
    """The model contains a layer for which individual gradients are not defined."""


class ReadingWarning(UserWarning):
    """A reading is ``nan`` at this step (batch size 1, zero gradient, non-finite input, ...)."""


def warn_reading(message: str) -> None:
    """Warn once per distinct message that a reading is undefined."""
    warnings.warn(message, ReadingWarning, stacklevel=3)
