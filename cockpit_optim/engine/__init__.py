"""The statistics engine: hooks, per-layer rules, first-order statistics, the histogram sampler,
curvature and the combination over ranks.  It fills in :mod:`cockpit_optim.contract`."""

from .rules import LayerRule, MaterializedRule, SharedLinearRule, register_rule
from .statistics import StatisticsEngine

__all__ = ["LayerRule", "MaterializedRule", "SharedLinearRule", "StatisticsEngine", "register_rule"]
