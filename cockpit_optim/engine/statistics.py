"""The statistics engine: from one recorded forward/backward pass, compute once the union of what the
active instruments request and hand them a :class:`~cockpit_optim.contract.Statistics`.

It owns the hooks (:mod:`.capture`), turns the recorded calls into the step's samples and layer
rules (:mod:`.samples`), and delegates to its three parts: first-order statistics
(:mod:`.first_order`), the histogram sampler (:mod:`.histogram_sampler`) and curvature
(:mod:`.second_order`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..contract import Request, Statistics
from ..errors import UnsupportedModelError, warn_reading
from ..transfer import HostTransfer
from .capture import Capture
from .combiner import LocalCombiner
from .first_order import PROVIDES, first_order, grad_norms, project
from .histogram_sampler import HistogramSampler
from .samples import StepSamples, assemble, at_loss_call
from .second_order import SecondOrder


class StatisticsEngine:
    """Owns the hooks and computes :class:`Statistics` for a recorded step.

    ``request`` is what the instruments may ask for (its curvature options fix the curvature
    part at construction); ``collect`` takes the request of each step."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        named_params: list[tuple[str, Tensor]],
        generator: torch.Generator,
        request: Request | None = None,
        sample_seed: int = 0,
        combiner: LocalCombiner | None = None,
        batchnorm_approximation: bool = False,
    ) -> None:
        request = request or Request()
        self.model, self.loss_fn = model, loss_fn
        self.names = [name for name, _ in named_params]
        self.params = [param for _, param in named_params]
        self.transfer = HostTransfer()  # the step's one device-to-host read
        self.combiner = combiner or LocalCombiner()
        # Replays run the plain module: a DistributedDataParallel wrapper expects a backward.
        replay_model = getattr(model, "module", model) if _is_ddp(model) else model
        self.second_order = SecondOrder(
            replay_model, loss_fn, self.names, self.params, generator, self.combiner, request
        )
        self.histograms = HistogramSampler(self.params, sample_seed, self.combiner)
        self.batchnorm_approximation = batchnorm_approximation
        self.capture = Capture(
            model,
            loss_fn,
            {id(p): n for n, p in named_params},
            on_loss=lambda call, prediction, target: at_loss_call(
                loss_fn, self.capture, self.params, call, prediction, target
            ),
            params=self.params,
        )
        self.samples = StepSamples()
        self.local_batch = 0
        self._batchnorms = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    # ------------------------------------------------------------------------- checks
    @property
    def approximate(self) -> bool:
        """Whether readings rest on the train-mode BatchNorm approximation."""
        return self.batchnorm_approximation and any(m.training for _, m in self._batchnorms)

    def _check_batchnorm(self) -> None:
        if self.batchnorm_approximation:
            return
        for name, module in self._batchnorms:
            if module.training:
                raise UnsupportedModelError(
                    f"BatchNorm layer '{name}' is in train mode: it mixes the samples of a batch, "
                    "so individual gradients are not defined. Put it in eval mode "
                    f"(model.{name}.eval()), replace it by GroupNorm/LayerNorm, or accept an "
                    "approximation with MonitoredOptimizer(..., batchnorm_approximation=True)."
                )

    def _agree(self, samples: StepSamples) -> None:
        """Ranks agree on what failed before the collectives that depend on it (one small
        all-reduce): a failure on any rank is a failure on every rank, never a mismatch."""
        device = self.params[0].device
        flags = torch.tensor(
            [samples.loss_problem is not None, samples.problem is not None],
            dtype=torch.float64,
            device=device,
        )
        (summed,) = self.combiner.sum([flags])
        losses_failed, grads_failed = (value > 0 for value in summed.tolist())
        elsewhere = "failed on another rank"
        if losses_failed and samples.loss_problem is None:
            samples.loss_problem = samples.problem = elsewhere
            samples.losses = None
        if grads_failed and samples.problem is None:
            samples.problem = elsewhere
        if samples.problem is not None:
            samples.rules = []

    # ------------------------------------------------------------------------ collect
    def collect(self, request: Request, lr: float, step: int = 0) -> Statistics:
        """Compute the requested statistics from the recorded pass (parameters still at
        ``theta_t``).  Scalars are queued on ``self.transfer`` (no host read here); ``step`` seeds
        the histogram draws, so a resumed run draws exactly as an uninterrupted one."""
        self.samples = StepSamples()
        device = self.params[0].device
        if not request.captures:
            stats = Statistics(batch_size=0, names=self.names, lr=lr, transfer=self.transfer)
        else:
            self._check_batchnorm()
            with self.capture.suspended(), torch.autocast(device.type, enabled=False):
                self.samples = assemble(self.loss_fn, self.capture, self.params, self.names)
            if self.combiner.world_size > 1:
                self._agree(self.samples)
            local = self.samples.losses
            if local is None:
                local = torch.zeros(0, dtype=torch.float64, device=device)
            self.local_batch = local.numel()
            (losses,) = self.combiner.gather([local])
            stats = Statistics(
                batch_size=losses.numel(),
                names=self.names,
                lr=lr,
                losses=losses if self.samples.loss_problem is None else None,
                transfer=self.transfer,
                project=self.project,
            )
            if self.samples.loss_problem is not None:
                stats.unavailable["losses"] = self.samples.loss_problem
            if self.samples.unused:
                _warn_unused(self.samples.unused)
        if request.grad_norms:
            stats.grad_norms = grad_norms(self.params, self.names, self.transfer)
        if request.first_order or request.projection is not None:
            if self.samples.problem is not None:
                for key in PROVIDES:
                    stats.unavailable[key] = self.samples.problem
            else:
                first_order(
                    request, stats, self.samples.rules, self.names, self.local_batch,
                    self.combiner, self.transfer, device,
                )  # fmt: skip
                if request.hist1d is not None or request.hist2d is not None:
                    self.histograms.sample(
                        request, stats, self.samples.rules, self.local_batch, step,
                        self.transfer,
                    )  # fmt: skip
        if request.second_order:
            self.second_order.compute(
                request, stats, self.samples, self.local_batch, self.capture, self.transfer
            )
        return stats

    def project(self, direction: list[Tensor]) -> Tensor | None:
        """``g_n . v`` (float64, shape ``[B]``, global batch) for the recorded step, or ``None``
        if unavailable."""
        if self.samples.problem is not None:
            return None
        return project(self.samples.rules, self.names, direction, self.combiner)

    def release(self) -> None:
        """Free everything recorded at this step."""
        self.samples = StepSamples()
        self.capture.clear()


def _warn_unused(names: list[str]) -> None:
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    warn_reading(
        f"parameter(s) without gradient at a tracked step: {shown}; their individual gradients "
        "count as zero (the optimizer skips them)"
    )


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)
