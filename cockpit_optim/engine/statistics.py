"""The statistics engine: from one recorded forward/backward pass, compute once the union of what the
active instruments request, layer by layer, and hand instruments a :class:`Statistics` object."""

from __future__ import annotations

import hashlib
import math
import random

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError, warn_reading
from .capture import Capture
from .curvature import EigenResult, HessianVectorProduct, lanczos_max_eigenvalue, replay_loss
from .diagonals import CurvatureDiagonals
from .distributed import LocalCombiner
from .histograms import (
    Bounds,
    bin_edges,
    counts_1d,
    counts_2d,
    draw_elements,
    expected_l1,
    record_1d,
    record_2d,
    table_rows,
)
from .layers import LayerRule
from .request import HistogramRequest, Request, Statistics
from .samples import StepSamples, assemble, at_loss_call
from .trace import TraceEstimate
from .transfer import HostTransfer

# Default gradient range of the histograms: +- this many RMS values of all elements g_{n,d}.
ADAPTIVE_RANGE_RMS = 6.0
# Subsampled histograms: the expected L1 error the draws aim for, the number of draws at the
# first tracked step, and the floor later (each step draws what the previous one needed).
TARGET_L1 = 0.0075
FIRST_DRAWS = 2**19
MIN_DRAWS = 2**15
# Lanczos basis for HessMaxEV: as many vectors as fit in LANCZOS_BYTES, within these bounds.
LANCZOS_BYTES = 2**30
MIN_LANCZOS_BASIS, MAX_LANCZOS_BASIS = 8, 24


