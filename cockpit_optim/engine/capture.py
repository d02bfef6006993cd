"""Hooks that record, at armed steps only, what the statistics need from the passes one ``step()``
consumes: each model call's inputs (with the RNG state, for replays), each layer call's input and
output gradient, and each loss call's prediction, target and the factor its backward pass carried.

A step may consume several forward/backward passes (gradient accumulation): each model call whose
loss reached a backward pass is one *micro-batch*.  Calls that never reach a backward pass
(validation or logging forwards) are dropped when the next model call starts, so they neither
change a reading nor hold memory.  Unarmed, every hook returns at once.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .rules import rule_for


@dataclass
class LayerCall:
    """One call of a layer: its input and output gradient (layers with a rule), or all its
    arguments and the gradients of its tensor outputs (the generic rule)."""

    forward: int
    inputs: Tensor | None = None
    grad_out: Tensor | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    grads: dict[int, Tensor] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        """Whether a backward pass reached the call's outputs."""
        return self.grad_out is not None or bool(self.grads)


@dataclass
class LayerSlot:
    """One module with monitored parameters and its calls at the current step."""

    name: str
    module: nn.Module
    param_names: list[str]
    local_names: list[str]
    factory: Any
    calls: list[LayerCall] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The module's name for messages (its class name for the root module)."""
        return self.name or type(self.module).__name__

    def clear(self) -> None:
        self.calls = []


@dataclass
class ModelInput:
    """Arguments of one model call and the RNG states just before it."""

    args: tuple
    kwargs: dict
    cpu_rng: Tensor
    cuda_rng: list[Tensor] = field(default_factory=list)
    index: int = 0
    output_node: Any = None


@dataclass
class LossCall:
    """One evaluation of the loss: prediction and target (detached), the gradient that reached
    the loss value (``factor``: ``c`` of ``(c * loss).backward()``, the loss scale of
    ``GradScaler``), and, for samples that are not rows of the model's batch (tokens), their
    losses and gradients computed at the call (``losses``, ``sample_grads``)."""

    forward: int
    prediction: Tensor
    target: Tensor
    node: Any = None
    factor: Tensor | None = None
    consumed: bool = False
    losses: Tensor | None = None
    sample_grads: list[Tensor] | None = None
    problem: str | None = None
    stale: bool = False


@dataclass
class MicroBatch:
    """A model call whose loss reached a backward pass consumed by the step."""

    loss: LossCall
    model_input: ModelInput | None


#: Engine passes (replays) in progress, in any capture: no capture records them.
_REPLAYS = [0]
#: The captures watching each module (weakly: a forgotten monitor leaves nothing behind).
_WATCHERS: weakref.WeakKeyDictionary[nn.Module, list[weakref.ref]] = weakref.WeakKeyDictionary()


class _Hook:
    """A hook that holds its capture weakly and acts only for the module it was registered on:
    a copy of the model (``copy.deepcopy``, pickling) gets an inert hook."""

    def __init__(self, capture: Capture, module: nn.Module, method: Callable, *args: Any) -> None:
        self._capture, self._module = weakref.ref(capture), weakref.ref(module)
        self._method, self._args = method.__name__, args

    def __call__(self, module, *args):
        capture = self._capture()
        if capture is None or module is not self._module():
            return None
        return getattr(capture, self._method)(module, *self._args, *args)

    def __deepcopy__(self, memo) -> _Inert:
        return _Inert()

    def __reduce__(self):
        return (_Inert, ())


class _Inert:
    def __call__(self, *args):
        return None


