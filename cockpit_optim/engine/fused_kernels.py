"""numba kernels of :mod:`.fused_histogram` (this module imports numba; it is loaded lazily)."""

from __future__ import annotations

import numba
import numpy as np

from .histogram_draws import BIAS, MASK32, MIX1, MIX2, TABLE, WEIGHT


@numba.njit(inline="always")
def mix(x):
    x ^= x >> 16
    x = (x * MIX1) & MASK32
    x ^= x >> 15
    x = (x * MIX2) & MASK32
    return x ^ (x >> 15)


@numba.njit(inline="always")
def slot(x, edges, inverse):
    """Slot of ``x`` as in ``histogram_draws.slots``: a guess from the bin width, corrected against the edges."""
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


@numba.njit(cache=True, nogil=True)
def fused(kind, d, u, theta, scale, exact, count, repeated, keys, g_edges, p_edges):
    """Slot counts of ``count`` draws (or all elements, ``exact``) of one parameter; ``kind``,
    ``d``, ``u`` and ``scale`` as in ``histogram_draws.Factors``, ``p_edges`` empty for 1-D."""
    batch, rows, positions = d.shape
    cols = u.shape[1] if kind == WEIGHT else 1
    g_width = g_edges.shape[0] + 2
    two_d = p_edges.shape[0] > 0
    width = g_width * (p_edges.shape[0] + 2) if two_d else g_width
    g_inverse = (g_edges.shape[0] - 1) / (g_edges[-1] - g_edges[0])
    p_inverse = (p_edges.shape[0] - 1) / (p_edges[-1] - p_edges[0]) if two_d else 0.0
    out = np.zeros(width, np.int64)
    rounded = np.empty(1, d.dtype)  # float64 sums are rounded to the factors' dtype
    n = r = c = 0  # exact: element k = (n, r, c) in row-major order; else stratified first
    for k in range(count):
        if not exact:
            base = mix(k & MASK32)
            if k >= repeated:
                n = (mix(base ^ keys[0]) * batch) >> 32
                r = (mix(base ^ keys[1]) * rows) >> 32
            if cols > 1:
                c = (mix(base ^ keys[2]) * cols) >> 32
        if kind == TABLE:
            x = d[n, r, 0]
        elif kind == BIAS and positions == 1:
            x = d[n, r, 0] * scale
        elif kind == BIAS:
            total = 0.0
            for t in range(positions):
                total += np.float64(d[n, r, t])
            rounded[0] = total
            x = rounded[0] * scale
        elif positions == 1:
            x = (d[n, r, 0] * u[n, c, 0]) * scale
        else:
            total = 0.0
            for t in range(positions):
                total += np.float64(d[n, r, t]) * np.float64(u[n, c, t])
            rounded[0] = total
            x = rounded[0] * scale
        index = slot(np.float64(x), g_edges, g_inverse)
        if two_d:
            index += g_width * slot(theta[r * cols + c], p_edges, p_inverse)
        out[index] += 1
        if exact:
            c += 1
            if c == cols:
                c, r = 0, r + 1
                if r == rows:
                    r, n = 0, n + 1
        elif k < repeated:
            r += 1
            if r == rows:
                r, n = 0, n + 1
                if n == batch:
                    n = 0
    return out
