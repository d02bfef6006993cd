"""numba kernels of :mod:`.fused_histogram` (this module imports numba; it is loaded lazily)."""

from __future__ import annotations

import numba
import numpy as np

from .histogram_draws import BIAS, MASK32, MIX1, MIX2, TABLE, WEIGHT


@numba.njit(inline="always")
def mix(x):
    """``histogram_draws.mix`` on one value."""
    x ^= x >> 16
    x = (x * MIX1) & MASK32
    x ^= x >> 15
    x = (x * MIX2) & MASK32
    return x ^ (x >> 15)


@numba.njit(inline="always")
def slot(x, edges, inverse):
    """``histogram_draws.slots`` of one float64 value: a guess from the bin width, corrected
    against the edges (so the edges alone decide)."""
    bins = edges.shape[0] - 1
    if x != x:
        return bins + 2
    if x < edges[0]:
        return 0
    if x > edges[bins]:
        return bins + 1
    i = min(int((x - edges[0]) * inverse), bins - 1)
    while i > 0 and x < edges[i]:
        i -= 1
    while i < bins - 1 and x >= edges[i + 1]:
        i += 1
    return i + 1


@numba.njit(inline="always")
def value(kind, d, u, n, r, c, scale, rounded, shortcut):
    """The element ``(n, r, c)``, rounded as in ``histogram_draws.values``."""
    positions = d.shape[2]
    if kind == TABLE:
        return d[n, r, 0]
    if kind == BIAS and positions == 1:
        return d[n, r, 0] * scale
    if kind == BIAS:
        total = 0.0
        for t in range(positions):
            total += np.float64(d[n, r, t])
        rounded[0] = total
        return rounded[0] * scale
    if positions == 1:
        x = d[n, r, 0]
        if x != 0 or not shortcut:
            x = (x * u[n, c, 0]) * scale
        return x
    total = 0.0
    for t in range(positions):
        total += np.float64(d[n, r, t]) * np.float64(u[n, c, t])
    rounded[0] = total
    return rounded[0] * scale


@numba.njit(cache=True, nogil=True)
def fused(kind, d, u, theta, scale, exact, count, repeated, keys, g_edges, p_edges):
    """Slot counts of ``count`` draws (or all elements, ``exact``) of one parameter; ``kind``,
    ``d``, ``u`` and ``scale`` as in ``histogram_draws.Factors``, ``p_edges`` empty for 1-D.

    Exact zeros (most elements of ReLU networks) take short cuts: their slot is computed once;
    for a Linear weight with finite inputs, ``delta_{n,r} = 0`` makes every draw of the pair
    ``(n, r)`` 0 (in 1-D, the stratified ones are counted at once)."""
    batch, rows, positions = d.shape
    cols = u.shape[1] if kind == WEIGHT else 1
    pairs = batch * rows
    g_width = g_edges.shape[0] + 2
    two_d = p_edges.shape[0] > 0
    width = g_width * (p_edges.shape[0] + 2) if two_d else g_width
    g_inverse = (g_edges.shape[0] - 1) / (g_edges[-1] - g_edges[0])
    p_inverse = (p_edges.shape[0] - 1) / (p_edges[-1] - p_edges[0]) if two_d else 0.0
    zero = slot(0.0, g_edges, g_inverse)
    out = np.zeros(width, np.int64)
    rounded = np.empty(1, d.dtype)  # float64 sums are rounded to the factors' dtype
    # 0 * u = 0 for finite u (0 * inf is NaN, as in torch)
    shortcut = kind == WEIGHT and positions == 1 and np.isfinite(u).all()
    row_only = shortcut and not two_d
    if exact:
        first, reps, hashed = 0, 0, 0
    else:
        first, reps, hashed = repeated, repeated // pairs, count - repeated
    if not exact and kind == WEIGHT and positions == 1:  # Linear weights: the common case
        d2, u2 = d[:, :, 0], u[:, :, 0]
        for n in range(batch if reps else 0):
            for r in range(rows):
                dv = d2[n, r]
                if row_only and dv == 0:
                    out[zero] += reps
                    continue
                for j in range(reps):
                    c = (mix(mix((j * pairs + n * rows + r) & MASK32) ^ keys[2]) * cols) >> 32
                    x = dv if shortcut and dv == 0 else (dv * u2[n, c]) * scale
                    index = zero if x == 0 else slot(np.float64(x), g_edges, g_inverse)
                    if two_d:
                        index += g_width * slot(theta[r * cols + c], p_edges, p_inverse)
                    out[index] += 1
        reps = 0  # done
    for n in range(batch if exact or reps else 0):
        for r in range(rows):
            if row_only and d[n, r, 0] == 0:
                out[zero] += cols if exact else reps
                continue
            for j in range(cols if exact else reps):
                c = j
                if not exact and cols > 1:
                    c = (mix(mix((j * pairs + n * rows + r) & MASK32) ^ keys[2]) * cols) >> 32
                x = value(kind, d, u, n, r, c, scale, rounded, shortcut)
                index = zero if x == 0 else slot(np.float64(x), g_edges, g_inverse)
                if two_d:
                    index += g_width * slot(theta[r * cols + c], p_edges, p_inverse)
                out[index] += 1
    for k in range(first, first + hashed):
        base = mix(k & MASK32)
        n = (mix(base ^ keys[0]) * batch) >> 32
        r = (mix(base ^ keys[1]) * rows) >> 32
        c = (mix(base ^ keys[2]) * cols) >> 32 if cols > 1 else 0
        x = value(kind, d, u, n, r, c, scale, rounded, shortcut)
        index = zero if x == 0 else slot(np.float64(x), g_edges, g_inverse)
        if two_d:
            index += g_width * slot(theta[r * cols + c], p_edges, p_inverse)
        out[index] += 1
    return out
