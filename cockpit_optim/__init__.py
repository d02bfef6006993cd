"""cockpit-optim: instruments for observing the training of PyTorch networks.

>>> opt = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn)
"""

from . import instruments, schedules
from .errors import CockpitError, ReadingWarning, UnsupportedLossError, UnsupportedModelError
from .log import load_log
from .optimizer import MonitoredOptimizer
from .plotting import LiveCockpit, LivePlot, animate, plot, plot_layerwise

__version__ = "0.1.0"

__all__ = [
    "CockpitError",
    "LiveCockpit",
    "LivePlot",
    "MonitoredOptimizer",
    "ReadingWarning",
    "UnsupportedLossError",
    "UnsupportedModelError",
    "__version__",
    "animate",
    "instruments",
    "load_log",
    "plot",
    "plot_layerwise",
    "schedules",
]
