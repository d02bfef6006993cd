"""The layer-rule registry: which :class:`~.base.LayerRule` serves a module, by module type.

A rule factory ``factory(module, inputs, grad_out) -> LayerRule`` receives the module's recorded
first positional input and the gradient of the batch loss w.r.t. its output (``delta_n``, of the
mean loss: ``1/B`` of each sample's own).  Lookup follows the module's class hierarchy, so a rule
registered for ``nn.Linear`` also serves its subclasses; a module without a registered rule gets
the generic ``torch.func`` rule (:mod:`.functional`).

>>> @register_rule(Scale)
... def scale_rule(module, inputs, grad_out):
...     batch = inputs.shape[0]
...     return MaterializedRule([module.weight], [batch * inputs * grad_out])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn
from torch.nn.utils import parametrize

RuleFactory = Callable[[nn.Module, Tensor, Tensor], Any]


class Layout(Protocol):
    """The shared layout of a layer ``z_t = W u_t + b`` (Linear, convolutions): patches
    ``(B, p, T)`` of its input and output gradients ``(B, o, T)``; used by the rule and by the
    exact GGN passes alike."""

    @staticmethod
    def patches(module: nn.Module, inputs: Tensor) -> Tensor: ...

    @staticmethod
    def deltas(module: nn.Module, grad_out: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class _Entry:
    factory: RuleFactory
    parameters: tuple[str, ...] | None
    layout: type | None
    when: Callable[[nn.Module], bool] | None


_RULES: dict[type, _Entry] = {}


def register_rule(
    *module_types: type[nn.Module],
    parameters: tuple[str, ...] | None = None,
    layout: type | None = None,
    when: Callable[[nn.Module], bool] | None = None,
) -> Callable[[RuleFactory], RuleFactory]:
    """Decorator registering ``factory`` as the rule of ``module_types`` (and their subclasses).

    Args:
        parameters: the direct parameter names the rule knows (default: any); a module with
            other direct parameters (e.g. ``weight_g`` of a weight-normalized layer) gets the
            generic rule.
        layout: a :class:`Layout` for layers of the form ``z_t = W u_t + b``.
        when: a further condition on the module (e.g. ``groups == 1``).
    """
    if not module_types or not all(
        isinstance(t, type) and issubclass(t, nn.Module) for t in module_types
    ):
        raise TypeError(f"register_rule needs nn.Module subclasses, got {module_types}")

    def decorator(factory: RuleFactory) -> RuleFactory:
        for module_type in module_types:
            _RULES[module_type] = _Entry(factory, parameters, layout, when)
        return factory

    return decorator


def _entry(module: nn.Module, local_names: list[str] | None = None) -> _Entry | None:
    entry = next((_RULES[c] for c in type(module).__mro__ if c in _RULES), None)
    if entry is None or parametrize.is_parametrized(module):
        return None
    if local_names is not None and entry.parameters is not None:
        if not set(local_names) <= set(entry.parameters):
            return None
    if entry.when is not None and not entry.when(module):
        return None
    return entry


def rule_for(module: nn.Module, local_names: list[str]) -> RuleFactory | None:
    """The registered rule factory for ``module`` with direct parameters ``local_names``, or
    ``None`` (the generic rule serves it)."""
    entry = _entry(module, local_names)
    return None if entry is None else entry.factory


def layout_for(module: nn.Module) -> type | None:
    """The :class:`Layout` of ``module``'s registered rule, or ``None``."""
    entry = _entry(module)
    return None if entry is None else entry.layout
