"""The Figure mnistnet.plot returns: matplotlib's, which Jupyter shows inline by itself.

IPython draws a matplotlib Figure only once pyplot (or `%matplotlib inline`) has registered
its formatter; mnistnet.plot never imports pyplot (it would choose a backend), so a bare
Figure shows as `<Figure size ... with N Axes>`. This subclass has `_repr_png_`, which
IPython asks of any object. Imported by mnistnet.plot when a figure is made: importing it
imports matplotlib.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as _MatplotlibFigure

__all__ = ["Figure"]


class Figure(_MatplotlibFigure):
    """A matplotlib Figure on its own Agg canvas (never pyplot's) that Jupyter shows as a PNG
    picture; everything else is matplotlib's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
        """The picture as PNG bytes, at the figure's own size and resolution."""
        buffer = io.BytesIO()
        self.savefig(buffer, format="png")
        return buffer.getvalue()
