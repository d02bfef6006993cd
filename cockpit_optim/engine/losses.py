"""Individual losses ``l_n`` of a mean-reduced loss module, so that ``L_B = (1/B) sum_n l_n``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UnsupportedLossError

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


def check_loss_module(loss_fn: nn.Module) -> None:
    """Raise a clear error if ``loss_fn`` cannot give individual losses."""
    if not isinstance(loss_fn, nn.Module) or not isinstance(loss_fn, SUPPORTED_LOSSES):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_LOSSES)
        raise UnsupportedLossError(
            f"loss_fn must be one of the loss modules {names}; got {type(loss_fn).__name__}. "
            "Individual gradients need a loss that is a mean over independent samples."
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


def individual_losses(loss_fn: nn.Module, output: Tensor, target: Tensor) -> Tensor:
    """Return ``l_n`` (shape ``[B]``) with ``loss_fn(output, target) == l.mean()``."""
    reduction = loss_fn.reduction
    try:
        loss_fn.reduction = "none"
        with torch.no_grad():
            elementwise = loss_fn(output, target)
    finally:
        loss_fn.reduction = reduction
    if isinstance(loss_fn, _CLASSIFICATION):
        ignore = loss_fn.ignore_index
        if ignore >= 0 and bool((target == ignore).any()):
            raise UnsupportedLossError(
                f"targets contain ignore_index={ignore}: the mean then runs over a data-dependent "
                "number of elements. Filter those samples out of the batch instead."
            )
    return elementwise.reshape(elementwise.shape[0], -1).mean(dim=1)
