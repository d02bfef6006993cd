"""The histogram draws fused into one compiled loop per parameter (CPU, numba).

The loop computes exactly what :mod:`.histogram_draws` computes with torch operations: the same
draws from the same counter-based hash, the same values rounded in the same order, the same bins
against the same float64 edges, and so the same counts, without any intermediate tensor (indices,
gathered factors, values, bin indices).  It runs on one thread: a parallel loop would compete
with torch's own threads and doubles the compile time.

numba is optional (``pip install "cockpit-optim[fast]"``): without it, or for tensors it cannot
take (other devices, dtypes other than float32/float64), the torch path runs.  The loop is compiled
at its first call (a few seconds, cached on disk for later processes).
"""

from __future__ import annotations

import functools
import importlib.util
import time
import warnings

import numpy as np
import torch
from torch import Tensor

from .histogram_draws import WEIGHT, Share, factors

# Seconds spent compiling (or loading from the cache) at the first call, for the benchmarks.
compile_seconds: float | None = None


# Why the fused loop is off for this process (it failed to import or compile), if it is.
disabled: str | None = None


@functools.cache
def _installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def available() -> bool:
    """Whether numba is installed and the loop has not failed in this process."""
    return disabled is None and _installed()


def disable(error: Exception) -> None:
    """Turn the loop off for this process after ``error`` (the torch path gives the same counts)."""
    global disabled
    disabled = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"the compiled histogram loop failed ({disabled}); histograms are binned by torch "
        "operations from now on (same counts, slower). Reinstall numba to get it back.",
        RuntimeWarning,
        stacklevel=3,
    )


def supports(share: Share) -> bool:
    """Whether the fused loop handles ``share`` (numba present, CPU, float32/float64 factors)."""
    if not available():
        return False
    found = factors(share)
    tensors = [t for t in (found.d, found.u) if t is not None]
    return bool(tensors) and all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors
    )


@functools.cache
def _kernel():
    """The compiled loop (imported on first use: ``import cockpit_optim`` never loads numba)."""
    from .fused_kernels import fused

    return fused


def _host(tensor: Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (DLPack: shares memory, no copy and no device read)."""
    return np.from_dlpack((tensor if tensor.device.type == "cpu" else tensor.cpu()).detach())


def bin_share(
    share: Share, theta: Tensor | None, grad_edges: Tensor, param_edges: Tensor | None
) -> Tensor:
    """:func:`.histogram_draws.bin_share` in one compiled pass (for shares :func:`supports`)."""
    global compile_seconds
    found = factors(share)
    d = _host(found.d.contiguous())
    u = _host(found.u.contiguous()) if found.kind == WEIGHT else d[:0]
    empty = np.zeros(0, np.float64)
    theta_np = _host(theta.detach().double().contiguous()) if param_edges is not None else empty
    start = time.perf_counter() if compile_seconds is None else None
    counts = _kernel()(
        found.kind,
        d,
        u,
        theta_np,
        d.dtype.type(found.scale),
        share.exact,
        share.count,
        share.repeated,
        np.array(share.keys, np.int64),
        _host(grad_edges),
        _host(param_edges) if param_edges is not None else empty,
    )
    if start is not None:
        compile_seconds = time.perf_counter() - start
    return torch.from_numpy(counts)
