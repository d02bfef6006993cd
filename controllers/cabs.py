"""``CABSBatchSize``: coupling adaptive batch sizes with learning rates (Balles, Romero, Hennig 2017)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .base import Action, Controller, Steerable, reading
from .sampler import AdaptiveBatchSampler

__all__ = ["CABSBatchSize"]


class CABSBatchSize(Controller):
    """Set the batch size to ``c * lr * tr(Sigma) / (L - floor)`` (paper App. B.3, eqs. 11-12).

    CABS (Balles, Romero & Hennig, UAI 2017) chooses the batch size that approximately maximizes
    the expected gain per sample of plain SGD: ``B = lr * tr(Sigma_P) / L_P``, with the population
    gradient covariance ``Sigma_P`` and loss ``L_P`` estimated on the mini-batch.  The record's
    reading ``CABS = lr_t * sum_d (M_d - g_d^2) / L_t`` gives back

        tr(Sigma_t) = CABS_t * L_t / lr_t        (= (B-1)/B times the unbiased trace estimate).

    Numerator and denominator are averaged separately with an exponential moving average,
    ``N <- s N + (1 - s) tr(Sigma_t)``, ``D <- s D + (1 - s) L_t`` (the first reading initializes
    them), and after every valid record the sampler's batch size becomes

        B = clip(round(c * lr * N / (D - loss_floor)), min_batch_size, max_batch_size),

    where ``lr`` is the current learning rate of the first parameter group (the rate the new batch
    size will be used with).  ``loss_floor`` is a known lower bound of the loss (0 for most losses);
    records where ``D <= loss_floor`` are skipped.  The batch size is at most the sampler's data
    set size (``max_batch_size`` is capped at it).

    The rule is derived for plain SGD.  For ``torch.optim.SGD`` with momentum ``beta`` (and
    dampening ``d``) it uses the effective learning rate ``lr * (1 - d) / (1 - beta)``, the step
    that heavy-ball momentum takes per unit gradient once the gradient stays constant (a
    heuristic: CABS does not model momentum); any other optimizer uses ``lr`` as it is (again a
    heuristic).  Both cases get one warning that says which rate is used.

    Args:
        sampler: the :class:`AdaptiveBatchSampler` feeding the training loop.
        factor: the constant ``c`` (1 in the paper).
        smoothing: ``s``, the EMA factor of numerator and denominator.
        min_batch_size, max_batch_size: bounds of the batch size (both at most the data set
            size of ``sampler``).
        loss_floor: subtracted from the averaged loss.
    """

    instruments = ("CABS", "Loss")

    def __init__(
        self,
        sampler: AdaptiveBatchSampler,
        *,
        factor: float = 1.0,
        smoothing: float = 0.95,
        min_batch_size: int = 16,
        max_batch_size: int = 2048,
        loss_floor: float = 0.0,
    ) -> None:
        if not factor > 0:
            raise ValueError(f"factor must be positive, got {factor}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"need 1 <= min_batch_size <= max_batch_size, got {min_batch_size}, {max_batch_size}"
            )
        self.sampler = sampler
        self.factor, self.smoothing = float(factor), float(smoothing)
        self.max_batch_size = min(int(max_batch_size), sampler.num_samples)
        self.min_batch_size = min(int(min_batch_size), self.max_batch_size)
        self.loss_floor = float(loss_floor)
        self.numerator: float | None = None
        self.denominator: float | None = None
        self._warned = False

    @staticmethod
    def momentum_factor(optimizer: Steerable) -> float:
        """``(1 - d) / (1 - beta)`` of ``torch.optim.SGD`` (first parameter group), else 1."""
        inner = getattr(optimizer, "optimizer", optimizer)
        if not isinstance(inner, torch.optim.SGD):
            return 1.0
        group = inner.param_groups[0]
        beta, dampening = float(group.get("momentum", 0)), float(group.get("dampening", 0))
        return (1.0 - dampening) / (1.0 - beta) if 0 < beta < 1 else 1.0

    def _check_optimizer(self, optimizer: Steerable) -> None:
        self._warned = True
        inner = getattr(optimizer, "optimizer", optimizer)
        name = type(inner).__name__
        if isinstance(inner, torch.optim.SGD):
            beta = float(inner.param_groups[0].get("momentum", 0))
            if beta == 0:
                return
            rate = f"the effective learning rate lr * (1 - dampening) / (1 - {beta:g})"
            why = f"{name} with momentum={beta:g}"
        else:
            rate, why = "the optimizer's lr as it is", name
        warnings.warn(
            f"CABSBatchSize's rule B = lr * tr(Sigma) / L is derived for SGD without momentum; "
            f"with {why} it uses {rate}, a heuristic",
            UserWarning,
            stacklevel=3,
        )

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else self.smoothing * old + (1.0 - self.smoothing) * new

    def observe(self, record: Mapping[str, Any], optimizer: Steerable) -> list[Action]:
        if not self._warned:
            self._check_optimizer(optimizer)
        cabs, loss, lr_then = (
            reading(record, "CABS"),
            reading(record, "Loss"),
            reading(record, "lr"),
        )
        if not (math.isfinite(cabs) and math.isfinite(loss) and math.isfinite(lr_then)):
            return []
        if lr_then <= 0:
            return []
        self.numerator = self._average(self.numerator, cabs * loss / lr_then)
        self.denominator = self._average(self.denominator, loss)
        excess = self.denominator - self.loss_floor
        momentum = self.momentum_factor(optimizer)
        lr = float(optimizer.param_groups[0]["lr"]) * momentum
        if not excess > 0 or not lr > 0:
            return []
        target = self.factor * lr * self.numerator / excess
        new = round(min(max(target, self.min_batch_size), self.max_batch_size))
        old = self.sampler.batch_size
        if new == old:
            return []
        self.sampler.set_batch_size(new)
        why = (
            f"CABS={cabs:.4g} (lr={lr_then:.4g}, Loss={loss:.4g}): "
            f"{self.factor:g} * {'effective ' if momentum != 1 else ''}lr={lr:.4g} * "
            f"tr(Sigma)={self.numerator:.4g} / "
            f"(L={self.denominator:.4g} - floor={self.loss_floor:g}) = {target:.4g}, "
            f"bounds [{self.min_batch_size}, {self.max_batch_size}]"
        )
        return [self.action(record, "batch_size", old, new, why)]

    def state_dict(self) -> dict[str, Any]:
        """The averaged numerator and denominator and the sampler's batch size."""
        return {
            "numerator": self.numerator,
            "denominator": self.denominator,
            "batch_size": self.sampler.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.numerator, self.denominator = state["numerator"], state["denominator"]
        self.sampler.set_batch_size(state["batch_size"])
