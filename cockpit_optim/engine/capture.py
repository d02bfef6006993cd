"""Hooks that record, at armed steps only, what the statistics need from one forward/backward pass:
the model's inputs (with the RNG state, for replays), each supported layer's input and output
gradient, and the loss module's prediction and target.  Unarmed, every hook returns at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .layers import rule_factory


@dataclass
class LayerSlot:
    """One module with parameters, and what was captured from it at the current step."""

    name: str
    module: nn.Module
    param_names: list[str]
    factory: Any
    inputs: Tensor | None = None
    grad_out: Tensor | None = None
    calls: int = 0

    def clear(self) -> None:
        self.inputs = self.grad_out = None
        self.calls = 0


@dataclass
class ModelInput:
    """Arguments of the model's forward call and the RNG states just before it."""

    args: tuple
    kwargs: dict
    cpu_rng: Tensor
    cuda_rng: list[Tensor] = field(default_factory=list)


class Capture:
    """Registers the hooks on ``model`` and ``loss_fn``; ``armed`` switches recording on."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, monitored: dict[int, str]) -> None:
        self.armed = False
        self._suspended = 0
        self.slots: list[LayerSlot] = []
        self.unsupported: list[tuple[str, str, list[str]]] = []
        self.model_input: ModelInput | None = None
        self.model_output_node: Any = None
        self.loss_inputs: list[tuple[Tensor, Tensor, Any]] = []
        self._handles = [
            model.register_forward_pre_hook(self._on_model_input, with_kwargs=True),
            model.register_forward_hook(self._on_model_output),
            loss_fn.register_forward_hook(self._on_loss),
        ]
        for module_name, module in model.named_modules():
            direct = [
                (n, p) for n, p in module.named_parameters(recurse=False) if id(p) in monitored
            ]
            if not direct:
                continue
            names = [monitored[id(p)] for _, p in direct]
            factory = rule_factory(module)
            if factory is None:
                self.unsupported.append(
                    (module_name or type(module).__name__, type(module).__name__, names)
                )
                continue
            slot = LayerSlot(module_name, module, names, factory)
            self.slots.append(slot)
            self._handles.append(module.register_forward_hook(self._layer_hook(slot)))

    @property
    def recording(self) -> bool:
        return self.armed and not self._suspended and torch.is_grad_enabled()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Forward/backward passes inside (replays, evaluations) are not recorded."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def clear(self) -> None:
        for slot in self.slots:
            slot.clear()
        self.model_input = None
        self.model_output_node = None
        self.loss_inputs = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------------------- hooks
    def _on_model_input(self, module, args, kwargs):
        if self.recording and self.model_input is None:
            cuda = []
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
            self.model_input = ModelInput(args, dict(kwargs), torch.get_rng_state(), cuda)

    def _on_model_output(self, module, args, output):
        if self.recording and self.model_output_node is None and isinstance(output, Tensor):
            self.model_output_node = output.grad_fn

    def _on_loss(self, module, args, output):
        if self.recording and len(args) >= 2:
            self.loss_inputs.append((args[0].detach(), args[1].detach(), args[0].grad_fn))

    def loss_call(self) -> tuple[Tensor, Tensor] | None:
        """The recorded loss call on this step's model output (``None`` if not unique)."""
        calls = self.loss_inputs
        if len(calls) > 1:  # e.g. the same loss module also used for another model
            calls = [c for c in calls if _reaches(c[2], self.model_output_node)]
        return calls[0][:2] if len(calls) == 1 else None

    def _layer_hook(self, slot: LayerSlot):
        def hook(module, args, output):
            if not self.recording or not isinstance(output, Tensor) or not output.requires_grad:
                return
            slot.calls += 1
            slot.inputs = args[0].detach()

            def on_grad(grad: Tensor) -> None:
                slot.grad_out = grad.detach()

            output.register_hook(on_grad)

        return hook


def _reaches(node: Any, target: Any, limit: int = 256) -> bool:
    """Whether the autograd graph from ``node`` reaches ``target`` (bounded search)."""
    if node is None or target is None:
        return False
    seen, stack = set(), [node]
    while stack and len(seen) < limit:
        current = stack.pop()
        if current is target:
            return True
        if current in seen:
            continue
        seen.add(current)
        stack.extend(n for n, _ in current.next_functions if n is not None)
    return False