class Capture:
    """Registers the hooks on ``model`` and ``loss_fn``; ``armed`` switches recording on.

    For a model that computes its loss inside ``forward``, ``loss_fn`` is a
    :class:`~cockpit_optim.losses.SampleLoss` and replaces the loss-module hook.  ``on_loss`` is
    called with each new :class:`LossCall` and the prediction still attached to its graph.

    A capture on parameters that another live capture watches detaches that one (with
    ``replaced`` telling the caller); hooks hold the capture weakly and are removed when it
    is garbage-collected.  A ``replay`` capture (the engine's own, for a replayed pass) detaches
    nothing and records while other captures are suspended.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        monitored: dict[int, str],
        on_loss: Callable[[LossCall, Tensor, Tensor], None] | None = None,
        params: list[Tensor] = (),
        replay: bool = False,
    ) -> None:
        self.armed = False
        self._suspended = 0
        self._inner = 0
        self._sample_loss = None if isinstance(loss_fn, nn.Module) else loss_fn
        self._on_loss_call = on_loss
        self.slots: list[LayerSlot] = []
        self.forward_index = 0
        self.inputs: dict[int, ModelInput] = {}
        self.loss_calls: list[LossCall] = []
        self.late: list[str] = []  # backward passes that came after their calls were dropped
        self.monitored = set(monitored)
        self._params = list(params)
        self._replay = replay  # the engine's own capture of a replayed pass
        self.replaced = 0 if replay else self._replace_watchers(model)
        self._handles = [
            model.register_forward_pre_hook(
                _Hook(self, model, self._on_model_input), with_kwargs=True
            ),
            model.register_forward_hook(
                _Hook(self, model, self._on_model_output), with_kwargs=True
            ),
        ]
        if self._sample_loss is None:
            self._handles.append(loss_fn.register_forward_hook(_Hook(self, loss_fn, self._on_loss)))
        for module_name, module in model.named_modules():
            if _inside_parametrization(module_name):
                continue
            direct = [(n, p) for n, p in _direct_parameters(module) if id(p) in monitored]
            if not direct:
                continue
            names = [monitored[id(p)] for _, p in direct]
            factory = _factory(module, [n for n, _ in direct])
            slot = LayerSlot(module_name, module, names, [n for n, _ in direct], factory)
            self.slots.append(slot)
            hook = _Hook(self, module, self._on_layer, slot)
            self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        if not replay:
            _WATCHERS.setdefault(model, []).append(weakref.ref(self))
        weakref.finalize(self, _remove_handles, list(self._handles))

    def _replace_watchers(self, model: nn.Module) -> int:
        """Detach live captures on this model that watch some of the same parameters."""
        alive = [r for r in _WATCHERS.get(model, []) if r() is not None]
        replaced = 0
        for ref in alive:
            other = ref()
            if other.monitored & self.monitored:
                other.remove()
                replaced += 1
        if model in _WATCHERS:
            _WATCHERS[model] = [r for r in alive if r() is not None and r()._handles]
        return replaced

    @property
    def recording(self) -> bool:
        replaying = _REPLAYS[0] and not self._replay
        return self.armed and not self._suspended and not replaying and torch.is_grad_enabled()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Forward/backward passes inside (replays, evaluations) are recorded by no capture."""
        self._suspended += 1
        _REPLAYS[0] += 1
        try:
            yield
        finally:
            self._suspended -= 1
            _REPLAYS[0] -= 1

    @contextlib.contextmanager
    def inner_backward(self) -> Iterator[None]:
        """Backward passes of the engine's own inside: layer gradients are not recorded."""
        self._inner += 1
        try:
            yield
        finally:
            self._inner -= 1

    def clear(self) -> None:
        for slot in self.slots:
            slot.clear()
        self.inputs = {}
        self.loss_calls = []
        self.late = []

    def gradients_reset(self) -> None:
        """``zero_grad()``: what earlier backward passes contributed is gone from ``.grad``, so
        their calls no longer belong to the step; calls still waiting for a backward stay."""
        for slot in self.slots:
            slot.calls = [c for c in slot.calls if not c.reached]
        self.loss_calls = [c for c in self.loss_calls if not c.consumed]
        self.late = []

    def remove(self) -> None:
        _remove_handles(self._handles)
        self._handles = []
        self.armed = False
        self.clear()

    # ----------------------------------------------------------------------- micro-batches
    def micro_batches(self) -> tuple[list[MicroBatch], str | None]:
        """The step's micro-batches in call order, or a reason why they are not defined."""
        if self.late:
            return [], "; ".join(self.late)
        consumed = [c for c in self.loss_calls if c.consumed]
        by_forward: dict[int, list[LossCall]] = {}
        for call in consumed:
            by_forward.setdefault(call.forward, []).append(call)
        batches = []
        for index, calls in by_forward.items():
            model_input = self.inputs.get(index)
            if len(calls) > 1 and model_input is not None:  # the loss also served another model
                calls = [c for c in calls if _reaches(c.node, model_input.output_node)] or calls
            if len(calls) > 1:
                return [], (
                    f"the loss was computed {len(calls)} times on one model call and each reached "
                    "the backward pass: the samples of the step are ambiguous"
                )
            batches.append(MicroBatch(calls[0], model_input))
        return batches, None

    # ------------------------------------------------------------------------------- hooks
    def _drop_stale(self) -> None:
        """A new model call starts: calls of earlier ones that no backward pass reached are
        dropped (validation or logging forwards)."""
        current = self.forward_index
        for slot in self.slots:
            slot.calls = [c for c in slot.calls if c.reached or c.forward == current]
        kept = []
        for call in self.loss_calls:
            if call.consumed or call.forward == current:
                kept.append(call)
            else:
                call.stale = True
        self.loss_calls = kept
        used = {c.forward for c in self.loss_calls}
        self.inputs = {i: m for i, m in self.inputs.items() if i in used or i == current}

    def _on_model_input(self, module, args, kwargs):
        if not self.recording:
            return
        self.forward_index += 1
        if self._params and all(p.grad is None for p in self._params):
            self.gradients_reset()  # zero_grad() of another optimizer, or model.zero_grad()
        self._drop_stale()
        cuda = []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
        self.inputs[self.forward_index] = ModelInput(
            args, dict(kwargs), torch.get_rng_state(), cuda, self.forward_index
        )

    def _on_model_output(self, module, args, kwargs, output):
        if not self.recording:
            return
        model_input = self.inputs.get(self.forward_index)
        if model_input is not None and isinstance(output, Tensor):
            model_input.output_node = output.grad_fn
        if self._sample_loss is not None:
            prediction, target, model_loss = self._sample_loss.split(output, args, kwargs)
            self._record_loss(prediction, target, model_loss)

    def _on_loss(self, module, args, output):
        if self.recording and len(args) >= 2 and isinstance(output, Tensor):
            self._record_loss(args[0], args[1], output)

    def _record_loss(self, prediction: Tensor, target: Tensor, value: Tensor | None) -> None:
        call = LossCall(
            self.forward_index, prediction.detach(), target.detach(), prediction.grad_fn
        )
        self.loss_calls.append(call)

        def on_value_grad(grad: Tensor) -> None:
            if not self._inner:
                self._consume(call, grad.detach())

        def on_prediction_grad(grad: Tensor) -> None:
            if not self._inner and call.factor is None:
                self._consume(call, None)

        if value is not None and value.requires_grad:
            value.register_hook(on_value_grad)
        elif prediction.requires_grad:
            prediction.register_hook(on_prediction_grad)
        if self._on_loss_call is not None and prediction.requires_grad:
            self._on_loss_call(call, prediction, target)

    def _consume(self, call: LossCall, factor: Tensor | None) -> None:
        if call.stale:
            self.late.append(
                "a backward pass reached a model call after the next model call had started: "
                "run each micro-batch's backward before the next forward"
            )
            return
        if call.consumed:  # a second backward through the same graph (retain_graph)
            call.problem = "the loss of one model call reached several backward passes"
        call.consumed = True
        call.factor = factor if call.factor is None else call.factor + factor

    def _on_layer(self, module, slot: LayerSlot, args, kwargs, output):
        if not self.recording:
            return
        outputs = _tensors(output)
        if not any(t.requires_grad for t in outputs):
            return
        call = LayerCall(self.forward_index)
        slot.calls.append(call)
        if slot.factory is not None and isinstance(output, Tensor) and args:
            call.inputs = args[0].detach()

            def on_grad(grad: Tensor) -> None:
                if not self._inner:
                    call.grad_out = grad.detach()

            output.register_hook(on_grad)
            return
        call.args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        call.kwargs = {k: v.detach() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        for index, tensor in enumerate(outputs):
            if tensor.requires_grad:
                tensor.register_hook(self._store(call.grads, index))

    def _store(self, grads: dict[int, Tensor], index: int):
        def on_grad(grad: Tensor) -> None:
            if not self._inner:
                grads[index] = grad.detach()

        return on_grad


def _factory(module: nn.Module, local_names: list[str]):
    """The module's registered rule, unless its weight is computed inside it (the older
    ``weight_norm``; parametrizations are checked by the registry): those take the generic rule."""
    weight = getattr(module, "weight", None)
    if weight is not None and not isinstance(weight, nn.Parameter):
        return None
    return rule_for(module, local_names)


def _remove_handles(handles: list) -> None:
    for handle in handles:
        handle.remove()


def _direct_parameters(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The module's own parameters, those of its parametrizations included (by the names
    ``functional_call`` takes, e.g. ``parametrizations.weight.original0``)."""
    own = list(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own += [
            (f"parametrizations.{name}", p)
            for name, p in module.parametrizations.named_parameters()
        ]
    return own


def _inside_parametrization(name: str) -> bool:
    return ".parametrizations." in f".{name}."


def _tensors(output: Any) -> list[Tensor]:
    """The tensors of a module output (a tensor, or a tuple/list of them and other values)."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, tuple | list):
        return [t for t in output if isinstance(t, Tensor)]
    return []


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
