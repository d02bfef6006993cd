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
    """One module with parameters, and what was captured from it at the current step.

    Modules with a rule (``factory``) record their first input and output gradient; any other
    module records all its call arguments and the gradients of all its tensor outputs, for the
    generic ``torch.func`` rule.
    """

    name: str
    module: nn.Module
    param_names: list[str]
    local_names: list[str]
    factory: Any
    inputs: Tensor | None = None
    grad_out: Tensor | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    grads: dict[int, Tensor] = field(default_factory=dict)
    calls: int = 0

    @property
    def label(self) -> str:
        """The module's name for messages (its class name for the root module)."""
        return self.name or type(self.module).__name__

    def clear(self) -> None:
        self.inputs = self.grad_out = None
        self.args, self.kwargs, self.grads = (), {}, {}
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
            slot = LayerSlot(
                module_name, module, names, [n for n, _ in direct], rule_factory(module)
            )
            self.slots.append(slot)
            self._handles.append(
                module.register_forward_hook(self._layer_hook(slot), with_kwargs=True)
            )

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
        def hook(module, args, kwargs, output):
            if not self.recording:
                return
            outputs = [t for t in _tensors(output) if t.requires_grad]
            if not outputs:
                return
            slot.calls += 1
            if slot.factory is not None:
                if not isinstance(output, Tensor):
                    slot.factory = None  # unexpected output structure: use the generic rule
                else:
                    slot.inputs = args[0].detach() if args else None
                    output.register_hook(lambda grad: setattr(slot, "grad_out", grad.detach()))
                    return
            slot.args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
            slot.kwargs = {k: v.detach() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
            for index, tensor in enumerate(_tensors(output)):
                if tensor.requires_grad:
                    tensor.register_hook(_store(slot.grads, index))

        return hook


def _tensors(output: Any) -> list[Tensor]:
    """The tensors of a module output (a tensor, or a tuple/list of them and other values)."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, tuple | list):
        return [t for t in output if isinstance(t, Tensor)]
    return []


def _store(grads: dict[int, Tensor], index: int):
    def on_grad(grad: Tensor) -> None:
        grads[index] = grad.detach()

    return on_grad


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
