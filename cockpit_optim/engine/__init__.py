"""The statistics engine: hooks, per-layer rules, histograms, curvature, distributed combination."""

from .request import HistogramRequest, Request, Statistics
from .statistics import StatisticsEngine

__all__ = ["HistogramRequest", "Request", "Statistics", "StatisticsEngine"]
