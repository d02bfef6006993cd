"""The samples of a step: their individual losses and the rules for their individual gradients,
assembled from the micro-batches the step consumed.

Samples that are rows of the model's batch (one target per row) get their individual gradients
from the layers' recorded rows (:mod:`.rules`).  Samples that are not (tokens of a sequence
model, whose positions interact through attention) get theirs at the loss call, while the graph
is alive: one batched backward pass of the per-sample losses, exact for any model and costing
``N x D`` memory, bounded by :data:`SAMPLE_GRAD_ELEMENTS`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..losses import elementwise_loss, rows_are_samples, sample_losses, valid_targets
from .capture import Capture, LossCall, MicroBatch, ModelInput
from .rules import LayerRule, MaterializedRule, Rows, build_rules

#: Individual gradients computed at the loss call: at most this many elements per micro-batch.
SAMPLE_GRAD_ELEMENTS = 2**26
#: Samples per batched backward pass at the loss call.
_CHUNK = 64


@dataclass
class StepSamples:
    """Individual losses (float64, ``[N]``, ``None`` with ``loss_problem``) and the rules of the
    individual gradients (empty with ``problem``) of one step; ``unused`` names parameters that
    got no gradient; ``row_samples`` tells whether samples are rows of the model's batch."""

    losses: Tensor | None = None
    rules: list[tuple[LayerRule, list[str]]] = field(default_factory=list)
    problem: str | None = None
    loss_problem: str | None = None
    unused: list[str] = field(default_factory=list)
    batches: list[MicroBatch] = field(default_factory=list)
    row_samples: bool = True


def model_rows(model_input: ModelInput | None) -> int | None:
    """Rows of the model's batch: the first dimension of its first tensor argument."""
    if model_input is None:
        return None
    for value in (*model_input.args, *model_input.kwargs.values()):
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def at_loss_call(
    loss_fn: Any, capture: Capture, params: list[Tensor], call: LossCall, prediction, target
) -> None:
    """For samples that are not rows of the model's batch, compute their losses and gradients
    now, from the live graph (the training loop's own backward pass is unaffected)."""
    rows = model_rows(capture.inputs.get(call.forward))
    if rows_are_samples(loss_fn, prediction, target, rows):
        return
    losses = sample_losses(loss_fn, elementwise_loss(loss_fn, prediction, target), target)
    call.losses = losses.detach().double()
    numel = losses.numel() * sum(p.numel() for p in params)
    if numel > SAMPLE_GRAD_ELEMENTS:
        call.problem = (
            f"the {losses.numel()} samples (tokens) of a model call would need {numel:.3g} "
            "individual-gradient elements; track fewer samples per step (smaller batches) for "
            "the distributional readings"
        )
        return
    if losses.numel() == 0 or not losses.requires_grad:
        call.sample_grads = [p.new_zeros(losses.numel(), *p.shape) for p in params]
        return
    with capture.inner_backward():
        call.sample_grads = _individual_gradients(losses, params)


def _individual_gradients(losses: Tensor, params: list[Tensor]) -> list[Tensor]:
    """``d l_n / d theta`` for every ``n``: batched backward passes, or one per sample where an
    operation has no batching rule."""
    count = losses.numel()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # slow batching fallbacks
            eye = torch.eye(count, dtype=losses.dtype, device=losses.device)
            pieces = [
                torch.autograd.grad(
                    losses,
                    params,
                    grad_outputs=rows,
                    retain_graph=True,
                    is_grads_batched=True,
                    allow_unused=True,
                    materialize_grads=True,
                )
                for rows in eye.split(_CHUNK)
            ]
    except RuntimeError:
        pieces = [
            tuple(
                g.unsqueeze(0)
                for g in torch.autograd.grad(
                    losses[n], params, retain_graph=True, allow_unused=True, materialize_grads=True
                )
            )
            for n in range(count)
        ]
    return [torch.cat(column).detach() for column in zip(*pieces)]


def assemble(loss_fn: Any, capture: Capture, params: list[Tensor], names: list[str]) -> StepSamples:
    """Individual losses and gradient rules of every micro-batch the step consumed."""
    batches, problem = capture.micro_batches()
    out = StepSamples(batches=batches)
    if problem is None and not batches:
        problem = (
            "no call of loss_fn reached the backward pass since the last step: compute the loss "
            "with the loss_fn object given to MonitoredOptimizer (or pass a SampleLoss for a "
            "model that computes its loss itself), with gradients enabled"
        )
    if problem is None:
        problem = next((b.loss.problem for b in batches if b.loss.problem), None)
    if problem is not None:
        out.problem = out.loss_problem = problem
        return out
    tokens = [b.loss.losses is not None for b in batches]
    if any(tokens) and not all(tokens):
        out.problem = out.loss_problem = "micro-batches of the step define samples differently"
        return out
    if all(tokens):
        out.row_samples = False
        out.losses = torch.cat([b.loss.losses for b in batches])
        grads = [torch.cat(column) for column in zip(*(b.loss.sample_grads for b in batches))]
        out.rules = [(MaterializedRule(params, grads), list(names))]
        return out
    rows, losses = [], []
    for batch in batches:
        call = batch.loss
        with torch.no_grad():
            elementwise = elementwise_loss(loss_fn, call.prediction, call.target)
        losses.append(sample_losses(loss_fn, elementwise, call.target).double())
        valid = valid_targets(loss_fn, call.target)
        index = None if bool(valid.all()) else valid.nonzero().squeeze(1)
        count = call.target.shape[0] if index is None else index.numel()
        if call.factor is None:
            out.problem = "the gradient of the loss value was not recorded"
        elif count:
            rows.append(Rows(call.forward, call.target.shape[0], count, call.factor, index))
    out.losses = torch.cat(losses)
    if out.problem is None:
        out.rules, out.problem, out.unused = build_rules(capture.slots, rows)
    return out
