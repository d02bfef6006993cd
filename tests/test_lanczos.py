"""Lanczos for HessMaxEV against dense eigendecompositions, with and without restarts."""

from __future__ import annotations

import pytest
import torch

from cockpit_optim.engine import hessian as curvature
from cockpit_optim.engine.hessian import lanczos_max_eigenvalue


def _operator(dim: int, top: list[float], seed: int) -> torch.Tensor:
    """Symmetric matrix with the given top eigenvalues and the rest in ``[-1, 1]``."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    rest = torch.rand(dim - len(top), generator=generator, dtype=torch.float64) * 2 - 1
    values = torch.cat([rest, torch.tensor(top, dtype=torch.float64)])
    return (q * values) @ q.T


@pytest.mark.parametrize("max_basis", [24, 6, 3])
def test_close_top_eigenvalues_within_tolerance(max_basis: int) -> None:
    matrix = _operator(300, [4.0, 3.9, 3.8], seed=0)
    start = torch.randn(300, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = lanczos_max_eigenvalue(
        lambda v: matrix @ v, start, rtol=1e-3, max_iter=300, max_basis=max_basis
    )
    assert result.converged
    assert abs(result.value - 4.0) <= 1e-3 * 4.0
    assert result.products <= 300
    vector = result.vector / result.vector.norm()
    assert float(vector @ matrix @ vector) == pytest.approx(result.value, rel=1e-6)


def test_restarts_keep_the_basis_bounded(monkeypatch) -> None:
    matrix = _operator(200, [2.0, 1.99], seed=2)
    shapes, sizes = [], []
    append = curvature._Basis.append

    def counted(self, vector):  # the rows held by every basis ever built
        append(self, vector)
        sizes.append(sum(chunk.shape[0] for chunk in self.chunks))
        assert self.size <= 4

    monkeypatch.setattr(curvature._Basis, "append", counted)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        shapes.append(v.shape)
        return matrix @ v

    start = torch.ones(200, dtype=torch.float64)
    result = lanczos_max_eigenvalue(matvec, start, rtol=1e-3, max_iter=400, max_basis=4)
    assert result.products == len(shapes) > 4  # it had to restart
    assert max(sizes) <= 4 and len(sizes) > 4  # rows allocated: at most max_basis (one chunk)
    assert abs(result.value - 2.0) <= 2e-3


def test_small_operator_is_exact() -> None:
    matrix = _operator(3, [5.0], seed=3)
    result = lanczos_max_eigenvalue(lambda v: matrix @ v, torch.ones(3, dtype=torch.float64))
    assert result.converged and result.products <= 3
    assert result.value == pytest.approx(float(torch.linalg.eigvalsh(matrix)[-1]), rel=1e-10)


def test_iteration_budget_is_respected() -> None:
    matrix = _operator(100, [1.0, 0.9999], seed=4)
    result = lanczos_max_eigenvalue(
        lambda v: matrix @ v, torch.ones(100, dtype=torch.float64), rtol=1e-12, max_iter=7
    )
    assert result.products == 7 and not result.converged
