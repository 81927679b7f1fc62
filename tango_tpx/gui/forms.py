"""The text panels of the window: state header, counters, acquisition controls, settings.

Every field is bound to one device attribute or command (:mod:`tango_tpx.gui.editors`);
fields whose attribute the device lacks stay disabled with a tooltip saying so.
"""

from __future__ import annotations

from typing import Any

from PyQt5 import QtCore, QtWidgets

from .editors import AttrEditor, Binder, CommandButton, ValueLabel


def state_colours(state: Any) -> tuple[str, str]:
    """(background, foreground) colour names Taurus uses for a Tango state (or None = unknown)."""
    try:
        from taurus.qt.qtgui.util import QT_DEVICE_STATE_PALETTE

        bg, fg = QT_DEVICE_STATE_PALETTE.qcolor(state if state is not None else "UNKNOWN")
        return bg.name(), fg.name()
    except Exception:  # noqa: BLE001 - no Taurus palette: plain grey
        return "#808080", "#ffffff"


def _big(n: Any) -> str:
    """An integer with thin thousands separators."""
    try:
        return f"{int(n):,}".replace(",", "\u2009")
    except (TypeError, ValueError):
        return str(n)


def _rate(hz: Any) -> str:
    hz = float(hz)
    for scale, unit in ((1e6, "M/s"), (1e3, "k/s")):
        if abs(hz) >= scale:
            return f"{hz / scale:.2f} {unit}"
    return f"{hz:.1f} /s"


def _nonzero(v: Any) -> bool:
    try:
        return int(v) > 0
    except (TypeError, ValueError):
        return False


class StateHeader(QtWidgets.QFrame):
    """Device name, State (coloured as Taurus colours states) and Status, always visible."""

    def __init__(self, binder: Binder, url: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self.state: Any = None
        self.device = QtWidgets.QLabel(f"<b>{url}</b>")
        self.state_label = QtWidgets.QLabel("UNKNOWN")
        self.state_label.setAlignment(QtCore.Qt.AlignCenter)
        self.state_label.setMinimumWidth(110)
        self.status = QtWidgets.QLabel("connecting ...")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        self.status.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Preferred)
        layout = QtWidgets.QHBoxLayout(self)
        layout.addWidget(self.device)
        layout.addWidget(self.state_label)
        layout.addWidget(self.status, 1)
        self.show_state(None)
        binder.watch("State", self.show_state)
        binder.watch("Status", lambda s: self.status.setText(str(s).strip()))
        binder.link.disconnected.connect(self._lost)

    def show_state(self, state: Any) -> None:
        self.state = state
        bg, fg = state_colours(state)
        self.state_label.setText(str(state) if state is not None else "UNKNOWN")
        self.state_label.setStyleSheet(f"background-color: {bg}; color: {fg}; font-weight: bold; "
                                       "padding: 4px; border-radius: 3px;")

    def _lost(self, why: str) -> None:
        self.show_state(None)
        self.status.setText(why)


