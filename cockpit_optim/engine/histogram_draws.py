"""The histogram draws in plain torch: which elements ``g_{n,d}`` a share draws, their values and
their bins.  :mod:`.fused_histogram` computes the same draws, values and bins in one compiled loop;
this module is its reference and its fallback (any device, any dtype).

Draw ``k`` of a parameter (rows ``R`` and row length ``C`` per sample, batch ``B``) is the element
``(n, r, c)`` with

* ``(n, r) = divmod(k mod B R, R)`` for ``k < repeated`` (every pair equally often),
  ``n = U(h_n(k), B)``, ``r = U(h_r(k), R)`` after that,
* ``c = U(h_c(k), C)``,

where ``h_s(k) = H(H(k) xor key_s)`` is a counter-based hash (``H`` an invertible 32-bit
xorshift-multiply mixer, ``key_s`` drawn per step and parameter) and ``U(h, m) = floor(h m / 2^32)``.
Every element is equally likely (up to ``m / 2^32``), and the draws need no generator state.

Values: ``B delta_{n,r} a_{n,c}`` for a Linear weight (``B (sum_t delta_{n,r,t} u_{n,c,t})`` for a
convolution, summed in float64), ``B delta_{n,r}`` for a bias, ``g_n[r]`` for materialized rules,
rounded to the parameter's dtype in that order.  Bins: element ``x`` falls in bin ``i`` iff
``edges[i] <= x < edges[i+1]`` (the last bin closed), compared in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .rules import LayerRule, MaterializedRule, SharedLinearRule

MASK32 = 0xFFFFFFFF
# Multipliers of the mixer: odd (so it is invertible mod 2^32) and below 2^31, so every product
# of a 32-bit value fits into int64.
MIX1, MIX2 = 0x21F0AAAD, 0x735A2D97
# Elements per block of the torch path.
CHUNK = 2**22

WEIGHT, BIAS, TABLE, GENERIC = 0, 1, 2, 3


@dataclass
class Share:
    """One parameter's part of a histogram sample: ``count`` elements, all of them (``exact``) or
    drawn with ``keys = (key_n, key_r, key_c)``."""

    name: str
    rule: LayerRule
    index: int
    batch: int
    rows: int
    cols: int
    count: int
    exact: bool
    repeated: int = 0
    keys: tuple[int, int, int] = (0, 0, 0)
    found: Factors | None = None  # cache of :func:`factors`


@dataclass
class Factors:
    """What an element is computed from: ``d`` ``(B, R, T)``, ``u`` ``(B, C, T)`` (weights)."""

    kind: int
    d: Tensor | None = None
    u: Tensor | None = None
    scale: float = 1.0


def factors(share: Share) -> Factors:
    """The tensors the elements of ``share`` are computed from (found once per share)."""
    if share.found is None:
        share.found = _factors(share)
    return share.found


def _factors(share: Share) -> Factors:
    rule = share.rule
    if isinstance(rule, SharedLinearRule):
        d = rule.d.detach()
        if share.index == 1:
            return Factors(BIAS, d, None, rule.scale)
        return Factors(WEIGHT, d, rule.u.detach(), rule.scale)
    if isinstance(rule, MaterializedRule):
        table = rule.per_sample[share.index].detach()
        return Factors(TABLE, table.reshape(table.shape[0], -1, 1))
    return Factors(GENERIC)


def mix(x: Tensor) -> Tensor:
    """The invertible 32-bit mixer ``H`` on int64 values in ``[0, 2^32)`` (in place)."""
    x.bitwise_xor_(x >> 16).mul_(MIX1).bitwise_and_(MASK32)
    x.bitwise_xor_(x >> 15).mul_(MIX2).bitwise_and_(MASK32)
    return x.bitwise_xor_(x >> 15)


def uniform(base: Tensor, key: int, size: int) -> Tensor:
    """``U(H(base xor key), size)``: integers in ``[0, size)`` (``size < 2^31``)."""
    return mix(base ^ key).mul_(size).bitwise_right_shift_(32)


def indices(share: Share, start: int, stop: int, device: torch.device) -> tuple[Tensor, ...]:
    """``(n, r, c)`` of draws (or, when exact, elements) ``start .. stop - 1``."""
    k = torch.arange(start, stop, device=device)
    rows, cols = share.rows, share.cols
    if share.exact:
        return k // (rows * cols), (k // cols) % rows, k % cols
    base = mix(k & MASK32)
    cut = min(max(share.repeated - start, 0), stop - start)  # draws before it are stratified
    pair = k[:cut] % (share.batch * rows)
    key_n, key_r, key_c = share.keys
    n = torch.cat([pair // rows, uniform(base[cut:], key_n, share.batch)])
    r = torch.cat([pair % rows, uniform(base[cut:], key_r, rows)])
    c = uniform(base, key_c, cols) if cols > 1 else torch.zeros_like(k)
    return n, r, c


def values(share: Share, found: Factors, n: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """The elements ``g_n[r, c]`` (see the module docstring for the arithmetic)."""
    if found.kind == GENERIC:
        return share.rule.elements(share.index, n, r, c)
    d = found.d
    if found.kind == TABLE:
        return d[n, r, 0]
    positions = d.shape[2]
    if found.kind == BIAS:
        summed = d[n, r, 0] if positions == 1 else d[n, r].double().sum(1).to(d.dtype)
        return summed * found.scale
    u = found.u
    if positions == 1:
        return (d[n, r, 0] * u[n, c, 0]) * found.scale
    products = d[n, r].double().mul_(u[n, c].double()).sum(1)
    return products.to(d.dtype) * found.scale


def slots(x: Tensor, edges: Tensor) -> Tensor:
    """``0`` below ``edges[0]``, ``1 + i`` in bin ``i``, ``bins + 1`` above, ``bins + 2`` for NaN."""
    bins = edges.numel() - 1
    x = x.double()
    index = torch.bucketize(x, edges, right=True)
    index.masked_fill_(x == edges[-1], bins)  # the last bin is closed
    return index.masked_fill_(torch.isnan(x), bins + 2)


def bincount(index: Tensor, size: int) -> Tensor:
    """``bincount(index, minlength=size)`` for ``0 <= index < size``; on a GPU by ``index_add_``,
    since CUDA's ``bincount`` reads the largest index back to the host."""
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size)
    counts = torch.zeros(size, dtype=torch.int64, device=index.device)
    return counts.index_add_(0, index, torch.ones_like(index))


def on(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device`` (no operation when it is there)."""
    return tensor if tensor.device == device else tensor.to(device)


def bin_share(
    share: Share, theta: Tensor | None, grad_edges: Tensor, param_edges: Tensor | None
) -> Tensor:
    """Counts of ``share``'s elements per gradient slot (``bins + 3``), or per pair of parameter
    and gradient slots (row-major, ``(param bins + 3) x (grad bins + 3)``) when ``param_edges``
    is given (``theta``: the flat parameter); int64 on the rule's device."""
    found = factors(share)
    device = share.rule.params[share.index].device
    grad_edges = on(grad_edges, device)
    width = grad_edges.numel() + 2
    size = width if param_edges is None else width * (param_edges.numel() + 2)
    counts = torch.zeros(size, dtype=torch.int64, device=device)
    positions = found.d.shape[2] if found.d is not None else 1
    step = max(1, CHUNK // positions)
    for start in range(0, share.count, step):
        n, r, c = indices(share, start, min(share.count, start + step), device)
        index = slots(values(share, found, n, r, c), grad_edges)
        if param_edges is not None:
            p_index = slots(theta.take(r * share.cols + c), on(param_edges, device))
            index = p_index.mul_(width).add_(index)
        counts += bincount(index, size)
    return counts
