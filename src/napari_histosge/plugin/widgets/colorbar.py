"""A colorbar legend for the displayed gene: name, units, gradient and min/max."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


def colormap_stops(colormap, n: int = 16) -> list[tuple[float, tuple[int, int, int, int]]]:
    """``(position, RGBA 0-255)`` stops of a napari colormap (name or object)."""
    from napari.utils.colormaps import ensure_colormap

    cmap = ensure_colormap(colormap)
    pos = np.linspace(0.0, 1.0, n)
    rgba = np.clip(np.asarray(cmap.map(pos)) * 255, 0, 255).astype(int)
    return [(float(p), (int(r), int(g), int(b), int(a))) for p, (r, g, b, a) in zip(pos, rgba, strict=True)]


#: An H&E background tone under the ramp, so a colormap's transparent end reads as "the slide shows".
SLIDE_TONE = (236, 214, 228)


class ColorBar(QWidget):
    """Horizontal legend; call :meth:`set_range` whenever the shown gene or limits change.

    :meth:`clear` replaces the ramp by a message (nothing shown, or why not).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = ""
        self.units = ""
        self.vmin = 0.0
        self.vmax = 1.0
        self.stops = colormap_stops("viridis")
        self.message: str | None = "no gene shown"
        self.setMinimumHeight(52)
        self.setMinimumWidth(0)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)  # never widens the dock

    def set_range(self, title: str, vmin: float, vmax: float, *, colormap="viridis", units: str = "") -> None:
        """Show ``title`` (gene name) with ``units`` over ``[vmin, vmax]`` in ``colormap``."""
        self.title, self.units, self.message = title, units, None
        self.vmin, self.vmax = float(vmin), float(vmax)
        self.stops = colormap_stops(colormap)
        self.setToolTip(self.text())
        self.update()

    def clear(self, message: str = "no gene shown") -> None:
        """Show ``message`` instead of a ramp (e.g. the layer it described is gone)."""
        self.title, self.units, self.message = "", "", message
        self.setToolTip(message)
        self.update()

    def text(self) -> str:
        """The legend as text (for tests and tooltips)."""
        if self.message is not None:
            return self.message
        return f"{self.title} [{self.units}] {self.vmin:.3g} .. {self.vmax:.3g}"

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Draw the title, the colour ramp and its end values (or the message)."""
        p = QPainter(self)
        w, m = self.width(), 6
        p.setPen(QPen(QColor(220, 220, 220)))
        if self.message is not None:
            p.drawText(QRectF(m, 0, w - 2 * m, self.height()), int(Qt.TextFlag.TextWordWrap), self.message)
            p.end()
            return
        p.drawText(m, 14, f"{self.title}  ({self.units})" if self.units else self.title)
        bar = QRectF(m, 20, w - 2 * m, 12)
        grad = QLinearGradient(bar.topLeft(), bar.topRight())
        for pos, (r, g, b, a) in self.stops:
            grad.setColorAt(pos, QColor(r, g, b, a))
        p.fillRect(bar, QColor(*SLIDE_TONE))  # a transparent low end shows the slide: draw it on its colour
        p.fillRect(bar, grad)
        p.drawRect(bar)
        p.drawText(QRectF(m, 34, w / 2, 16), Qt.AlignmentFlag.AlignLeft, f"{self.vmin:.3g}")
        p.drawText(QRectF(w / 2, 34, w / 2 - m, 16), Qt.AlignmentFlag.AlignRight, f"{self.vmax:.3g}")
        p.end()
