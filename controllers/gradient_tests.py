"""``GradientTestBatchSize``: batch growth by the norm test (Byrd, Chin, Nocedal, Wu 2012) or the
augmented inner-product test (Bollapragada, Byrd, Nocedal 2018)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

from .base import Action, Controller, Steerable, reading
from .sampler import AdaptiveBatchSampler

__all__ = ["DEFAULT_NU", "GradientTestBatchSize"]

#: ``tan(80 deg) = 5.671``, the orthogonality threshold of Bollapragada et al. (2018).  (The Cockpit
#: paper, App. B.6.3, prints "~ 5.84"; the value of tan 80 deg is 5.671.)
DEFAULT_NU = math.tan(math.radians(80.0))

# test name -> (record key, power p of G = ||g||^2 in the variance estimate).
_READINGS = {"norm": ("NormTest", 1), "inner": ("InnerTest", 2), "ortho": ("OrthoTest", 1)}
_TESTS = {"norm": ("norm",), "augmented": ("inner", "ortho")}


class GradientTestBatchSize(Controller):
    """Grow the batch size when the gradient test fails (paper App. B.6); never shrink it.

    With ``G = ||g||^2`` (``GradNorm^2``) and the record's batch size ``B``, the test readings give
    the sample variances of the individual gradients that the tests bound:

    * norm test (Byrd et al. 2012, eq. 19):
      ``Var_norm = sum_n ||g_n - g||^2 / (B-1) = NormTest^2 * B * G``,
      bound ``Var_norm / (B G) <= theta^2``;
    * inner-product test (Bollapragada et al. 2018, eq. 22):
      ``Var_inner = sum_n (g_n.g - G)^2 / (B-1) = InnerTest^2 * B * G^2``,
      bound ``Var_inner / (B G^2) <= theta^2``;
    * orthogonality test (Bollapragada et al. 2018, eq. 25, residual form):
      ``Var_ortho = sum_n ||g_n - (g_n.g / G) g||^2 / (B-1) = OrthoTest^2 * B * G``,
      bound ``Var_ortho / (B G) <= nu^2``.

    ``test="norm"`` uses the first, ``"augmented"`` the other two.  The estimates of the last
    ``average_over`` valid records are averaged (numerators and denominators separately), and each
    test asks for the batch size that satisfies its bound,

        B_norm = ceil(mean Var_norm / (theta^2 mean G)),
        B_inner = ceil(mean Var_inner / (theta^2 mean G^2)),
        B_ortho = ceil(mean Var_ortho / (nu^2 mean G)),

    (for one record ``B_norm = ceil(B * NormTest^2 / theta^2)``: the test fails exactly when
    ``NormTest > theta``).  When the largest requirement exceeds the sampler's batch size, the
    sampler grows to it, capped at ``max_batch_size``.  Comparing with the sampler's size (not the
    record's) keeps batches already prefetched at the old size from triggering a second growth.

    Args:
        sampler: the :class:`AdaptiveBatchSampler` feeding the training loop.
        test: ``"norm"`` or ``"augmented"``.
        theta: threshold of the norm and inner-product tests (0.9 in both papers).
        nu: threshold of the orthogonality test (``tan 80 deg``).
        max_batch_size: cap of the batch size, at most (and by default) the sampler's data set
            size.
        average_over: number of valid records whose estimates are averaged.
    """

    def __init__(
        self,
        sampler: AdaptiveBatchSampler,
        *,
        test: Literal["norm", "augmented"] = "norm",
        theta: float = 0.9,
        nu: float = DEFAULT_NU,
        max_batch_size: int | None = None,
        average_over: int = 1,
    ) -> None:
        if test not in _TESTS:
            raise ValueError(f"test must be one of {sorted(_TESTS)}, got {test!r}")
        if not (theta > 0 and nu > 0):
            raise ValueError(f"theta and nu must be positive, got {theta}, {nu}")
        if average_over < 1:
            raise ValueError(f"average_over must be at least 1, got {average_over}")
        self.sampler = sampler
        self.test, self.theta, self.nu = test, float(theta), float(nu)
        size = sampler.num_samples
        self.max_batch_size = size if max_batch_size is None else min(int(max_batch_size), size)
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        self.average_over = int(average_over)
        self.instruments = (*(_READINGS[t][0] for t in _TESTS[test]), "GradNorm")
        # per valid record: [Var, G^p] for each test of _TESTS[test]
        self._window: deque[list[float]] = deque(maxlen=self.average_over)

    def _threshold(self, name: str) -> tuple[str, float]:
        return ("nu", self.nu) if name == "ortho" else ("theta", self.theta)

    def observe(self, record: Mapping[str, Any], optimizer: Steerable) -> list[Action]:
        batch, norm = reading(record, "batch_size"), reading(record, "GradNorm")
        norm2 = norm * norm  # products, not powers: they overflow to inf instead of raising
        values = {t: reading(record, _READINGS[t][0]) for t in _TESTS[self.test]}
        if not (batch >= 2 and math.isfinite(norm2) and norm2 > 0):
            return []
        if not all(math.isfinite(v) for v in values.values()):
            return []
        estimates = []
        for name, value in values.items():
            scale = math.prod([norm2] * _READINGS[name][1])
            estimates += [value * value * batch * scale, scale]
        if not all(math.isfinite(e) for e in estimates) or min(estimates[1::2]) <= 0:
            return []  # G or G^2 over- or underflows
        self._window.append(estimates)
        if len(self._window) < self.average_over:
            return []
        means = [sum(column) / len(self._window) for column in zip(*self._window)]
        needed, reasons = [], []
        for i, (name, value) in enumerate(values.items()):
            symbol, threshold = self._threshold(name)
            needed.append(means[2 * i] / (threshold**2 * means[2 * i + 1]))
            reasons.append(
                f"{_READINGS[name][0]}={value:.4g} vs {symbol}={threshold:.4g} "
                f"(needs batch size >= {needed[-1]:.4g})"
            )
        old = self.sampler.batch_size
        new = math.ceil(min(max(needed), self.max_batch_size))
        if new <= old:
            return []
        self.sampler.set_batch_size(new)
        why = (
            f"{'; '.join(reasons)} at batch size {int(batch)}, mean of {len(self._window)} "
            f"record(s), cap {self.max_batch_size}"
        )
        return [self.action(record, "batch_size", old, new, why)]

    def state_dict(self) -> dict[str, Any]:
        """The window of variance estimates and the sampler's batch size."""
        return {"window": [list(e) for e in self._window], "batch_size": self.sampler.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._window = deque((list(e) for e in state["window"]), maxlen=self.average_over)
        self.sampler.set_batch_size(state["batch_size"])
