"""Per-step rule building: one rule per recorded module with parameters, modules used
functionally adopted by their generic-rule ancestor, tied weights merged."""

from __future__ import annotations

from .capture import LayerSlot
from .functional import functional_rule
from .layers import LayerRule, MaterializedRule


def build_rules(slots: list[LayerSlot]) -> tuple[list[tuple[LayerRule, list[str]]], str | None]:
    """One rule per module with parameters.  A module never called on its own (attention's
    output projection, used functionally) is differentiated by its nearest generic-rule
    ancestor; parameters shared by several modules (tied weights) get one rule with the
    summed individual gradients of all their uses."""
    adopted: dict[str, list[tuple[str, str]]] = {}  # ancestor -> [(relative, global name)]
    problems, rules = [], []
    for slot in slots:
        if slot.calls == 0:
            parent = _functional_ancestor(slot, slots)
            if parent is None:
                problems.append(f"module '{slot.label}' was not used in the recorded pass")
                continue
            prefix = slot.name[len(parent.name) + 1 :] if parent.name else slot.name
            adopted.setdefault(parent.name, []).extend(
                (f"{prefix}.{local}", name)
                for local, name in zip(slot.local_names, slot.param_names)
            )
    for slot in slots:
        if slot.calls == 0:
            continue
        if slot.calls > 1:
            problems.append(f"module '{slot.label}' was called {slot.calls} times in one step")
            continue
        extra = adopted.get(slot.name, [])
        try:
            if slot.factory is not None:
                if slot.grad_out is None:
                    problems.append(f"module '{slot.label}' got no output gradient")
                    continue
                rule = slot.factory(slot.module, slot.inputs, slot.grad_out)
            else:
                local = [*slot.local_names, *(relative for relative, _ in extra)]
                rule = functional_rule(slot.module, local, slot.args, slot.kwargs, slot.grads)
        except Exception as error:  # e.g. random operations inside the module under vmap
            kind = type(slot.module).__name__
            problems.append(f"module '{slot.label}' ({kind}): no individual gradients ({error})")
            continue
        rules.append((rule, [*slot.param_names, *(name for _, name in extra)]))
    if problems:
        return [], "; ".join(problems)
    return _merge_tied(rules), None


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
        if other is not slot and inside and other.factory is None and other.calls == 1:
            if best is None or len(other.name) > len(best.name):
                best = other
    return best
