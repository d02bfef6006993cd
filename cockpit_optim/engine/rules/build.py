"""Per-step rule building from the recorded layer calls of the step's micro-batches: one rule per
module with monitored parameters, modules used functionally adopted by their generic-rule
ancestor, tied weights merged.

The recorded output gradients carry what the backward pass carried: ``c_j / N_j`` times the
gradient of each sample's loss in micro-batch ``j`` (``c_j`` the factor that reached the loss
value, e.g. a loss scale or ``1/k`` for ``k`` accumulated micro-batches, ``N_j`` its samples).
They are rescaled to the rules' convention (``1/B`` of the sample's gradient, ``B`` the rows the
rule sees) and the rows of ignored targets are dropped, so the rules see exactly the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .base import LayerRule, MaterializedRule, SubsetRule, ZeroRule
from .functional import batch_dim, functional_rule

if TYPE_CHECKING:  # the capture imports the registry
    from ..capture import LayerCall, LayerSlot


@dataclass
class Rows:
    """The samples of one micro-batch among the rows of its model call: ``index`` of the rows
    kept (``None``: all ``rows``), ``count`` of them, and the factor ``c_j`` its backward carried."""

    forward: int
    rows: int
    count: int
    factor: Tensor | float
    index: Tensor | None = None


def build_rules(
    slots: list[LayerSlot], batches: list[Rows]
) -> tuple[list[tuple[LayerRule, list[str]]], str | None, list[str]]:
    """``(rules, problem, unused)``: one rule per module with parameters (``problem`` explains
    why there are none), and the names of parameters that got no gradient (zero rows)."""
    total = sum(b.count for b in batches)
    adopted: dict[str, list[tuple[str, str]]] = {}  # ancestor -> [(relative, global name)]
    problems, rules, unused = [], [], []
    for slot in slots:
        if not slot.calls:
            parent = _functional_ancestor(slot, slots)
            if parent is not None:
                prefix = slot.name[len(parent.name) + 1 :] if parent.name else slot.name
                adopted.setdefault(parent.name, []).extend(
                    (f"{prefix}.{local}", name)
                    for local, name in zip(slot.local_names, slot.param_names)
                )
    for slot in slots:
        extra = adopted.get(slot.name, [])
        names = [*slot.param_names, *(name for _, name in extra)]
        if not slot.calls and slot.name not in adopted and _functional_ancestor(slot, slots):
            continue
        per_batch: list[LayerCall | None] = []
        for batch in batches:
            calls = [c for c in slot.calls if c.forward == batch.forward and c.reached]
            if len(calls) > 1:
                problems.append(f"module '{slot.label}' was called {len(calls)} times in one pass")
                break
            per_batch.append(calls[0] if calls else None)
        else:
            try:
                rule = _slot_rule(slot, extra, per_batch, batches, total)
            except Exception as error:  # e.g. random operations inside the module under vmap
                kind = type(slot.module).__name__
                problems.append(
                    f"module '{slot.label}' ({kind}): no individual gradients ({error})"
                )
                continue
            if rule is None:
                unused.extend(names)
                rule = ZeroRule([_param(slot, n) for n in slot.local_names], total)
                names = list(slot.param_names)
            rules.append((rule, names))
    if problems:
        return [], "; ".join(problems), unused
    return _merge_tied(rules), None, unused


def _param(slot: LayerSlot, local: str) -> Tensor:
    return slot.module.get_parameter(local)


def _slot_rule(
    slot: LayerSlot,
    extra: list[tuple[str, str]],
    calls: list[LayerCall | None],
    batches: list[Rows],
    total: int,
) -> LayerRule | None:
    if all(c is None for c in calls):
        return None
    if slot.factory is not None:
        if len(calls) > 1 and all(c is not None for c in calls):
            inputs = [_rows(c.inputs, b.index, 0) for c, b in zip(calls, batches)]
            if len({t.shape[1:] for t in inputs}) == 1:  # one rule over the concatenated rows
                deltas = [
                    _rows(c.grad_out, b.index, 0) * (b.count / total) / b.factor
                    for c, b in zip(calls, batches)
                ]
                return _restricted(
                    slot, slot.factory(slot.module, torch.cat(inputs), torch.cat(deltas))
                )
        parts = [
            None
            if c is None
            else _restricted(
                slot,
                slot.factory(
                    slot.module,
                    _rows(c.inputs, b.index, 0),
                    _rows(c.grad_out, b.index, 0) / b.factor,
                ),
            )
            for c, b in zip(calls, batches)
        ]
    else:
        local = [*slot.local_names, *(relative for relative, _ in extra)]
        dim = batch_dim(slot.module)
        parts = [
            None if c is None else _functional(slot, local, c, b, dim)
            for c, b in zip(calls, batches)
        ]
    if len(parts) == 1:
        return parts[0]
    params = next(p for p in parts if p is not None).params
    pieces = [
        part.materialize() if part is not None else ZeroRule(params, b.count).materialize()
        for part, b in zip(parts, batches)
    ]
    per_sample = [torch.cat(column) for column in zip(*pieces)]
    return MaterializedRule(params, per_sample)


def _functional(slot: LayerSlot, local: list[str], call: LayerCall, batch: Rows, dim: int):
    def select(value):
        if isinstance(value, Tensor) and value.dim() > dim and value.shape[dim] == batch.rows:
            return _rows(value, batch.index, dim)
        return _wide(value)

    args = tuple(select(a) for a in call.args)
    kwargs = {k: select(v) for k, v in call.kwargs.items()}
    grads = {i: select(g) / batch.factor for i, g in call.grads.items()}
    return functional_rule(slot.module, local, args, kwargs, grads)


def _restricted(slot: LayerSlot, rule: LayerRule) -> LayerRule:
    """The rule over the slot's monitored parameters only."""
    wanted = {id(_param(slot, n)) for n in slot.local_names}
    keep = [i for i, p in enumerate(rule.params) if id(p) in wanted]
    return rule if len(keep) == len(rule.params) else SubsetRule(rule, keep)


def _wide(value):
    """Mixed-precision captures in float32 (the statistics are sums of squares)."""
    if isinstance(value, Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def _rows(tensor: Tensor, index: Tensor | None, dim: int) -> Tensor:
    tensor = _wide(tensor)
    return tensor if index is None else tensor.index_select(dim, index)


def _merge_tied(rules: list[tuple[LayerRule, list[str]]]) -> list[tuple[LayerRule, list[str]]]:
    counts: dict[str, int] = {}
    for _, names in rules:
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    if all(count == 1 for count in counts.values()):
        return rules
    separate, params, summed, order = [], {}, {}, []
    for rule, names in rules:
        if not any(counts[name] > 1 for name in names):
            separate.append((rule, names))
            continue
        for name, param, grads in zip(names, rule.params, rule.materialize()):
            if name in summed:
                summed[name] = summed[name] + grads
            else:
                summed[name], params[name] = grads, param
                order.append(name)
    merged = MaterializedRule([params[n] for n in order], [summed[n] for n in order])
    return [*separate, (merged, order)]


def _functional_ancestor(slot, slots):
    """The closest recorded ancestor module handled by the generic rule, if any."""
    best = None
    for other in slots:
        inside = other.name == "" or slot.name.startswith(other.name + ".")
        if other is not slot and inside and other.factory is None and other.calls:
            if best is None or len(other.name) > len(best.name):
                best = other
    return best
