"""The three plots of the window: hit map, ToF spectrum, rate trends (pyqtgraph).

* :class:`ImagePanel`: the live ``Preview`` hit map (hits per pixel over the last summary
  period) or, switchable, the ``AcquisitionImage`` (hits per pixel of the current or last
  acquisition), with a colour scale (histogram/LUT; automatic levels or the ones set on it),
  a log option and the ``Roi`` x/y rectangle, draggable to set it.
* :class:`TofPanel`: ``TofHistogram`` over ``TofAxis`` (ns, shown in µs) or the
  acquisition's ``AcquisitionTofHistogram``/``AcquisitionTofAxis``; the event window
  (``EventWindowStart``/``End``, µs) and the ROI's ToF limits (``Roi[4:6]``, µs) drawn as
  regions that can be dragged to set them, plus number fields for the window.
* :class:`TrendPanel`: ``HitRate``, ``CentroidRate`` and ``TriggerRate`` over the last
  :data:`TREND_SECONDS` s, from their change events.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets

from .editors import AttrEditor, Binder, availability
from .link import AttrInfo

#: Length of the rate trends, s.
TREND_SECONDS = 300.0
#: Sources of the image panel: (label, image attribute).
IMAGE_SOURCES = (("Live (last period)", "Preview"),
                 ("Acquisition", "AcquisitionImage"))
#: Sources of the ToF panel: (label, histogram attribute, axis attribute).
TOF_SOURCES = (("Live (last period)", "TofHistogram", "TofAxis"),
               ("Acquisition", "AcquisitionTofHistogram", "AcquisitionTofAxis"))


def _source_combo(items: tuple, binder: Binder, on_change) -> QtWidgets.QComboBox:
    """A combo of data sources; entries whose attribute the device lacks are disabled."""
    combo = QtWidgets.QComboBox()
    for item in items:
        combo.addItem(item[0])
    combo.currentIndexChanged.connect(on_change)

    def connected(attrs: dict[str, AttrInfo] | None) -> None:
        model = combo.model()
        for i, item in enumerate(items):
            _info, why = availability(attrs, item[1]) if attrs is not None else (None, "")
            entry = model.item(i)
            entry.setEnabled(not why)
            entry.setToolTip(why)
        if attrs is not None and not model.item(combo.currentIndex()).isEnabled():
            combo.setCurrentIndex(0)

    binder.on_connect(connected)
    return combo


class ImagePanel(QtWidgets.QWidget):
    """Hit map with colour scale, log option, source switch and ROI rectangle."""

    def __init__(self, binder: Binder, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.binder = binder
        self.source = IMAGE_SOURCES[0][1]
        #: The last image of the selected source, as the device sent it (hits per pixel, [y, x]).
        self.data: np.ndarray | None = None
        self.frames = 0
        self._roi_value: np.ndarray | None = None
        self._roi_busy = False

        self.combo = _source_combo(IMAGE_SOURCES, binder, self._source_changed)
        self.log = QtWidgets.QCheckBox("log scale")
        self.log.toggled.connect(lambda _on: self._render())
        self.auto = QtWidgets.QCheckBox("auto levels")
        self.auto.setChecked(True)
        self.auto.setToolTip("rescale the colours to each image; untick to keep the levels set on the colour bar")
        self.auto.toggled.connect(lambda _on: self._render())
        self.info = QtWidgets.QLabel("no image yet")

        self.view = pg.GraphicsLayoutWidget()
        self.plot = self.view.addPlot()
        self.plot.setAspectLocked(True)
        self.plot.setLabel("bottom", "x (px)")
        self.plot.setLabel("left", "y (px)")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.lut = pg.HistogramLUTItem()
        self.lut.setImageItem(self.image)
        self.lut.gradient.loadPreset("viridis")
        self.view.addItem(self.lut)
        self.roi = pg.RectROI((64, 64), (128, 128), pen=pg.mkPen("#ff8c00", width=2), movable=True)
        self.roi.setZValue(10)
        self.roi.sigRegionChangeFinished.connect(self._roi_dragged)
        self.plot.addItem(self.roi)
        self.roi.setVisible(False)

        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("source"))
        top.addWidget(self.combo)
        top.addWidget(self.log)
        top.addWidget(self.auto)
        top.addStretch(1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.info)

        for _label, name in IMAGE_SOURCES:
            binder.watch(name, lambda v, n=name: self._image(n, v))
        binder.watch("Roi", self._roi_from_device)
        binder.on_connect(self._connected)

    def _connected(self, attrs: dict[str, AttrInfo] | None) -> None:
        info, why = availability(attrs, "Roi", need_write=True)
        self.roi.setVisible(attrs is not None and info is not None)
        self.roi.translatable = self.roi.resizable = not why
        self.roi.setToolTip(why or "ROI (x0, y0)-(x1, y1) in px: drag or resize to set Roi")

    def _source_changed(self, index: int) -> None:
        self.source = IMAGE_SOURCES[index][1]
        self.data = None
        self.frames = 0
        self._render()
        if self.binder.link.has(self.source):
            self.binder.link.read(self.source)

    def _image(self, name: str, value: Any) -> None:
        if name != self.source or value is None:
            return
        arr = np.asarray(value)
        if arr.ndim != 2:
            return
        if self.data is None or self.data.shape != arr.shape:  # frame the image (not the ROI)
            h, w = arr.shape
            self.plot.getViewBox().setRange(xRange=(0, w), yRange=(0, h), padding=0.02)
            self.plot.getViewBox().disableAutoRange()
            self.roi.maxBounds = QtCore.QRectF(0, 0, w, h)
        self.data = arr
        self.frames += 1
        self._render()

    def _render(self) -> None:
        if self.data is None or self.data.size == 0:
            self.image.clear()
            self.info.setText("no image yet")
            return
        shown = np.log10(1.0 + self.data.astype(np.float64)) if self.log.isChecked() else \
            self.data.astype(np.float32)
        self.image.setImage(shown, autoLevels=self.auto.isChecked() or self.frames <= 1)
        self.info.setText(f"{self.data.shape[1]}x{self.data.shape[0]} px, {int(self.data.sum())} hits"
                          + (" (log10(1+n))" if self.log.isChecked() else ""))

    def _roi_from_device(self, value: Any) -> None:
        arr = np.asarray(value, dtype=np.float64).ravel()
        if arr.size < 4:
            return
        self._roi_value = arr
        x0, y0, x1, y1 = arr[:4]
        self._roi_busy = True
        try:
            self.roi.setPos((min(x0, x1), min(y0, y1)), finish=False)
            self.roi.setSize((abs(x1 - x0), abs(y1 - y0)), finish=False)
        finally:
            self._roi_busy = False

    def _roi_dragged(self, *_args: Any) -> None:
        if self._roi_busy or self._roi_value is None:
            return
        pos, size = self.roi.pos(), self.roi.size()
        new = self._roi_value.copy()
        new[:4] = (round(pos.x()), round(pos.y()), round(pos.x() + size.x()), round(pos.y() + size.y()))
        if not np.array_equal(new, self._roi_value):
            self.binder.link.write("Roi", new.tolist())


class TofPanel(QtWidgets.QWidget):
    """ToF spectrum (µs) with the event window and ROI ToF limits as draggable regions."""

    def __init__(self, binder: Binder, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.binder = binder
        self.source = 0
        #: Bin centres (µs) and counts of the curve shown, as the device sent them.
        self.axis_us = np.zeros(0)
        self.hist = np.zeros(0)
        self._axis_ns: dict[str, np.ndarray] = {}
        self._hist_raw: dict[str, np.ndarray] = {}
        self._x_span: tuple[float, float] | None = None
        self._window = [None, None]  # device's EventWindowStart/End, µs
        self._roi_value: np.ndarray | None = None
        self._busy = False

        self.combo = _source_combo(TOF_SOURCES, binder, self._source_changed)
        self.plot_widget = pg.PlotWidget()
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setLabel("bottom", "time of flight (µs)")
        self.plot.setLabel("left", "events / bin")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.curve = self.plot.plot([], [], pen=pg.mkPen("#1f77b4", width=1.5),
                                    fillLevel=0, brush=(31, 119, 180, 60))
        self.window_region = pg.LinearRegionItem(values=(0, 1), brush=(80, 160, 80, 30),
                                                 pen=pg.mkPen("#2ca02c", width=2))
        self.window_region.setZValue(5)
        self.window_region.sigRegionChangeFinished.connect(self._window_dragged)
        self.plot.addItem(self.window_region)
        self.roi_region = pg.LinearRegionItem(values=(0, 1), brush=(255, 140, 0, 25),
                                              pen=pg.mkPen("#ff8c00", width=2))
        self.roi_region.setZValue(6)
        self.roi_region.sigRegionChangeFinished.connect(self._roi_dragged)
        self.plot.addItem(self.roi_region)
        self.roi_region.setVisible(False)

        self.start = QtWidgets.QDoubleSpinBox(decimals=3, maximum=1e6, suffix=" µs")
        self.end = QtWidgets.QDoubleSpinBox(decimals=3, maximum=1e6, suffix=" µs")
        self.start_editor = AttrEditor(binder, "EventWindowStart", self.start)
        self.end_editor = AttrEditor(binder, "EventWindowEnd", self.end)
        self.info = QtWidgets.QLabel("")
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("source"))
        top.addWidget(self.combo)
        top.addSpacing(12)
        top.addWidget(QtWidgets.QLabel("window"))
        top.addWidget(self.start)
        top.addWidget(QtWidgets.QLabel("to"))
        top.addWidget(self.end)
        top.addStretch(1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot_widget, 1)
        layout.addWidget(self.info)

        for _label, hist, axis in TOF_SOURCES:
            binder.watch(hist, lambda v, n=hist: self._hist(n, v))
            binder.watch(axis, lambda v, n=axis: self._axis(n, v))
        binder.watch("EventWindowStart", lambda v: self._window_from_device(0, v))
        binder.watch("EventWindowEnd", lambda v: self._window_from_device(1, v))
        binder.watch("Roi", self._roi_from_device)
        binder.on_connect(self._connected)

    def _connected(self, attrs: dict[str, AttrInfo] | None) -> None:
        _i, why = availability(attrs, "EventWindowStart", need_write=True)
        self.window_region.setMovable(not why)
        self.window_region.setToolTip(why or "event window: drag the region or its edges to set "
                                             "EventWindowStart/End")
        info, why = availability(attrs, "Roi", need_write=True)
        self.roi_region.setVisible(attrs is not None and info is not None)
        self.roi_region.setMovable(not why)
        self.roi_region.setToolTip(why or "ROI ToF limits: drag to set Roi[4:6] (µs)")

    def _source_changed(self, index: int) -> None:
        self.source = index
        self.axis_us = np.zeros(0)
        self.hist = np.zeros(0)
        self.curve.setData([], [])
        self.info.setText("")
        for name in TOF_SOURCES[index][1:]:
            if self.binder.link.has(name):
                self.binder.link.read(name)

    def _axis(self, name: str, value: Any) -> None:
        self._axis_ns[name] = np.asarray(value, dtype=np.float64).ravel()
        self._update()

    def _hist(self, name: str, value: Any) -> None:
        self._hist_raw[name] = np.asarray(value, dtype=np.float64).ravel()
        self._update()

    def _update(self) -> None:
        _label, hist_name, axis_name = TOF_SOURCES[self.source]
        hist = self._hist_raw.get(hist_name)
        axis = self._axis_ns.get(axis_name)
        if hist is None or axis is None or axis.size != hist.size:  # the matching pair is not there yet
            return
        self.hist = hist
        self.axis_us = axis / 1000.0
        self.curve.setData(self.axis_us, self.hist)
        if axis.size and (self._x_span is None or self._x_span != (axis[0], axis[-1])):
            self._x_span = (axis[0], axis[-1])
            lo, hi = self.axis_us[0], self.axis_us[-1]
            pad = 0.04 * max(hi - lo, 1e-3)
            self.plot.setXRange(lo - pad, hi + pad, padding=0)
        self.info.setText(f"{hist.size} bins, {int(hist.sum())} events")

    def _set_region(self, region: pg.LinearRegionItem, lo: float, hi: float) -> None:
        self._busy = True
        try:
            region.setRegion((lo, hi))
        finally:
            self._busy = False

    def _window_from_device(self, which: int, value: Any) -> None:
        self._window[which] = float(value)
        if None not in self._window:
            self._set_region(self.window_region, *self._window)

    def _window_dragged(self, *_args: Any) -> None:
        if self._busy or None in self._window:
            return
        lo, hi = (max(0.0, round(v, 3)) for v in self.window_region.getRegion())
        self.set_window(lo, hi)

    def set_window(self, start_us: float, end_us: float) -> None:
        """Write the event window in an order the device accepts at every step (start <= end)."""
        old_start, old_end = self._window
        link = self.binder.link
        writes = [("EventWindowStart", start_us), ("EventWindowEnd", end_us)]
        if old_end is not None and start_us > old_end:
            writes.reverse()
        for name, value in writes:
            old = old_start if name == "EventWindowStart" else old_end
            if old is None or abs(old - value) > 1e-9:
                link.write(name, float(value))

    def _roi_from_device(self, value: Any) -> None:
        arr = np.asarray(value, dtype=np.float64).ravel()
        if arr.size < 6:
            return
        self._roi_value = arr
        self._set_region(self.roi_region, arr[4], arr[5])

    def _roi_dragged(self, *_args: Any) -> None:
        if self._busy or self._roi_value is None:
            return
        new = self._roi_value.copy()
        new[4:6] = [max(0.0, round(v, 3)) for v in self.roi_region.getRegion()]
        if not np.array_equal(new, self._roi_value):
            self.binder.link.write("Roi", new.tolist())


class TrendPanel(QtWidgets.QWidget):
    """Rates over the last :data:`TREND_SECONDS` s (log scale, x in s before now), one curve per attribute."""

    RATES = (("HitRate", "hits", "#1f77b4"), ("CentroidRate", "centroids", "#d62728"),
             ("TriggerRate", "triggers", "#2ca02c"))

    def __init__(self, binder: Binder, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = pg.PlotWidget()
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setLogMode(y=True)
        self.plot.setLabel("bottom", "time (s, 0 = now)")
        self.plot.setXRange(-60, 0, padding=0.02)
        self.plot.setLabel("left", "rate", units="Hz")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.addLegend(offset=(5, 5))
        self.history: dict[str, deque] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        for name, label, colour in self.RATES:
            self.history[name] = deque()
            self.curves[name] = self.plot.plot([], [], name=label, pen=pg.mkPen(colour, width=2),
                                               connect="finite")
            binder.watch(name, lambda v, n=name: self.add(n, v))
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

    def add(self, name: str, value: Any, t: float | None = None) -> None:
        """Append one rate (Hz) at time ``t`` (s since the epoch, default now) and redraw."""
        t = time.time() if t is None else t
        self.history[name].append((t, float(value)))
        oldest = t
        for key, hist in self.history.items():
            while hist and hist[0][0] < t - TREND_SECONDS:
                hist.popleft()
            if not hist:
                continue
            oldest = min(oldest, hist[0][0])
            ts = np.fromiter((p[0] for p in hist), np.float64, len(hist))
            vs = np.fromiter((p[1] for p in hist), np.float64, len(hist))
            vs[vs <= 0] = np.nan  # log scale: zero rates leave a gap
            self.curves[key].setData(ts - t, vs)
        self.plot.setXRange(-max(60.0, t - oldest), 0, padding=0.02)
