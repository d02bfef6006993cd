"""The statistics engine: hooks, per-layer rules, histograms and curvature."""

from .statistics import HistogramRequest, Request, Statistics, StatisticsEngine

__all__ = ["HistogramRequest", "Request", "Statistics", "StatisticsEngine"]
