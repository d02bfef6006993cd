"""The Hessian trace where no exact diagonal exists: exact on a Krylov subspace, adaptive
Hutchinson probes on the rest.

For an orthonormal basis ``Q`` (``D x k``) and the projector ``P = I - Q Q^T`` onto its complement,

    ``Tr(H) = Tr(Q^T H Q) + Tr(P H P)``.

The first term is exact: ``Q`` is built by Lanczos (full reorthogonalization), and each basis
vector's product ``H q_i`` gives ``q_i^T H q_i``.  Krylov spaces resolve the extreme eigenvalues
at both ends of the spectrum first, the outliers that make Hutchinson's variance
``2 (||H||_F^2 - sum_i H_ii^2)`` large.  The second term is Hutchinson's estimate with Rademacher
probes projected onto the complement, ``z_j = (P v_j)^T H (P v_j)``: unbiased given ``Q``, with
standard error ``std(z) / sqrt(m)`` after ``m`` probes.  Probes are drawn in rounds until the
standard error is at most ``rtol * |estimate|`` or ``max_products`` Hessian-vector products are
spent; ``converged`` says whether the tolerance was met.  An operator with ``D <= max_products``
is traced exactly with unit vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..contract import TraceEstimate

#: Probes drawn before the first check of the tolerance, and between two checks (one host read).
MIN_PROBES = 8
ROUND = 4


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself on its device, else a generator on ``device`` seeded by one draw from
    it (a CPU draw: no host copy, and the CPU stream advances by one draw per call)."""
    if generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _rademacher(dim: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    signs = torch.randint(0, 2, (dim,), generator=generator, device=generator.device)
    return signs.to(dtype).mul_(2).sub_(1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a.double() * b.double()).sum()


def deflated_trace(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    like: Tensor,
    generator: torch.Generator,
    rtol: float = 0.05,
    max_products: int = 32,
    deflation: int | None = None,
) -> TraceEstimate:
    """Estimate ``Tr(H)`` for ``matvec: v -> H v`` (see the module docstring).  Vectors have the
    dtype and device of ``like``; ``deflation`` Lanczos vectors (default ``max_products // 4``)
    span the exact part; ``generator`` draws the start vector and the probes."""
    dtype, device = like.dtype, like.device
    if dim <= max_products:  # exact: D products with unit vectors
        total = torch.zeros((), dtype=torch.float64, device=device)
        for index in range(dim):
            unit = torch.zeros(dim, dtype=dtype, device=device)
            unit[index] = 1
            total += matvec(unit)[index].double()
        return TraceEstimate(float(total), 0.0, dim, True)
    generator = device_generator(generator, device)
    size = max_products // 4 if deflation is None else deflation
    size = max(0, min(size, max_products - MIN_PROBES, dim))
    rows: list[Tensor] = []
    exact = torch.zeros((), dtype=torch.float64, device=device)
    vector = _rademacher(dim, generator, dtype)
    vector = vector / vector.norm()
    for _ in range(size):  # Lanczos, no host read: an invariant space continues with zeros
        product = matvec(vector).to(dtype)
        exact += _dot(vector, product)
        rows.append(vector)
        basis = torch.stack(rows)
        for _ in range(2):  # full reorthogonalization, twice is enough
            product = product - basis.T @ (basis @ product)
        norm = product.norm()
        vector = torch.where(norm > 0, product / norm, torch.zeros_like(product))
    basis = torch.stack(rows) if rows else None
    samples: list[Tensor] = []
    products = size
    while True:
        probe = _rademacher(dim, generator, dtype)
        if basis is not None:
            probe = probe - basis.T @ (basis @ probe)
        samples.append(_dot(probe, matvec(probe).to(dtype)))
        products += 1
        count = len(samples)
        last = products >= max_products
        if not last and (count < MIN_PROBES or (count - MIN_PROBES) % ROUND):
            continue
        values = torch.stack(samples)
        mean, spread = torch.stack([exact + values.mean(), values.std()]).tolist()
        stderr = spread / math.sqrt(count)
        converged = stderr <= rtol * abs(mean)
        if converged or last:
            return TraceEstimate(mean, stderr, products, converged)
