"""Curvature of the mini-batch loss: replayed forward passes, Hessian-vector products, the largest
eigenvalue by Lanczos, and the Hessian diagonal (exact, GGN or Monte-Carlo GGN) through BackPACK."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..contract import EigenResult
from .capture import ModelInput


@contextlib.contextmanager
def replay_rng(model_input: ModelInput) -> Iterator[None]:
    """Run with the RNG state of the recorded forward pass (same dropout masks); the global RNG
    is restored afterwards, so replays never change training."""
    devices = list(range(len(model_input.cuda_rng)))
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(model_input.cpu_rng)
        for index, state in enumerate(model_input.cuda_rng):
            torch.cuda.set_rng_state(state, index)
        yield


@contextlib.contextmanager
def private_rng(seed: int) -> Iterator[None]:
    """Draw from a seeded stream inside; the global RNG (CPU and CUDA) is restored afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def replay_loss(
    model: nn.Module, loss_fn: nn.Module, model_input: ModelInput, target: Tensor
) -> Tensor:
    """The mini-batch loss recomputed from the recorded inputs (with a fresh graph)."""
    with replay_rng(model_input), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        output = model(*model_input.args, **model_input.kwargs)  # math attention: twice
        return loss_fn(output, target)  # differentiable, unlike the fused CPU kernels


class HessianVectorProduct:
    """``v -> H v`` for the Hessian of ``loss`` w.r.t. ``params`` (flat vectors, any float dtype).

    With a distributed ``combiner``, ``H`` is that of the global batch: each rank's product,
    weighted by its share ``weight`` of the batch, is summed over the ranks.
    """

    def __init__(
        self, loss: Tensor, params: Sequence[Tensor], combiner=None, weight: float = 1.0
    ) -> None:
        self.params = list(params)
        self.combiner, self.weight = combiner, weight
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self._pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.dim = sum(p.numel() for p in self.params)

    def __call__(self, vector: Tensor) -> Tensor:
        pieces = [
            piece.reshape(p.shape).to(p.dtype)
            for piece, p in zip(vector.split([p.numel() for p in self.params]), self.params)
        ]
        local = torch.zeros_like(vector)
        if self._pairs:
            products = torch.autograd.grad(
                [g for _, g in self._pairs],
                self.params,
                [pieces[i] for i, _ in self._pairs],
                retain_graph=True,
                allow_unused=True,
            )
            local = torch.cat(
                [
                    (h if h is not None else torch.zeros_like(p)).reshape(-1).to(vector.dtype)
                    for h, p in zip(products, self.params)
                ]
            )
        if self.combiner is None or self.combiner.world_size == 1:
            return local
        return self.combiner.sum([local * self.weight])[0]


# The gap in the error bound comes from Ritz values, which overestimate the spectral gap early on;
# asking for a 4x smaller bound keeps the true relative error below rtol in practice.
_SAFETY = 0.25


