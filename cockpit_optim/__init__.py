"""cockpit-optim: instruments for observing the training of PyTorch networks.

>>> opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn)
"""

from . import contract, instruments, schedules
from .engine.rules import LayerRule, MaterializedRule, SharedLinearRule, register_rule
from .errors import CockpitError, ReadingWarning, UnsupportedLossError, UnsupportedModelError
from .log import load_log
from .optimizer import MonitoredOptimizer
from .plotting import LiveCockpit, LivePlot, animate, plot, plot_layerwise

__version__ = "0.1.0"

__all__ = [
    "CockpitError",
    "LayerRule",
    "LiveCockpit",
    "LivePlot",
    "MaterializedRule",
    "MonitoredOptimizer",
    "ReadingWarning",
    "SharedLinearRule",
    "UnsupportedLossError",
    "UnsupportedModelError",
    "__version__",
    "animate",
    "contract",
    "instruments",
    "load_log",
    "plot",
    "plot_layerwise",
    "register_rule",
    "schedules",
]
