"""The main window: state header, hit map, ToF spectrum, rate trends and the side panels.

Layout::

    +-- device | STATE | Status ----------------------------------------------+
    | hit map (Preview / AcquisitionImage) | ToF spectrum     | Acquisition     |
    |   colour scale, log, ROI rectangle   |  window + ROI    | (controls)      |
    |                                      | rate trends      | Processing      |
    | Counters (rates, totals, losses, acquisition, ROI)      | (settings)      |
    +-- status bar: connection, refused writes ----------------------------------+

Everything is driven by :class:`~tango_tpx.gui.link.DeviceLink` events; the window never
blocks on the device (commands and writes run in the link's thread).
"""

from __future__ import annotations

from typing import Any

from PyQt5 import QtCore, QtGui, QtWidgets

from .editors import Binder
from .forms import ControlsPanel, CountersForm, SettingsPanel, StateHeader
from .link import DeviceLink
from .plots import ImagePanel, TofPanel, TrendPanel

#: Default window size (px); the screenshot has this size.
WINDOW_SIZE = (1800, 1000)


class TpxWindow(QtWidgets.QMainWindow):
    """The Timepix3 device window for the device ``url`` (``tango://HOST:PORT/a/b/c`` or a name)."""

    def __init__(self, url: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.url = url
        self.setWindowTitle(f"Timepix3 - {url}")
        self.link = DeviceLink(url, (), parent=self)
        self.binder = Binder(self.link)

        self.header = StateHeader(self.binder, url)
        self.image = ImagePanel(self.binder)
        self.tof = TofPanel(self.binder)
        self.trends = TrendPanel(self.binder)
        self.controls = ControlsPanel(self.binder)
        self.settings = SettingsPanel(self.binder)
        self.counters = CountersForm(self.binder)
        # the link follows every attribute some panel watches (State and Status always)
        self.link.names = tuple(n for n in self.binder.names() if n not in ("state", "status"))

        right = QtWidgets.QSplitter(QtCore.Qt.Vertical)
        right.addWidget(self._titled("Time of flight", self.tof))
        right.addWidget(self._titled("Rates", self.trends))
        right.setSizes([540, 340])
        split = QtWidgets.QSplitter(QtCore.Qt.Horizontal)
        split.addWidget(self._titled("Hit map", self.image))
        split.addWidget(right)
        split.setSizes([720, 600])
        plots = QtWidgets.QWidget()
        plots_layout = QtWidgets.QVBoxLayout(plots)
        plots_layout.setContentsMargins(0, 0, 0, 0)
        plots_layout.addWidget(split, 1)
        plots_layout.addWidget(self.counters)
        side = QtWidgets.QWidget()
        side_layout = QtWidgets.QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        for panel in (self.controls, self.settings):
            side_layout.addWidget(panel)
        side_layout.addStretch(1)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(side)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        side_width = side.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 6
        scroll.setMinimumWidth(side_width)
        scroll.setFrameShape(QtWidgets.QFrame.NoFrame)
        body = QtWidgets.QSplitter(QtCore.Qt.Horizontal)
        body.addWidget(plots)
        body.addWidget(scroll)
        body.setStretchFactor(0, 1)
        body.setSizes([WINDOW_SIZE[0] - side_width - 20, side_width])
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.addWidget(self.header)
        layout.addWidget(body, 1)
        self.setCentralWidget(central)
        self.resize(*WINDOW_SIZE)

        self._error_box: QtWidgets.QMessageBox | None = None
        self.errors: list[tuple[str, str]] = []
        self.link.connected.connect(lambda _a: self.statusBar().showMessage(f"connected to {url}", 5000))
        self.link.disconnected.connect(lambda why: self.statusBar().showMessage(why))
        self.link.failed.connect(self._refused)
        self.link.done.connect(self._done)
        self.statusBar().showMessage(f"connecting to {url} ...")

    @staticmethod
    def _titled(title: str, widget: QtWidgets.QWidget) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox(title)
        layout = QtWidgets.QVBoxLayout(box)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(widget)
        return box

    def start(self) -> "TpxWindow":
        """Connect to the device (in the background) and show the window."""
        self.link.start()
        self.show()
        return self

    def _refused(self, what: str, message: str) -> None:
        """A refused write or command: the device's message in the status bar and a dialog."""
        self.errors.append((what, message))
        text = f"{what} refused: {message}"
        self.statusBar().showMessage(text, 20000)
        if QtGui.QGuiApplication.platformName() in ("offscreen", "minimal"):
            return  # nobody to click a dialog away
        if self._error_box is None:
            self._error_box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Warning, "Device refused",
                                                    text, QtWidgets.QMessageBox.Ok, self)
            self._error_box.setModal(False)
        self._error_box.setText(text)
        self._error_box.show()

    def _done(self, command: str, result: Any) -> None:
        if command == "OpenFile" and result:
            self.statusBar().showMessage(f"recording to {result}", 10000)
        else:
            self.statusBar().showMessage(f"{command} done", 5000)

    def save_screenshot(self, path: str) -> bool:
        """Render the window into a PNG at ``path``; True when written."""
        return bool(self.grab().save(str(path), "PNG"))

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt API
        self.link.stop()
        super().closeEvent(event)
