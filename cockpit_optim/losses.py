"""What a sample is: the individual losses ``l_n`` of the objective a step consumes.

``loss_fn`` of :class:`~cockpit_optim.MonitoredOptimizer` is either a mean-reduced torch loss
module, called by the training loop, or a :class:`SampleLoss`, which tells the monitor where the
predictions and targets are in a model that computes its loss inside ``forward`` (Hugging Face
models called with ``labels=``).

A sample is a target that enters the loss: with ``ignore_index`` (``-100`` by default) ignored
targets are no samples, and for sequence outputs every non-ignored token is one, as the
mean-reduced loss counts them: ``L = (1/N) sum_n l_n`` over the ``N`` samples.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UnsupportedLossError

__all__ = ["SUPPORTED_LOSSES", "CausalLMLoss", "SampleLoss", "TokenCrossEntropy"]

# Loss modules whose mean reduction averages an elementwise loss over all elements; the individual
# loss is then the mean over each sample's elements.
_ELEMENTWISE = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCEWithLogitsLoss,
    nn.BCELoss,
)
_CLASSIFICATION = (nn.CrossEntropyLoss, nn.NLLLoss)
SUPPORTED_LOSSES = _ELEMENTWISE + _CLASSIFICATION


class SampleLoss:
    """Per-sample losses of a model that computes its loss itself.

    Subclasses say where prediction, target and the model's own loss are in a model call
    (:meth:`split`) and how the unreduced loss is computed (:meth:`elementwise`).  The model's
    loss must be proportional to the sum of the per-sample losses (a mean, or a sum divided by
    a token count, as the Hugging Face ``Trainer`` does).
    """

    ignore_index: int | None = None

    def split(self, output: Any, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(prediction, target, model_loss)`` of one model call; ``model_loss`` may be
        ``None`` when the model was called without targets."""
        raise NotImplementedError

    def elementwise(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The unreduced loss, one value per element of ``target``."""
        raise NotImplementedError


class TokenCrossEntropy(SampleLoss):
    """Token-level cross-entropy on ``output.<logits>`` against the model call's ``<labels>``
    keyword, ignoring ``ignore_index``; ``shift=True`` predicts token ``t + 1`` from position
    ``t`` (causal language models)."""

    def __init__(
        self,
        ignore_index: int = -100,
        *,
        shift: bool = False,
        logits: str = "logits",
        labels: str = "labels",
        loss: str = "loss",
    ) -> None:
        self.ignore_index, self.shift = ignore_index, shift
        self.logits_key, self.labels_key, self.loss_key = logits, labels, loss

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ignore_index={self.ignore_index}, shift={self.shift})"

    def split(self, output, args, kwargs):
        logits = _field(output, self.logits_key, 0)
        labels = kwargs.get(self.labels_key)
        if labels is None or logits is None:
            return None, None, None
        if self.shift:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return logits, labels, _field(output, self.loss_key, None)

    def elementwise(self, prediction: Tensor, target: Tensor) -> Tensor:
        flat = prediction.reshape(-1, prediction.shape[-1])
        losses = F.cross_entropy(
            flat, target.reshape(-1), reduction="none", ignore_index=self.ignore_index
        )
        return losses.reshape(target.shape)


class CausalLMLoss(TokenCrossEntropy):
    """The loss of Hugging Face causal language models called with ``labels=``: next-token
    cross-entropy with shifted labels, ``-100`` ignored."""

    def __init__(self, ignore_index: int = -100, **keys: str) -> None:
        super().__init__(ignore_index, shift=True, **keys)


def _field(output: Any, key: str, position: int | None) -> Any:
    if isinstance(output, Tensor):
        return output if position == 0 else None
    if isinstance(output, dict) or hasattr(output, "keys"):
        value = output.get(key) if hasattr(output, "get") else None
        if value is not None:
            return value
    value = getattr(output, key, None)
    if value is None and position is not None and isinstance(output, tuple | list):
        value = output[position] if len(output) > position else None
    return value


def check_loss(loss_fn: Any) -> None:
    """Raise a clear error if ``loss_fn`` cannot give individual losses."""
    if isinstance(loss_fn, SampleLoss):
        return
    if not isinstance(loss_fn, nn.Module) or not isinstance(loss_fn, SUPPORTED_LOSSES):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_LOSSES)
        raise UnsupportedLossError(
            f"loss_fn must be one of the loss modules {names}, or a SampleLoss such as "
            f"CausalLMLoss() for a model that computes its loss itself; got "
            f"{type(loss_fn).__name__}. Individual gradients need a loss that is a mean over "
            "independent samples."
        )
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction != "mean":
        raise UnsupportedLossError(
            f"loss_fn has reduction={reduction!r}; the instruments are defined for the mean-reduced "
            f"loss. Use {type(loss_fn).__name__}(reduction='mean') (the default)."
        )
    if isinstance(loss_fn, _CLASSIFICATION) and loss_fn.weight is not None:
        raise UnsupportedLossError(
            f"{type(loss_fn).__name__} with class weights is not a plain mean over samples; "
            "drop weight=... or weight the samples through the data sampler instead."
        )


def elementwise_loss(loss_fn: Any, prediction: Tensor, target: Tensor) -> Tensor:
    """The unreduced loss of ``loss_fn`` (graph kept when ``prediction`` has one), in float32
    or wider for half-precision predictions."""
    if prediction.dtype in (torch.float16, torch.bfloat16):
        prediction = prediction.float()
    if isinstance(loss_fn, SampleLoss):
        return loss_fn.elementwise(prediction, target)
    reduction = loss_fn.reduction
    try:
        loss_fn.reduction = "none"
        return loss_fn.forward(prediction, target)  # forward: no hooks
    finally:
        loss_fn.reduction = reduction


def rows_are_samples(loss_fn: Any, prediction: Tensor, target: Tensor, rows: int | None) -> bool:
    """Whether the samples are the rows of the model's batch (one target per row), so that the
    layers' captured rows give the individual gradients; else (tokens, flattened sequences)
    they are computed at the loss call."""
    if isinstance(loss_fn, SampleLoss) or rows is None:
        return False
    if isinstance(loss_fn, _CLASSIFICATION) and not target.is_floating_point():
        return target.dim() == 1 and target.shape[0] == rows
    return target.shape[0] == rows and prediction.shape[0] == rows


def sample_losses(loss_fn: Any, elementwise: Tensor, target: Tensor) -> Tensor:
    """``l_n`` (shape ``[N]``) of the ``N`` samples, from the unreduced loss: per row the mean
    over its elements, or (classification, tokens) one value per non-ignored target."""
    ignore = getattr(loss_fn, "ignore_index", None)
    classification = isinstance(loss_fn, SampleLoss) or (
        isinstance(loss_fn, _CLASSIFICATION) and not target.is_floating_point()
    )
    if classification:
        flat = elementwise.reshape(-1)
        if ignore is None:
            return flat
        return flat[valid_targets(loss_fn, target).reshape(-1)]
    return elementwise.reshape(elementwise.shape[0], -1).mean(dim=1)


def valid_targets(loss_fn: Any, target: Tensor) -> Tensor:
    """Mask of the targets that enter the loss (all of them without ``ignore_index``)."""
    ignore = getattr(loss_fn, "ignore_index", None)
    if ignore is None or target.is_floating_point():
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore
