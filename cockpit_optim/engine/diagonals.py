"""Which curvature serves the trace and the curvature diagonal at a step, and computing it.

``curvature`` (a request's option) selects:

=========  ==========================================  =========================================
option     trace                                       curvature diagonal
=========  ==========================================  =========================================
exact      ``Tr(H)``: exact diagonal where known, else  exact ``diag H`` where it equals the GGN's
           the deflated adaptive estimate              (piecewise-linear networks), else the GGN
                                                       diagonal: exact up to 16 output entries per
                                                       sample, Monte-Carlo above (non-negative)
hessian    as ``exact``                                ``diag H``: exact where known, else a
                                                       Hutchinson estimate (may be negative)
ggn        ``Tr(G)``, exact                            exact GGN diagonal
mc-ggn     ``Tr`` of the Monte-Carlo GGN diagonal      Monte-Carlo GGN diagonal
=========  ==========================================  =========================================

The curvature used is named in the statistics (``trace.curvature``, ``curvature_name``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..contract import CURVATURES, TraceEstimate
from .capture import ModelInput
from .ggn import any_ggn_diagonal, ggn_diagonal
from .ggn import supports as ggn_supports
from .hessian import DiagonalCurvature, hutchinson
from .trace import deflated_trace, device_generator


class CurvatureDiagonals:
    """The trace and curvature diagonal of the engine's curvature part (see module)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        names: list[str],
        params: list[Tensor],
        generator: torch.Generator,
        combiner,
        curvature: str = "exact",
        enabled: bool = False,
        probes: int = 16,
    ) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        self.model, self.loss_fn = model, loss_fn
        self.names, self.params = names, params
        self.generator, self.combiner = generator, combiner
        self.curvature, self.probes = curvature, probes
        # exact diag H (= diag G) by GGN passes: Linear/Conv with piecewise-linear activations
        self.piecewise = enabled and ggn_supports(model, loss_fn, "exact")
        self.sequence_ggn = enabled and ggn_supports(model, loss_fn, "ggn")
        # BackPACK's exact Hessian diagonal for other sequences, on a copy made before any hook
        self.backpack = None
        self.problem = "the model is not an nn.Sequential of layers with an exact Hessian diagonal"
        if enabled and curvature in ("exact", "hessian") and isinstance(model, nn.Sequential):
            if not self.piecewise:
                try:
                    self.backpack = DiagonalCurvature(model, loss_fn, "exact")
                except RuntimeError as error:  # e.g. non-leaf tensors held by the model
                    self.problem = f"the model cannot be copied for BackPACK ({error})"

    # ------------------------------------------------------------------- diagonals
    def _weighted(self, diagonal: list[Tensor], weight: float) -> list[Tensor]:
        return self.combiner.sum([d * weight for d in diagonal])

    def hessian(
        self, model_input: ModelInput, target: Tensor, weight: float
    ) -> list[Tensor] | None:
        """The exact Hessian diagonal, where one of the exact paths applies."""
        if self.piecewise:
            by_id = ggn_diagonal(self.model, self.loss_fn, model_input, target)
            if by_id is not None and all(id(p) in by_id for p in self.params):
                return self._weighted([by_id[id(p)] for p in self.params], weight)
        if self.backpack is not None:
            try:
                own = {id(p): n for n, p in self.model.named_parameters()}  # DDP: no prefix
                names = [own[id(p)] for p in self.params]
                local = self.backpack(self.model, model_input, target, 0, names)
                return self._weighted(local, weight)
            except Exception as error:  # BackPACK raises for modules it does not support
                self.problem = f"BackPACK cannot handle the model ({error})"
                self.backpack = None
        return None

    def ggn(
        self, model_input: ModelInput, target: Tensor, weight: float, exact: bool | None
    ) -> tuple[list[Tensor] | None, str]:
        """The GGN diagonal (``exact=None``: exact for few output entries) and its name, or
        ``None`` and the reason."""
        if exact is True and self.sequence_ggn:
            by_id = ggn_diagonal(self.model, self.loss_fn, model_input, target)
            if by_id is not None and all(id(p) in by_id for p in self.params):
                return self._weighted([by_id[id(p)] for p in self.params], weight), "ggn"
        generator = device_generator(self.generator, self.params[0].device)
        monitored = {id(p): n for p, n in zip(self.params, self.names)}
        by_name, method = any_ggn_diagonal(
            self.model, self.loss_fn, model_input, target, monitored, exact, generator
        )
        if by_name is None:
            return None, f"no GGN diagonal: {method}"
        return self._weighted([by_name[n] for n in self.names], weight), method

    # -------------------------------------------------------------------- readings
    def trace(
        self, model_input, target, weight: float, hvp, rtol: float, max_products: int, cache: dict
    ) -> tuple[TraceEstimate | list[Tensor] | None, str]:
        """The trace: an estimate, or a diagonal to sum (with its name), or ``None`` and the
        reason."""
        if self.curvature in ("ggn", "mc-ggn"):
            return self._cached_ggn(cache, model_input, target, weight, self.curvature == "ggn")
        diagonal = self._cached_hessian(cache, model_input, target, weight)
        if diagonal is not None:
            return diagonal, "exact"
        matvec = hvp()
        estimate = deflated_trace(
            matvec, matvec.dim, self.params[0].detach().reshape(-1), self.generator,
            rtol=rtol, max_products=max_products,
        )  # fmt: skip
        return estimate, "estimate"

    def diagonal(
        self, model_input, target, weight: float, hvp, cache: dict
    ) -> tuple[list[Tensor] | None, str]:
        """The curvature diagonal and its name, or ``None`` and the reason."""
        if self.curvature in ("ggn", "mc-ggn"):
            return self._cached_ggn(cache, model_input, target, weight, self.curvature == "ggn")
        if self.curvature == "exact" and not self.piecewise:
            return self._cached_ggn(cache, model_input, target, weight, None)
        diagonal = self._cached_hessian(cache, model_input, target, weight)
        if diagonal is not None:
            return diagonal, "exact"
        estimate = hutchinson(hvp(), self.probes, self.generator)
        pieces = estimate.diagonal.split([p.numel() for p in self.params])
        return [d.reshape(p.shape).to(p.dtype) for d, p in zip(pieces, self.params)], "hutchinson"

    def _cached_hessian(self, cache: dict, model_input, target, weight):
        if "hessian" not in cache:
            cache["hessian"] = self.hessian(model_input, target, weight)
        return cache["hessian"]

    def _cached_ggn(self, cache: dict, model_input, target, weight, exact):
        key = ("ggn", exact)
        if key not in cache:
            cache[key] = self.ggn(model_input, target, weight, exact)
        return cache[key]