class StatisticsEngine:
    """Owns the hooks and computes :class:`Statistics` for a recorded step."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        named_params: list[tuple[str, Tensor]],
        generator: torch.Generator,
        sample_seed: int = 0,
        combiner: LocalCombiner | None = None,
        curvature: str = "exact",
        diagonal: bool = False,
        eigen_rtol: float = 1e-3,
        eigen_max_iter: int = 100,
        hutchinson_probes: int = 16,
        batchnorm_approximation: bool = False,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.names = [name for name, _ in named_params]
        self.params = [param for _, param in named_params]
        self.generator = generator  # identical on all ranks: probes, start vectors, seeds
        self.sample_seed = sample_seed  # per rank: histogram draws, seeded per step from it
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._step = 0  # the step being collected (seeds the histogram draws)
        self.transfer = HostTransfer()  # the step's one device-to-host read
        self.combiner = combiner or LocalCombiner()
        # Replays run the plain module: a DistributedDataParallel wrapper expects a backward.
        self.replay_model = getattr(model, "module", model) if _is_ddp(model) else model
        # HessTrace and TIC curvature; a BackPACK copy, if any, is made before any hook exists.
        self.diagonals = CurvatureDiagonals(
            self.replay_model, loss_fn, self.names, self.params, generator, self.combiner,
            curvature, enabled=diagonal, probes=hutchinson_probes,
        )  # fmt: skip
        self._ggn_exact = self.diagonals.piecewise
        self.batchnorm_approximation = batchnorm_approximation
        self.histogram_draws = FIRST_DRAWS  # draws of the next subsampled histogram
        self.curvature = curvature
        self.eigen_rtol, self.eigen_max_iter = eigen_rtol, eigen_max_iter
        self.eigenvector: Tensor | None = None  # warm start of the next Lanczos run
        self.capture = Capture(
            model,
            loss_fn,
            {id(p): n for n, p in named_params},
            on_loss=lambda call, prediction, target: at_loss_call(
                loss_fn, self.capture, self.params, call, prediction, target
            ),
            params=self.params,
        )
        self._rules: list[tuple[LayerRule, list[str]]] = []
        self.samples = StepSamples()
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
    def collect(
        self, request: Request, lr: float, direction: list[Tensor] | None = None, step: int = 0
    ) -> Statistics:
        """Compute the requested statistics from the recorded pass (parameters still at theta_t);
        with ``direction``, also ``g_n . direction`` (``stats.projection``) in the same pass.
        Scalars are queued on ``self.transfer`` (no host read here); ``step`` seeds the
        histogram draws, so a resumed run draws exactly as an uninterrupted one."""
        self._step = step
        self.samples = StepSamples()
        if not (request.captures or direction is not None):
            stats = Statistics(batch_size=0, names=self.names, lr=lr, transfer=self.transfer)
        else:
            self._check_batchnorm()
            with self.capture.suspended(), torch.autocast(self.params[0].device.type, enabled=False):
                self.samples = assemble(self.loss_fn, self.capture, self.params, self.names)
            if self.combiner.world_size > 1:
                self._agree(self.samples)
            local = self.samples.losses
            if local is None:
                local = torch.zeros(0, dtype=torch.float64, device=self.params[0].device)
            self.local_batch = local.numel()
            (losses,) = self.combiner.gather([local])
            stats = Statistics(
                batch_size=losses.numel(),
                names=self.names,
                lr=lr,
                losses=losses if self.samples.loss_problem is None else None,
                transfer=self.transfer,
            )
            if self.samples.loss_problem is not None:
                stats.unavailable["losses"] = self.samples.loss_problem
            if self.samples.unused:
                _warn_unused(self.samples.unused)
        if request.grad_norms:
            norms = torch.stack(
                [
                    torch.linalg.vector_norm(_grad(p), dtype=torch.float64)
                    for p in self.params
                ]
            )
            stats.grad_norms = self.transfer.defer(
                norms, convert=lambda values: dict(zip(self.names, values))
            )
        if request.first_order or request.projection or direction is not None:
            self._first_order(request, stats, direction)
        if request.diagonal or request.max_eigenvalue or request.trace is not None:
            self._curvature(request, stats)
        return stats

    def _first_order(
        self, request: Request, stats: Statistics, direction: list[Tensor] | None
    ) -> None:
        rules, problem = self.samples.rules, self.samples.problem
        if problem is not None:
            for key in ("sq_norms", "dots", "mean_grads", "sgs", "hist1d", "hist2d", "projection"):
                stats.unavailable[key] = problem
            self._rules = []
            return
        self._rules = rules
        index = {name: i for i, name in enumerate(self.names)}
        histograms = request.hist1d is not None or request.hist2d is not None
        want_norms = request.sq_norms or histograms
        if not request.first_order:  # only the pending Alpha projection
            if direction is not None:
                stats.projection = self.project(direction)
            return
        distributed = self.combiner.world_size > 1
        local_batch = self.local_batch
        means: list[Tensor | None] = [None] * len(self.names)
        sgs: list[Tensor | None] = [None] * len(self.names)
        device = self.params[0].device
        norms = torch.zeros(local_batch, dtype=torch.float64, device=device)
        dots = torch.zeros(local_batch, dtype=torch.float64, device=device)
        projection = torch.zeros(local_batch, dtype=torch.float64, device=device)
        for rule, names in rules:
            directions = [[direction[index[n]] for n in names]] if direction is not None else []
            out = rule.reduce(
                sq_norms=want_norms,
                sgs=request.sgs,
                mean_dots=request.dots and not distributed,  # needs the global mean first
                directions=directions,
            )
            for i, name in enumerate(names):
                means[index[name]] = out.means[i]
                if out.sgs is not None:
                    sgs[index[name]] = out.sgs[i]
                if out.sq_norms is not None:
                    norms += out.sq_norms[i]
            if out.mean_dots is not None:
                dots += out.mean_dots
            if out.dots:
                projection += out.dots[0]
        if distributed:  # sums over the global batch: one all-reduce, one all-gather
            local_sq = torch.stack([m.detach().double().square().sum() for m in means]).sum()
            weight = local_batch / stats.batch_size
            summed = self.combiner.sum([m * weight for m in means] + (sgs if request.sgs else []))
            means, sgs = summed[: len(means)], summed[len(means) :] or sgs
            (rank_sq,) = self.combiner.sum([local_sq.reshape(1)])
            stats.rank_grad_sq_norm = self.transfer.defer(rank_sq / self.combiner.world_size)
            stats.rank_batch_size = local_batch
            if request.dots:
                dots = sum(
                    rule.dots([means[index[n]] for n in names]).double() for rule, names in rules
                )
            norms, dots, projection = self.combiner.gather([norms, dots, projection])
        stats.mean_grads = means
        if request.sgs:
            stats.sgs = sgs
        if want_norms:
            stats.sq_norms = norms
        if request.dots:
            stats.dots = dots
        if direction is not None:
            stats.projection = projection
        if histograms:
            self._histograms(request, stats, rules)

    def _histograms(self, request: Request, stats: Statistics, rules) -> None:
        """Bin one shared sample of elements for GradHist1d and GradHist2d, on the device.

        Up to ``max_elements`` every element is binned.  Above it, ``histogram_draws`` elements
        (at most ``max_elements``) are drawn: ``FIRST_DRAWS`` at the first tracked step, then
        what the previous tracked step needed for the expected L1 sampling error
        ``sum_i sqrt(2 p_i (1 - p_i) / (pi n))`` of its histogram (independent draws; stratifying
        them never raises it) to reach ``TARGET_L1``.
        """
        specs = [s for s in (request.hist1d, request.hist2d) if s is not None]
        budgets = [s.max_elements for s in specs]
        budget = None if None in budgets else max(budgets)
        populations = {
            name: rule.batch_size * p.numel() * stats.batch_size // self.local_batch
            for rule, names in rules
            for name, p in zip(names, rule.params)
        }
        population = sum(populations.values())
        # every element when B*D fits the budget, else what the previous step needed
        draws = (
            None if budget is None or population <= budget else min(budget, self.histogram_draws)
        )
        generator, rounding = self._draw_streams()
        sample = draw_elements(rules, draws, rounding, request.hist2d is not None, population)
        device = generator.device
        sq_total = stats.reduce("sq_norms_sum")
        rms = torch.sqrt(sq_total / population) if population else torch.zeros((), device=device)
        adaptive = ADAPTIVE_RANGE_RMS * rms
        adaptive = torch.where((rms > 0) & torch.isfinite(rms), adaptive, 1.0)

        def grad_range(spec: HistogramRequest | None) -> Bounds:
            if spec is not None and spec.range is not None:
                return tuple(_scalar(float(v), device) for v in spec.range)
            return -adaptive, adaptive

        spec1 = request.hist1d or HistogramRequest(100, None, budget)
        bins = int(spec1.bins)
        bounds = grad_range(spec1)
        grad_edges = bin_edges(*bounds, bins)
        (table,) = self.combiner.sum([counts_1d(sample, grad_edges)])
        names = list(sample.shares)
        subsampled = draws is not None

        def record(flat: list[float], edges: list[float]) -> dict:
            rows = table_rows(flat, bins)
            if subsampled:
                drawn = sum(row[-1] for row in rows)
                needed = math.ceil(drawn * (expected_l1(rows, bins) / TARGET_L1) ** 2)
                self.histogram_draws = max(MIN_DRAWS, math.ceil(1.05 * needed))
            return record_1d(rows, names, [populations[n] for n in names], edges, bins)

        histogram = self.transfer.defer(table, grad_edges, convert=record)
        if request.hist1d is not None:
            stats.hist1d = histogram
        if request.hist2d is not None:
            spec = request.hist2d
            extremes = torch.stack(
                [torch.stack(torch.aminmax(p.detach())) for p in self.params if p.numel()]
            )
            p_low, p_high = extremes[:, 0].min().double(), extremes[:, 1].max().double()
            finite = torch.isfinite(p_low) & torch.isfinite(p_high)
            p_low, p_high = torch.where(finite, p_low, -1.0), torch.where(finite, p_high, 1.0)
            degenerate = p_high <= p_low
            p_low = torch.where(degenerate, p_low - 0.5, p_low)
            p_high = torch.where(degenerate, p_high + 0.5, p_high)
            bins2 = tuple(spec.bins)
            g_bounds = grad_range(spec)
            all_edges = [bin_edges(p_low, p_high, bins2[0]), bin_edges(*g_bounds, bins2[1])]
            (counts,) = self.combiner.sum([counts_2d(sample, *all_edges)])
            stats.hist2d = self.transfer.defer(
                counts,
                torch.cat(all_edges),
                convert=lambda flat, edges: record_2d(flat, population, edges, bins2),
            )

    def _draw_streams(self) -> tuple[torch.Generator, random.Random]:
        """The histogram draws' random streams for this step and rank: a generator on the
        parameters' device and a host stream (per-parameter rounding), both seeded from
        ``(sample_seed, step)``."""
        digest = hashlib.blake2b(f"{self.sample_seed}/{self._step}".encode(), digest_size=8)
        seed = int.from_bytes(digest.digest(), "little") >> 1
        device = self.params[0].device
        if device not in self._device_generators:
            self._device_generators[device] = torch.Generator(device=device)
        return self._device_generators[device].manual_seed(seed), random.Random(seed)

    def _curvature(self, request: Request, stats: Statistics) -> None:
        batches = self.samples.batches
        problem = self.samples.loss_problem
        if problem is None and len(batches) != 1:
            problem = f"curvature is computed for one model call per step, not {len(batches)}"
        elif problem is None and not self.samples.row_samples:
            problem = "curvature is computed for samples that are rows of the model's batch"
        elif problem is None and batches[0].model_input is None:
            problem = "the model's forward call was not recorded"
        if problem is not None:
            for key in ("diagonal", "max_eigenvalue", "trace"):
                stats.unavailable[key] = problem
            return
        model_input, target = batches[0].model_input, batches[0].loss.target
        products: list[HessianVectorProduct] = []

        def hvp() -> HessianVectorProduct:  # one replayed graph serves every product
            if not products:
                loss = replay_loss(self.replay_model, self.loss_fn, model_input, target)
                weight = self.local_batch / stats.batch_size  # global batch: sum over ranks
                products.append(HessianVectorProduct(loss, self.params, self.combiner, weight))
            return products[0]

        weight, cache = self.local_batch / stats.batch_size, {}
        with self.capture.suspended():
            if request.trace is not None:
                try:
                    value, method = self.diagonals.trace(
                        model_input, target, weight, hvp, request.trace.rtol,
                        request.trace.max_products, cache,
                    )  # fmt: skip
                except RuntimeError as error:  # non-finite curvature, failing products
                    value, method = None, f"Hessian-vector products failed ({error})"
                if value is None:
                    stats.unavailable["trace"] = method
                elif isinstance(value, TraceEstimate):
                    value.curvature = method
                    stats.trace = value
                else:
                    total = torch.stack([d.double().sum() for d in value]).sum()
                    stats.trace = self.transfer.defer(
                        total, convert=lambda v, m=method: TraceEstimate(v[0], 0.0, 0, True, m)
                    )
            if request.diagonal:
                try:
                    diagonal, method = self.diagonals.tic(model_input, target, weight, hvp, cache)
                except RuntimeError as error:
                    diagonal, method = None, f"Hessian-vector products failed ({error})"
                if diagonal is None:
                    stats.unavailable["diagonal"] = method
                else:
                    stats.diagonal, stats.diagonal_method = diagonal, method
            if request.max_eigenvalue:
                try:
                    stats.max_eigenvalue = self._max_eigenvalue(hvp())
                except RuntimeError as error:  # non-finite curvature makes the solver fail
                    stats.unavailable["max_eigenvalue"] = f"Lanczos failed ({error})"

    def _max_eigenvalue(self, hvp: HessianVectorProduct) -> EigenResult:
        """Lanczos on Hessian-vector products, warm-started from the previous step's
        eigenvector (Krylov basis in the parameters' dtype: twice-reorthogonalized float32
        vectors are accurate far below the 1e-3 tolerance, at half the memory of float64)."""
        dtype = self.params[0].dtype
        start = self.eigenvector
        if start is None or start.numel() != hvp.dim:
            start = torch.randn(hvp.dim, generator=self.generator, dtype=dtype)
        start = start.to(device=self.params[0].device, dtype=dtype)
        vector_bytes = start.numel() * start.element_size()
        result = lanczos_max_eigenvalue(
            hvp,
            start,
            rtol=self.eigen_rtol,
            max_iter=self.eigen_max_iter,
            max_basis=max(MIN_LANCZOS_BASIS, min(MAX_LANCZOS_BASIS, LANCZOS_BYTES // vector_bytes)),
        )
        # a finite Ritz value comes with a finite vector; otherwise start afresh next time
        self.eigenvector = result.vector.detach() if math.isfinite(result.value) else None
        return result

    def project(self, direction: list[Tensor]) -> Tensor | None:
        """``g_n . v`` (float64, shape ``[B]``, global batch) for the recorded step, or ``None``
        if unavailable."""
        if not self._rules:
            return None
        index = {name: i for i, name in enumerate(self.names)}
        local = sum(
            rule.dots([direction[index[n]] for n in names]).double() for rule, names in self._rules
        )
        return self.combiner.gather([local])[0]

    def release(self) -> None:
        """Free everything recorded at this step."""
        self._rules = []
        self.samples = StepSamples()
        self.capture.clear()


__all__ = ["HistogramRequest", "Request", "Statistics", "StatisticsEngine"]


def _scalar(value: float, device: torch.device) -> Tensor:
    """A 0-d float64 tensor filled on ``device`` (no host-to-device copy, which would wait)."""
    return torch.full((), value, dtype=torch.float64, device=device)


def _grad(param: Tensor) -> Tensor:
    """The gradient the optimizer uses (zero for a parameter without one)."""
    return torch.zeros_like(param) if param.grad is None else param.grad.detach()


def _warn_unused(names: list[str]) -> None:
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    warn_reading(
        f"parameter(s) without gradient at a tracked step: {shown}; their individual gradients "
        "count as zero (the optimizer skips them)"
    )


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)
