"""The one colour palette of every experiment plot, and the bare Matplotlib figures they are drawn on."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


__all__ = ["KNOWN_COLOR", "OOD_COLOR", "PALETTE", "UNKNOWN_COLOR", "color", "new_canvas", "new_figure"]

#: One colour per loss (or run), in the order the losses were first run.
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974")
#: Known images, unknown (held-out) images and out-of-distribution images in score plots.
KNOWN_COLOR, UNKNOWN_COLOR, OOD_COLOR = "#4C72B0", "#DD8452", "#8C8C8C"


def color(index: int) -> str:
    """The palette colour of the `index`-th loss (cycling)."""
    return PALETTE[index % len(PALETTE)]


def new_canvas(width: float, height: float):
    """A bare `Figure` with an Agg canvas: no pyplot, so no global backend state and no display needed."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def new_figure(ncols: int = 1, width: float = 4.2, height: float = 3.4):
    """`(figure, axes)`: one row of `ncols` panels of `width` x `height` inches each."""
    figure = new_canvas(width * ncols, height)
    return figure, figure.subplots(1, ncols, squeeze=False)[0]
