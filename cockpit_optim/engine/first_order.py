"""The first-order part of the engine: ``g``, ``||g_n||^2``, ``sum_n g_n^2``, ``g_n . g`` and
``g_n . v`` of a recorded step, one layer rule at a time (each rule's outputs summed over its
parameters where the statistic is per sample), then combined over the ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..contract import Request, Statistics
from ..transfer import Deferred, HostTransfer
from .combiner import LocalCombiner
from .rules import LayerRule

Rules = list[tuple[LayerRule, list[str]]]
#: Statistics the first-order part provides (all unavailable together when the rules are).
PROVIDES = ("sq_norms", "mean_dots", "mean_grads", "sum_sq_grads", "hist1d", "hist2d", "projection")


def grad_norms(params: Sequence[Tensor], names: list[str], transfer: HostTransfer) -> Deferred:
    """``||.grad||`` per parameter (zero without a gradient), by name, after the step's read."""
    norms = torch.stack(
        [
            torch.zeros((), dtype=torch.float64, device=p.device)
            if p.grad is None
            else torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float64)
            for p in params
        ]
    )
    return transfer.defer(norms, convert=lambda values: dict(zip(names, values)))


def project(
    rules: Rules, names: list[str], direction: Sequence[Tensor], combiner: LocalCombiner
) -> Tensor | None:
    """``g_n . v`` (float64, shape ``[B]``, global batch), or ``None`` without rules."""
    if not rules:
        return None
    index = {name: i for i, name in enumerate(names)}
    local = sum(
        rule.project([direction[index[n]] for n in layer]).double() for rule, layer in rules
    )
    return combiner.gather([local])[0]


def first_order(
    request: Request,
    stats: Statistics,
    rules: Rules,
    names: list[str],
    local_batch: int,
    combiner: LocalCombiner,
    transfer: HostTransfer,
    device: torch.device,
) -> None:
    """Fill the requested first-order statistics of ``stats`` from the step's ``rules``."""
    direction = request.projection.direction if request.projection is not None else None
    if not request.first_order:  # a projection alone
        if direction is not None:
            stats.projection = project(rules, names, direction, combiner)
        return
    index = {name: i for i, name in enumerate(names)}
    histograms = request.hist1d is not None or request.hist2d is not None
    want_norms = request.sq_norms or histograms
    distributed = combiner.world_size > 1
    means: list[Tensor | None] = [None] * len(names)
    sum_sq: list[Tensor | None] = [None] * len(names)
    norms = torch.zeros(local_batch, dtype=torch.float64, device=device)
    dots = torch.zeros(local_batch, dtype=torch.float64, device=device)
    projection = torch.zeros(local_batch, dtype=torch.float64, device=device)
    for rule, layer in rules:
        directions = [[direction[index[n]] for n in layer]] if direction is not None else []
        out = rule.reduce(
            sq_norms=want_norms,
            sum_sq_grads=request.sum_sq_grads,
            mean_dots=request.mean_dots and not distributed,  # needs the global mean first
            directions=directions,
        )
        for i, name in enumerate(layer):
            means[index[name]] = out.means[i]
            if out.sum_sq_grads is not None:
                sum_sq[index[name]] = out.sum_sq_grads[i]
            if out.sq_norms is not None:
                norms += out.sq_norms[i]
        if out.mean_dots is not None:
            dots += out.mean_dots
        if out.projections:
            projection += out.projections[0]
    if distributed:  # sums over the global batch: one all-reduce, one all-gather
        local_sq = torch.stack([m.detach().double().square().sum() for m in means]).sum()
        weight = local_batch / stats.batch_size
        summed = combiner.sum(
            [m * weight for m in means] + (sum_sq if request.sum_sq_grads else [])
        )
        means, sum_sq = summed[: len(means)], summed[len(means) :] or sum_sq
        (rank_sq,) = combiner.sum([local_sq.reshape(1)])
        stats.rank_grad_sq_norm = transfer.defer(rank_sq / combiner.world_size)
        stats.rank_batch_size = local_batch
        if request.mean_dots:
            dots = sum(
                rule.project([means[index[n]] for n in layer]).double() for rule, layer in rules
            )
        norms, dots, projection = combiner.gather([norms, dots, projection])
    stats.mean_grads = means
    if request.sum_sq_grads:
        stats.sum_sq_grads = sum_sq
    if want_norms:
        stats.sq_norms = norms
    if request.mean_dots:
        stats.mean_dots = dots
    if direction is not None:
        stats.projection = projection
