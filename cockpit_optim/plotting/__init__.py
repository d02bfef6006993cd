"""The cockpit view (matplotlib, explicit Figure objects, no global pyplot state)."""

from .animate import animate
from .cockpit import plot
from .layerwise import plot_layerwise
from .live import LiveCockpit, LivePlot

__all__ = ["LiveCockpit", "LivePlot", "animate", "plot", "plot_layerwise"]
