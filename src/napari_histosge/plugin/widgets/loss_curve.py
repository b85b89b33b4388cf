"""A small live loss curve drawn with QPainter (no plotting library in the UI thread).

Axes: epoch along the bottom, the training loss (log scale) on the left and, when the run
scores held-back spots, their validation PCC on the right in its own colour.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: The curves' colours: training loss, validation PCC.
LOSS_COLOUR = (255, 170, 0)
VALIDATION_COLOUR = (80, 190, 255)
#: Axis titles (also the widget's tooltip).
X_TITLE, LOSS_TITLE, VALIDATION_TITLE = "epoch", "loss (MSE, log)", "validation PCC"


class LossCurve(QWidget):
    """Training loss per epoch (log-scaled) and validation PCC, redrawn on every new value."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []  # loss per epoch, in order
        self.epochs: list[int] = []
        self.validation: list[tuple[int, float]] = []  # (epoch, PCC) where the run scored held-back spots
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(f"{LOSS_TITLE} per {X_TITLE} (orange); {VALIDATION_TITLE} on the held-back spots "
                        "(blue, right axis) when the run holds spots back")

    def clear(self) -> None:
        """Forget every value (a new training run starts)."""
        self.values, self.epochs, self.validation = [], [], []
        self.update()

    def append(self, value: float, epoch: int | None = None, validation: float | None = None) -> None:
        """Add one epoch's loss (and its validation PCC, if scored) and redraw; non-finite values are skipped."""
        epoch = epoch if epoch is not None else len(self.values) + 1
        if math.isfinite(value):
            self.values.append(float(value))
            self.epochs.append(int(epoch))
        if validation is not None and math.isfinite(validation):
            self.validation.append((int(epoch), float(validation)))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Draw the axes, the loss curve (log scale) and the validation curve, scaled to the widget."""
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        grey = QColor(200, 200, 200)
        if not self.values:
            p.setPen(QPen(grey, 1))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, f"{LOSS_TITLE} per {X_TITLE}")
            p.end()
            return
        fm = p.fontMetrics()
        left = fm.horizontalAdvance("0.000e-0") + 6
        right = fm.horizontalAdvance("0.00") + 8 if self.validation else 8
        plot = QRectF(left, fm.height() + 4, max(self.width() - left - right, 10),
                      max(self.height() - 2 * fm.height() - 10, 10))
        first, last = self.epochs[0], max(self.epochs[-1], self.epochs[0] + 1)

        def x_of(epoch: float) -> float:
            return plot.left() + plot.width() * (epoch - first) / (last - first)

        logs = [math.log10(max(v, 1e-12)) for v in self.values]
        lo, hi = min(logs), max(logs)
        span = hi - lo or 1.0
        self._curve(p, [QPointF(x_of(e), plot.bottom() - plot.height() * (v - lo) / span)
                        for e, v in zip(self.epochs, logs, strict=True)], LOSS_COLOUR)
        p.setPen(QPen(grey, 1))
        p.drawRect(plot)
        p.drawText(QRectF(0, plot.top() - 2, left - 3, fm.height()), Qt.AlignmentFlag.AlignRight, f"{10 ** hi:.3g}")
        p.drawText(QRectF(0, plot.bottom() - fm.height() + 2, left - 3, fm.height()), Qt.AlignmentFlag.AlignRight,
                   f"{10 ** lo:.3g}")
        below = QRectF(plot.left(), plot.bottom() + 2, plot.width(), fm.height())
        p.drawText(below, Qt.AlignmentFlag.AlignLeft, str(first))
        p.drawText(below, Qt.AlignmentFlag.AlignHCenter, X_TITLE)
        p.drawText(below, Qt.AlignmentFlag.AlignRight, str(self.epochs[-1]))
        p.setPen(QPen(QColor(*LOSS_COLOUR), 1))
        p.drawText(QRectF(plot.left(), 0, plot.width(), fm.height()), Qt.AlignmentFlag.AlignLeft,
                   f"{LOSS_TITLE} {self.values[-1]:.4g}")
        if self.validation:
            self._validation(p, plot, x_of, fm.height())
        p.end()

    def _validation(self, p: QPainter, plot: QRectF, x_of, text_h: int) -> None:
        scores = [s for _, s in self.validation]
        lo, hi = min(scores), max(scores)
        span = hi - lo or 1.0
        self._curve(p, [QPointF(x_of(e), plot.bottom() - plot.height() * (s - lo) / span)
                        for e, s in self.validation], VALIDATION_COLOUR, dots=len(self.validation) < 3)
        p.setPen(QPen(QColor(*VALIDATION_COLOUR), 1))
        p.drawText(QRectF(plot.right() + 3, plot.top() - 2, 60, text_h), Qt.AlignmentFlag.AlignLeft, f"{hi:.2f}")
        p.drawText(QRectF(plot.right() + 3, plot.bottom() - text_h + 2, 60, text_h), Qt.AlignmentFlag.AlignLeft,
                   f"{lo:.2f}")
        p.drawText(QRectF(plot.left(), 0, plot.width(), text_h), Qt.AlignmentFlag.AlignRight,
                   f"{VALIDATION_TITLE} {scores[-1]:.3f}")

    @staticmethod
    def _curve(p: QPainter, points: list[QPointF], colour: tuple[int, int, int], *, dots: bool = False) -> None:
        p.setPen(QPen(QColor(*colour), 2))
        if len(points) > 1:
            p.drawPolyline(QPolygonF(points))
        if dots or len(points) == 1:
            p.setBrush(QColor(*colour))
            for point in points:
                p.drawEllipse(point, 2.5, 2.5)
