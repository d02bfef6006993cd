"""The curvature part of the engine: the curvature diagonal and trace (:mod:`.diagonals`) and the
largest Hessian eigenvalue (Lanczos, :mod:`.hessian`) of a recorded step, from one replayed graph
shared by every Hessian-vector product."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from ..contract import EigenRequest, EigenResult, Request, Statistics, TraceEstimate
from ..transfer import HostTransfer
from .capture import Capture
from .combiner import LocalCombiner
from .diagonals import CurvatureDiagonals
from .hessian import HessianVectorProduct, lanczos_max_eigenvalue, replay_loss
from .samples import StepSamples

# Lanczos basis: as many vectors as fit in LANCZOS_BYTES, within these bounds.
LANCZOS_BYTES = 2**30
MIN_LANCZOS_BASIS, MAX_LANCZOS_BASIS = 8, 24
_KEYS = ("curvature_diagonal", "max_eigenvalue", "trace")


class SecondOrder:
    """Curvature statistics of the recorded step (parameters still at ``theta_t``)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        names: list[str],
        params: list[Tensor],
        generator: torch.Generator,
        combiner: LocalCombiner,
        request: Request,
    ) -> None:
        self.model, self.loss_fn, self.params = model, loss_fn, params
        self.generator, self.combiner = generator, combiner
        # a BackPACK copy, if any, is made here: before any hook exists
        self.diagonals = CurvatureDiagonals(
            model, loss_fn, names, params, generator, combiner,
            request.curvature or "exact",
            enabled=request.curvature_diagonal or request.trace is not None,
            probes=request.probes or 16,
        )  # fmt: skip

    def compute(
        self,
        request: Request,
        stats: Statistics,
        samples: StepSamples,
        local_batch: int,
        capture: Capture,
        transfer: HostTransfer,
    ) -> None:
        batches = samples.batches
        problem = samples.loss_problem
        if problem is None and len(batches) != 1:
            problem = f"curvature is computed for one model call per step, not {len(batches)}"
        elif problem is None and not samples.row_samples:
            problem = "curvature is computed for samples that are rows of the model's batch"
        elif problem is None and batches[0].model_input is None:
            problem = "the model's forward call was not recorded"
        if problem is not None:
            for key in _KEYS:
                stats.unavailable[key] = problem
            return
        model_input, target = batches[0].model_input, batches[0].loss.target
        weight = local_batch / stats.batch_size  # global batch: the sum over ranks
        products: list[HessianVectorProduct] = []

        def hvp() -> HessianVectorProduct:  # one replayed graph serves every product
            if not products:
                loss = replay_loss(self.model, self.loss_fn, model_input, target)
                products.append(HessianVectorProduct(loss, self.params, self.combiner, weight))
            return products[0]

        cache: dict = {}
        with capture.suspended():
            if request.trace is not None:
                self._trace(request, stats, model_input, target, weight, hvp, cache, transfer)
            if request.curvature_diagonal:
                try:
                    diagonal, name = self.diagonals.diagonal(
                        model_input, target, weight, hvp, cache
                    )
                except RuntimeError as error:
                    diagonal, name = None, f"Hessian-vector products failed ({error})"
                if diagonal is None:
                    stats.unavailable["curvature_diagonal"] = name
                else:
                    stats.curvature_diagonal, stats.curvature_name = diagonal, name
            if request.max_eigenvalue is not None:
                try:
                    stats.max_eigenvalue = self._max_eigenvalue(hvp(), request.max_eigenvalue)
                except RuntimeError as error:  # non-finite curvature makes the solver fail
                    stats.unavailable["max_eigenvalue"] = f"Lanczos failed ({error})"

    def _trace(self, request, stats, model_input, target, weight, hvp, cache, transfer) -> None:
        try:
            value, name = self.diagonals.trace(
                model_input, target, weight, hvp, request.trace.rtol,
                request.trace.max_products, cache,
            )  # fmt: skip
        except RuntimeError as error:  # non-finite curvature, failing products
            value, name = None, f"Hessian-vector products failed ({error})"
        if value is None:
            stats.unavailable["trace"] = name
        elif isinstance(value, TraceEstimate):
            value.curvature = name
            stats.trace = value
        else:  # an exact diagonal: its sum
            total = torch.stack([d.double().sum() for d in value]).sum()
            stats.trace = transfer.defer(
                total, convert=lambda v, n=name: TraceEstimate(v[0], 0.0, 0, True, n)
            )

    def _max_eigenvalue(self, hvp: HessianVectorProduct, spec: EigenRequest) -> EigenResult:
        """Lanczos on Hessian-vector products from ``spec.start`` (a warm start) or a random
        vector (Krylov basis in the parameters' dtype: twice-reorthogonalized float32 vectors are
        accurate far below the 1e-3 tolerance, at half the memory of float64)."""
        dtype = self.params[0].dtype
        start = spec.start
        if start is None or start.numel() != hvp.dim:
            start = torch.randn(hvp.dim, generator=self.generator, dtype=dtype)
        start = start.to(device=self.params[0].device, dtype=dtype)
        vector_bytes = start.numel() * start.element_size()
        result = lanczos_max_eigenvalue(
            hvp,
            start,
            rtol=spec.rtol,
            max_iter=spec.max_iter,
            max_basis=max(MIN_LANCZOS_BASIS, min(MAX_LANCZOS_BASIS, LANCZOS_BYTES // vector_bytes)),
        )
        if not math.isfinite(result.value):  # no warm start from a failed run
            return replace(result, vector=None)
        return result
