"""A small live loss curve drawn with QPainter (no plotting library in the UI thread)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class LossCurve(QWidget):
    """Training loss per epoch, log-scaled on y, redrawn on every :meth:`append`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss (MSE, log scale) per epoch")

    def clear(self) -> None:
        """Forget every value (a new training run starts)."""
        self.values = []
        self.update()

    def append(self, value: float) -> None:
        """Add one loss value and redraw; non-finite values are skipped."""
        if math.isfinite(value):
            self.values.append(float(value))
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Draw the loss curve on a log scale, scaled to the widget."""
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h, m = self.width(), self.height(), 6
        p.setPen(QPen(QColor(120, 120, 120), 1))
        p.drawRect(0, 0, w - 1, h - 1)
        vals = [math.log10(max(v, 1e-12)) for v in self.values]
        if not vals:
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss curve")
            p.end()
            return
        lo, hi = min(vals), max(vals)
        span = hi - lo or 1.0
        n = max(len(vals) - 1, 1)
        poly = QPolygonF([
            QPointF(m + (w - 2 * m) * i / n, h - m - (h - 2 * m) * (v - lo) / span) for i, v in enumerate(vals)
        ])
        p.setPen(QPen(QColor(255, 170, 0), 2))
        p.drawPolyline(poly)
        p.setPen(QPen(QColor(200, 200, 200), 1))
        p.drawText(m + 2, 14, f"loss {self.values[-1]:.4g} (epoch {len(vals)})")
        p.end()
