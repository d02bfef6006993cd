"""One device-to-host read per step.

On a GPU every ``.item()``, ``float(tensor)`` or ``.tolist()`` waits for all queued kernels.  The
engine and the instruments therefore leave every scalar they need on the device and
:meth:`HostTransfer.defer` it; :meth:`HostTransfer.read` copies all of them to the host in one
transfer (one per device) and then runs the callbacks that waited for the values, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class Deferred:
    """A value on its way to the host; :attr:`value` is available after the transfer's read."""

    __slots__ = ("_convert", "_error", "_sizes", "_value", "ready")

    def __init__(self, sizes: list[int], convert: Callable[..., Any] | None) -> None:
        self._sizes, self._convert = sizes, convert
        self._value: Any = None
        self._error: Exception | None = None
        self.ready = False

    @property
    def value(self) -> Any:
        """The host value; raises the conversion's error where it failed."""
        if not self.ready:
            raise RuntimeError(
                "a deferred statistic was used before the step's host read; read it in a "
                "callback registered with HostTransfer.then (instruments compute after the read)"
            )
        if self._error is not None:
            raise self._error
        return self._value

    def _resolve(self, parts: list[list[float]]) -> None:
        try:  # a failing conversion concerns its own value only
            if self._convert is not None:
                self._value = self._convert(*parts)
            else:
                self._value = parts[0][0] if self._sizes == [1] else parts[0]
        except Exception as error:
            self._error = error
        self.ready = True


class HostTransfer:
    """Collects device tensors and the callbacks waiting for them; :meth:`read` serves both."""

    def __init__(self) -> None:
        self._tensors: list[Tensor] = []
        self._waiting: list[tuple[Deferred, int]] = []  # (deferred, number of its tensors)
        self._callbacks: list[Callable[[], None]] = []
        self.reads = 0  # number of reads so far (one per device each)

    @property
    def pending(self) -> bool:
        """Whether values or callbacks wait for a read."""
        return bool(self._waiting or self._callbacks)

    def defer(self, *tensors: Tensor, convert: Callable[..., Any] | None = None) -> Deferred:
        """Queue ``tensors`` (any dtype exactly representable in float64, e.g. int64 counts below
        ``2^53``).  Without ``convert`` the value is a float (one element) or a list of floats;
        with it, ``convert(*lists)`` with one flat list of floats per tensor."""
        flats = [flat(t) for t in tensors]
        deferred = Deferred([f.numel() for f in flats], convert)
        self._tensors.extend(flats)
        self._waiting.append((deferred, len(flats)))
        return deferred

    def then(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` after the next read (callbacks run in the order given)."""
        self._callbacks.append(callback)

    def read(self) -> None:
        """Copy every queued tensor to the host (one transfer per device), resolve the deferred
        values, then run the waiting callbacks.  A callback may queue work for the next read."""
        tensors, waiting, callbacks = self._tensors, self._waiting, self._callbacks
        self._tensors, self._waiting, self._callbacks = [], [], []
        by_device: dict[torch.device, list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_device.setdefault(tensor.device, []).append(index)
        host: list[list[float]] = [[] for _ in tensors]
        for indices in by_device.values():
            by_dtype: dict[torch.dtype, list[int]] = {}
            for i in indices:
                by_dtype.setdefault(tensors[i].dtype, []).append(i)
            joined = torch.cat(  # one conversion per dtype, not per tensor
                [torch.cat([tensors[i] for i in group]).double() for group in by_dtype.values()]
            )
            values = joined.tolist()  # the read
            self.reads += 1
            start = 0
            for i in (i for group in by_dtype.values() for i in group):
                host[i] = values[start : start + tensors[i].numel()]
                start += tensors[i].numel()
        position = 0
        for deferred, count in waiting:
            deferred._resolve(host[position : position + count])
            position += count
        for callback in callbacks:
            callback()


def flat(tensor: Tensor) -> Tensor:
    """``tensor`` as a detached 1-D tensor (without dispatching what is already so)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    return tensor if tensor.dim() == 1 else tensor.reshape(-1)