class CountersForm(QtWidgets.QGroupBox):
    """Rates, totals since ResetCounters, losses (red when > 0) and the current acquisition."""

    FIELDS = (("HitRate", "hit rate", _rate), ("CentroidRate", "centroid rate", _rate),
              ("TriggerRate", "trigger rate", _rate), ("EventRate", "event rate", _rate),
              ("TotalHits", "total hits", _big), ("TotalCentroids", "total centroids", _big),
              ("TotalTriggers", "total triggers", _big), ("TotalEvents", "total events", _big),
              ("BytesReceived", "bytes received", _big),
              ("KernelDrops", "kernel drops", _big), ("LostTriggers", "lost triggers", _big),
              ("MalformedWords", "malformed words", _big),
              ("AcquisitionElapsed", "acquisition time", lambda v: f"{float(v):.1f} s"),
              ("AcquisitionHits", "acquisition hits", _big),
              ("AcquisitionCentroids", "acquisition centroids", _big),
              ("AcquisitionTriggersDone", "acquisition triggers", _big),
              ("RoiHits", "ROI hits", _big), ("RoiCentroids", "ROI centroids", _big),
              ("TrainId", "train ID", str))
    ALARMS = ("KernelDrops", "LostTriggers", "MalformedWords")

    def __init__(self, binder: Binder, columns: int = 4, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("Counters", parent)
        self.labels: dict[str, ValueLabel] = {}
        grid = QtWidgets.QGridLayout(self)
        grid.setVerticalSpacing(2)
        grid.setHorizontalSpacing(8)
        rows = -(-len(self.FIELDS) // columns)
        for i, (name, text, fmt) in enumerate(self.FIELDS):
            label = _FnLabel(binder, name, fmt, alarm=_nonzero if name in self.ALARMS else None)
            self.labels[name] = label
            row, col = i % rows, 2 * (i // rows)
            grid.addWidget(QtWidgets.QLabel(text), row, col, QtCore.Qt.AlignRight)
            grid.addWidget(label, row, col + 1)
        for col in range(columns):
            grid.setColumnStretch(2 * col + 1, 1)


class _FnLabel(ValueLabel):
    """A :class:`ValueLabel` formatted by a function."""

    def __init__(self, binder: Binder, name: str, fn, alarm=None) -> None:
        self.fn = fn
        super().__init__(binder, name, alarm=alarm)

    def show_value(self, value: Any) -> None:
        super().show_value(value)
        try:
            self.setText(self.fn(value))
        except (TypeError, ValueError):
            pass


class ControlsPanel(QtWidgets.QGroupBox):
    """Start/Stop, recording (OpenFile with a name, CloseFile), bounded and auto-recorded acquisitions."""

    def __init__(self, binder: Binder, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("Acquisition", parent)
        self.binder = binder
        self.start = CommandButton(binder, "Start")
        self.stop = CommandButton(binder, "Stop")
        self.reset = CommandButton(binder, "ResetCounters", "Reset counters")
        self.file_name = QtWidgets.QLineEdit()
        self.file_name.setPlaceholderText("run.raw (in RecordingPath)")
        self.open_file = CommandButton(binder, "OpenFile", "Open file",
                                       arg=lambda: self.file_name.text().strip())
        self.close_file = CommandButton(binder, "CloseFile", "Close file")
        self.acq_time = QtWidgets.QDoubleSpinBox(decimals=2, maximum=1e6, suffix=" s")
        self.acq_time.setSpecialValueText("until Stop")
        self.acq_triggers = QtWidgets.QSpinBox(maximum=2**31 - 1)
        self.acq_triggers.setSpecialValueText("unlimited")
        self.auto_record = QtWidgets.QCheckBox("record each acquisition")
        self.auto_convert = QtWidgets.QCheckBox("convert to HDF5")
        self.prefix = QtWidgets.QLineEdit()
        self.index = QtWidgets.QSpinBox(maximum=2**31 - 1)
        self.path = QtWidgets.QLineEdit()
        self.editors = [AttrEditor(binder, "AcquisitionTime", self.acq_time),
                        AttrEditor(binder, "AcquisitionTriggers", self.acq_triggers),
                        AttrEditor(binder, "AutoRecord", self.auto_record),
                        AttrEditor(binder, "AutoConvert", self.auto_convert),
                        AttrEditor(binder, "FilePrefix", self.prefix),
                        AttrEditor(binder, "FileIndex", self.index),
                        AttrEditor(binder, "RecordingPath", self.path)]
        self.recording = ValueLabel(binder, "RecordingFile", "{}")
        self.last_file = ValueLabel(binder, "LastFile", "{}")
        for label in (self.recording, self.last_file):  # long paths are clipped, the tooltip has them
            label.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)

        buttons = QtWidgets.QHBoxLayout()
        for b in (self.start, self.stop, self.reset):
            buttons.addWidget(b)
        files = QtWidgets.QHBoxLayout()
        files.addWidget(self.open_file)
        files.addWidget(self.close_file)
        form = QtWidgets.QFormLayout(self)
        form.setVerticalSpacing(3)
        form.addRow(buttons)
        form.addRow("stop after", self.acq_time)
        form.addRow("or after triggers", self.acq_triggers)
        form.addRow("recording path", self.path)
        form.addRow("file name", self.file_name)
        form.addRow("", files)
        form.addRow("recording", self.recording)
        form.addRow("auto", self.auto_record)
        form.addRow("", self.auto_convert)
        form.addRow("file prefix", self.prefix)
        form.addRow("file index", self.index)
        form.addRow("last file", self.last_file)


class SettingsPanel(QtWidgets.QGroupBox):
    """Processing settings: centroiding, clustering and ToT threshold (pipeline settings such as
    the number of processes re-arm the pipeline while ON; the device refuses them while RUNNING)."""

    def __init__(self, binder: Binder, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("Processing", parent)
        self.processes = QtWidgets.QSpinBox(minimum=1, maximum=256)
        self.centroiding = QtWidgets.QCheckBox("centroiding")
        self.algorithm = QtWidgets.QComboBox()
        self.algorithm.addItems(["fast", "dbscan"])
        self.tot = QtWidgets.QSpinBox(maximum=1023, suffix=" x 25 ns")
        self.radius = QtWidgets.QSpinBox(maximum=256, suffix=" px")
        self.time_window = QtWidgets.QDoubleSpinBox(decimals=1, maximum=1e9, suffix=" ns")
        self.min_size = QtWidgets.QSpinBox(maximum=65535)
        self.editors = [AttrEditor(binder, "CentroidProcesses", self.processes),
                        AttrEditor(binder, "Centroiding", self.centroiding),
                        AttrEditor(binder, "ClusteringAlgorithm", self.algorithm),
                        AttrEditor(binder, "TotThreshold", self.tot),
                        AttrEditor(binder, "ClusterRadius", self.radius),
                        AttrEditor(binder, "ClusterTimeWindow", self.time_window),
                        AttrEditor(binder, "MinClusterSize", self.min_size)]
        form = QtWidgets.QFormLayout(self)
        form.setVerticalSpacing(3)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.centroiding)
        row.addWidget(self.algorithm)
        form.addRow("clustering", row)
        form.addRow("centroid processes", self.processes)
        form.addRow("ToT threshold", self.tot)
        form.addRow("cluster radius", self.radius)
        form.addRow("cluster time window", self.time_window)
        form.addRow("min cluster size", self.min_size)


__all__ = ["StateHeader", "CountersForm", "ControlsPanel", "SettingsPanel", "state_colours"]
