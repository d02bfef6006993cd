"""Instruments: small objects with a declared statistics request and a pure ``compute``.

``resolve("economy" | "business" | "full" | iterable of names or instances)`` gives instances.
"""

from __future__ import annotations

from collections.abc import Iterable

from .alpha import Alpha, AlphaObservations, LineObservation, fit_alpha
from .base import Instrument, Unavailable
from .basic import Distance, GradNorm, Loss, Time, UpdateSize
from .curvature import HessMaxEV, HessTrace, TICDiag, TICTrace
from .gradient_tests import InnerTest, NormTest, OrthoTest
from .histograms import GradHist1d, GradHist2d
from .noise import CABS, EarlyStopping, MeanGSNR
from .noise_scale import GradientNoiseScale, noise_scale_average

REGISTRY: dict[str, type[Instrument]] = {
    cls.name: cls
    for cls in (
        Loss,
        GradNorm,
        Distance,
        UpdateSize,
        Alpha,
        NormTest,
        InnerTest,
        OrthoTest,
        GradHist1d,
        CABS,
        EarlyStopping,
        MeanGSNR,
        Time,
        HessTrace,
        TICDiag,
        TICTrace,
        HessMaxEV,
        GradHist2d,
        GradientNoiseScale,
    )
}

ECONOMY = (
    "Loss",
    "GradNorm",
    "Distance",
    "UpdateSize",
    "Alpha",
    "NormTest",
    "InnerTest",
    "OrthoTest",
    "GradHist1d",
    "CABS",
    "EarlyStopping",
    "MeanGSNR",
    "Time",
)
BUSINESS = (*ECONOMY, "HessTrace", "TICDiag", "TICTrace")
FULL = (*BUSINESS, "HessMaxEV", "GradHist2d")
CONFIGURATIONS = {"economy": ECONOMY, "business": BUSINESS, "full": FULL}


def resolve(instruments: str | Iterable[str | Instrument]) -> list[Instrument]:
    """Instances for a configuration name or an iterable of names / instances (no duplicates)."""
    if isinstance(instruments, str):
        if instruments not in CONFIGURATIONS:
            raise ValueError(
                f"unknown configuration {instruments!r}; choose one of {sorted(CONFIGURATIONS)} "
                "or pass a list of instrument names"
            )
        instruments = CONFIGURATIONS[instruments]
    resolved: list[Instrument] = []
    for item in instruments:
        if isinstance(item, str):
            if item not in REGISTRY:
                raise ValueError(
                    f"unknown instrument {item!r}; valid names: {', '.join(sorted(REGISTRY))}"
                )
            item = REGISTRY[item]()
        elif not isinstance(item, Instrument):
            raise TypeError(f"instruments must be names or Instrument objects, got {item!r}")
        if any(existing.name == item.name for existing in resolved):
            raise ValueError(f"instrument {item.name} is given twice")
        resolved.append(item)
    return resolved


__all__ = [
    "BUSINESS",
    "CABS",
    "CONFIGURATIONS",
    "ECONOMY",
    "FULL",
    "REGISTRY",
    "Alpha",
    "AlphaObservations",
    "Distance",
    "EarlyStopping",
    "GradHist1d",
    "GradHist2d",
    "GradNorm",
    "GradientNoiseScale",
    "HessMaxEV",
    "HessTrace",
    "InnerTest",
    "Instrument",
    "LineObservation",
    "Loss",
    "MeanGSNR",
    "NormTest",
    "OrthoTest",
    "TICDiag",
    "TICTrace",
    "Time",
    "Unavailable",
    "UpdateSize",
    "fit_alpha",
    "noise_scale_average",
    "resolve",
]
