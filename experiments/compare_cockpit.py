"""Training steps with the original Cockpit 1.0.2 (``cockpit-for-pytorch``), for ``--compare``.

The step follows the original's documented training loop: model and mean-reduced loss extended by
BackPACK, individual losses from an unreduced loss, ``backward`` (with the graph kept when the
Cockpit asks for it) inside the ``cockpit(step, info=...)`` context, then ``optimizer.step()``.  The
optimizer is handed in as well, so that its Alpha uses the BackPACK projections for plain SGD.

Its configurations differ from this package's: the original ``economy`` has Alpha, Distance,
GradHist1d, GradNorm, InnerTest, Loss, NormTest, OrthoTest and UpdateSize (no CABS, EarlyStopping,
MeanGSNR, Time); ``business`` adds TICDiag and HessTrace; ``full`` adds HessMaxEV and GradHist2d.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

INSTALL = 'pip install "cockpit-for-pytorch" "setuptools<81"'
CONFIGS = ("economy", "business", "full")
_ORIGINAL_ECONOMY = (
    "Alpha",
    "Distance",
    "GradHist1d",
    "GradNorm",
    "InnerTest",
    "Loss",
    "NormTest",
    "OrthoTest",
    "UpdateSize",
)
# The original's configurations as lists of this package's instruments (``same:<config>``).
ORIGINAL_INSTRUMENTS = {
    "economy": _ORIGINAL_ECONOMY,
    "business": (*_ORIGINAL_ECONOMY, "TICDiag", "HessTrace"),
    "full": (*_ORIGINAL_ECONOMY, "TICDiag", "HessTrace", "HessMaxEV", "GradHist2d"),
}


def import_cockpit() -> tuple[Any, Any]:
    """The original's ``Cockpit`` class and ``configuration`` function."""
    with warnings.catch_warnings():  # it imports pkg_resources, deprecated since setuptools 67
        warnings.simplefilter("ignore", UserWarning)
        from cockpit import Cockpit
        from cockpit.utils.configuration import configuration
    return Cockpit, configuration


def unavailable() -> str | None:
    """``None`` if the original Cockpit imports, else a message with the install command."""
    try:
        import_cockpit()
    except ImportError as error:
        return (
            f"--compare needs the original Cockpit 1.0.2, which does not import here ({error}). "
            f"Install it with: {INSTALL}"
        )
    return None


def make_step(
    model: nn.Module, inputs: Tensor, labels: Tensor, config: str, lr: float
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """One training step of ``model`` (extended in place) tracked by the original ``config``."""
    from backpack import extend

    Cockpit, configuration = import_cockpit()
    # Harmless here: BackPACK's module hooks fire for the first layer, whose input needs no
    # gradient; zero_grad() sets the gradients to None, which breaks create_graph's cycles.
    warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
    warnings.filterwarnings("ignore", r"Using backward\(\) with create_graph=True", UserWarning)
    model = extend(model)
    loss_fn = extend(nn.CrossEntropyLoss())
    individual_loss_fn = nn.CrossEntropyLoss(reduction="none")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    cockpit = Cockpit(model.parameters(), quantities=configuration(config))
    counter = itertools.count()

    def step() -> None:
        global_step = next(counter)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_fn(outputs, labels)
        info = {
            "batch_size": inputs.shape[0],
            "individual_losses": individual_loss_fn(outputs, labels).detach(),
            "loss": loss,
            "optimizer": optimizer,
        }
        with cockpit(global_step, info=info):
            loss.backward(create_graph=cockpit.create_graph(global_step))
        optimizer.step()

    return step, optimizer