class _Basis:
    """Orthonormal Lanczos vectors, stored in chunks of ``_CHUNK`` rows: it grows without copies
    and holds no more rows than are in use (rounded up to a chunk)."""

    def __init__(self, like: Tensor) -> None:
        self.like = like
        self.chunks: list[Tensor] = []
        self.size = 0

    def append(self, vector: Tensor) -> None:
        if self.size == _CHUNK * len(self.chunks):
            self.chunks.append(self.like.new_empty(_CHUNK, self.like.numel()))
        self.chunks[-1][self.size % _CHUNK] = vector
        self.size += 1

    def __getitem__(self, index: int) -> Tensor:
        return self.chunks[index // _CHUNK][index % _CHUNK]

    def _rows(self) -> list[Tensor]:
        full, rest = divmod(self.size, _CHUNK)
        return self.chunks[:full] + ([self.chunks[full][:rest]] if rest else [])

    def project_out(self, w: Tensor) -> Tensor:
        """``w - Q^T Q w`` for the basis ``Q``."""
        for rows in self._rows():
            w = w - rows.T @ (rows @ w)
        return w

    def combine(self, coefficients: Tensor) -> Tensor:
        """``Q^T c``."""
        out, start = None, 0
        for rows in self._rows():
            part = rows.T @ coefficients[start : start + rows.shape[0]]
            out, start = (part if out is None else out + part), start + rows.shape[0]
        return out


_CHUNK = 4


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    """The Lanczos matrix: ``alphas`` on the diagonal, ``betas`` beside it (float64, host)."""
    matrix = np.diag(np.asarray(alphas, dtype=np.float64))
    if betas:
        off = np.asarray(betas, dtype=np.float64)
        matrix += np.diag(off, 1) + np.diag(off, -1)
    return matrix


def lanczos_max_eigenvalue(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    rtol: float = 1e-3,
    max_iter: int = 100,
    max_basis: int = 24,
) -> EigenResult:
    """Largest algebraic eigenvalue of a symmetric operator by Lanczos with full
    reorthogonalization, restarted from the top Ritz vector whenever ``max_basis`` vectors are in
    use (memory: at most ``max_basis`` vectors of the operator's size and dtype, allocated as the
    basis grows: warm-started runs usually need two or three).

    Stops when the error bound of the top Ritz value is below ``rtol * |theta|``, when the
    Krylov space is invariant, or after ``max_iter`` products.  The bound is ``min(r, r^2 / gap)``
    with residual norm ``r = |beta_k s_k|`` and ``gap`` the distance to the next Ritz value; after
    a restart the small space resolves the rest of the spectrum poorly (the Ritz gap is too
    large), so only ``r`` counts.
    """
    dim = start.numel()
    size = min(max_basis, dim, max_iter)
    vector, products, restarts = start, 0, 0
    while True:
        basis = _Basis(start)
        basis.append(vector / vector.norm())
        alphas: list[float] = []
        betas: list[float] = []
        for k in range(size):
            w = matvec(basis[k])
            products += 1
            alpha = w @ basis[k]
            for _ in range(2):  # full reorthogonalization, twice is enough
                w = basis.project_out(w)
            alpha, beta = torch.stack([alpha, w.norm()]).tolist()  # one host read per product
            if not (math.isfinite(alpha) and math.isfinite(beta)):
                raise RuntimeError("a Hessian-vector product is not finite")
            alphas.append(alpha)
            evals, evecs = np.linalg.eigh(_tridiagonal(alphas, betas))
            value = float(evals[-1])
            residual = abs(beta * float(evecs[-1, -1]))
            bound = residual
            if restarts == 0 and k >= 1 and evals[-1] > evals[-2]:
                bound = min(residual, residual**2 / float(evals[-1] - evals[-2]))
            scale = abs(value) if value != 0 else 1.0
            converged = bound <= _SAFETY * rtol * scale or beta <= 1e-12 * scale
            top = torch.from_numpy(evecs[:, -1].copy())
            if converged or products == max_iter or k + 1 == dim:
                vector = basis.combine(top.to(device=start.device, dtype=start.dtype))
                return EigenResult(value, vector, products, converged or k + 1 == dim)
            if k + 1 < size:
                betas.append(beta)
                basis.append(w / beta)
        vector = basis.combine(top.to(device=start.device, dtype=start.dtype))  # restart
        restarts += 1


@dataclass
class DiagonalEstimate:
    diagonal: Tensor
    trace_stderr: Tensor  # 0-d, on the device (read with the step's other values)


def hutchinson(
    matvec: Callable[[Tensor], Tensor], probes: int, generator: torch.Generator
) -> DiagonalEstimate:
    """Hutchinson estimate ``diag(H) ~ mean(v * Hv)`` with Rademacher probes ``v``, and the
    standard error ``std(v . Hv) / sqrt(probes)`` of the trace estimate ``mean(v . Hv)``.
    ``generator`` (CPU) draws the probes, or on another device seeds a generator there (no host
    copies)."""
    dim = matvec.dim
    device = matvec.params[0].device
    if generator.device != device:
        seed = int(torch.randint(0, 2**62, (), generator=generator))  # a CPU tensor: no sync
        generator = torch.Generator(device=device).manual_seed(seed)
    diagonal = torch.zeros(dim, dtype=torch.float64, device=device)
    quadratic = []
    for _ in range(probes):
        signs = torch.randint(0, 2, (dim,), generator=generator, device=device)
        v = signs.to(torch.float64).mul_(2).sub_(1)
        product = v * matvec(v)
        diagonal += product
        quadratic.append(product.sum())
    values = torch.stack(quadratic)
    stderr = (
        values.std() / math.sqrt(probes) if probes > 1 else torch.full_like(values[0], math.inf)
    )
    return DiagonalEstimate(diagonal / probes, stderr)


DIAGONAL_METHODS = {"exact": "diag_h", "ggn": "diag_ggn_exact", "mc-ggn": "diag_ggn_mc"}


class DiagonalCurvature:
    """Hessian diagonal (``exact``), exact GGN diagonal (``ggn``) or its one-sample Monte-Carlo
    estimate (``mc-ggn``) by BackPACK, on a private extended copy of the model (the user's model is
    never extended, so untracked steps pay nothing)."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, method: str = "exact") -> None:
        if method not in DIAGONAL_METHODS:
            raise ValueError(f"curvature must be one of {sorted(DIAGONAL_METHODS)}, got {method!r}")
        from backpack import extend

        self.method = method
        shadow = copy.deepcopy(model)
        for module in shadow.modules():  # the user's own hooks stay on the user's model
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
            module._backward_hooks.clear()
        self.shadow = extend(shadow)
        self.loss_fn = extend(copy.deepcopy(loss_fn))

    def _extension(self):
        from backpack.extensions import DiagGGNExact, DiagGGNMC, DiagHessian

        return {"exact": DiagHessian, "ggn": DiagGGNExact, "mc-ggn": DiagGGNMC}[self.method]()

    def __call__(
        self,
        model: nn.Module,
        model_input: ModelInput,
        target: Tensor,
        seed: int,
        names: Sequence[str],
    ) -> list[Tensor]:
        """Diagonal per parameter named in ``names`` (names of ``model.named_parameters``)."""
        from backpack import backpack

        shadow_params = dict(self.shadow.named_parameters())
        with torch.no_grad():
            for (_name, p), (_, s) in zip(model.named_parameters(), self.shadow.named_parameters()):
                s.copy_(p)
            for b, s in zip(model.buffers(), self.shadow.buffers()):
                s.copy_(b)
        self.shadow.train(model.training)
        loss = replay_loss(self.shadow, self.loss_fn, model_input, target)
        with private_rng(seed), backpack(self._extension()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        attribute = DIAGONAL_METHODS[self.method]
        diagonals = [getattr(shadow_params[name], attribute).detach().clone() for name in names]
        for p in self.shadow.parameters():
            p.grad = None
            if hasattr(p, attribute):
                delattr(p, attribute)
        return diagonals
