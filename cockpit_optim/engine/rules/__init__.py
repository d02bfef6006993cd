"""Per-layer rules: the statistics of individual gradients from one layer's recorded inputs and
output gradients, registered by module type (:func:`register_rule`).

``base`` holds the rule interface and the generic containers, ``linear`` / ``conv`` / ``norm`` the
layer families, ``functional`` the ``torch.func`` rule for any other module, and ``build`` the
per-step assembly of the rules from a recorded step.
"""

from . import conv, linear, norm  # noqa: F401  (registers the built-in rules)
from .base import BLOCK_ELEMENTS, LayerRule, MaterializedRule, Reduction, SubsetRule, ZeroRule
from .build import Rows, build_rules
from .conv import unfold
from .linear import SharedLinearRule
from .registry import Layout, RuleFactory, layout_for, register_rule, rule_for

__all__ = [
    "BLOCK_ELEMENTS",
    "LayerRule",
    "Layout",
    "MaterializedRule",
    "Reduction",
    "Rows",
    "RuleFactory",
    "SharedLinearRule",
    "SubsetRule",
    "ZeroRule",
    "build_rules",
    "layout_for",
    "register_rule",
    "rule_for",
    "unfold",
]
