"""Small Qt widgets bound to one device attribute or command through a :class:`Binder`.

A bound widget is enabled only while the device is connected and has the attribute
(writable, for editors) or command; otherwise it is disabled and its tooltip says why.
Editors write when the user finishes an edit (Enter, focus out, a click) and show the
device's value otherwise; a value arriving while the user is typing does not overwrite it.
"""

from __future__ import annotations

from typing import Any, Callable

from PyQt5 import QtCore, QtWidgets

from .link import AttrInfo, DeviceLink

Handler = Callable[[Any], None]
ConnectHandler = Callable[[dict[str, AttrInfo] | None], None]


class Binder:
    """Routes the link's values to the widgets that watch them, by attribute name."""

    def __init__(self, link: DeviceLink) -> None:
        self.link = link
        self._handlers: dict[str, list[Handler]] = {}
        self._on_connect: list[ConnectHandler] = []
        self.attrs: dict[str, AttrInfo] | None = None
        link.value.connect(self.dispatch)
        link.connected.connect(self._connected)
        link.disconnected.connect(lambda _why: self._connected(None))

    def watch(self, name: str, handler: Handler) -> None:
        """Call ``handler(value)`` for each value of attribute ``name``."""
        self._handlers.setdefault(name.lower(), []).append(handler)

    def on_connect(self, handler: ConnectHandler) -> None:
        """Call ``handler(attrs)`` on (re)connection, ``handler(None)`` when the device is lost."""
        self._on_connect.append(handler)
        handler(self.attrs)

    def names(self) -> list[str]:
        """Every watched attribute (lower case)."""
        return list(self._handlers)

    def dispatch(self, name: str, value: Any) -> None:
        for handler in self._handlers.get(name.lower(), ()):
            handler(value)

    def _connected(self, attrs: dict[str, AttrInfo] | None) -> None:
        self.attrs = attrs
        for handler in self._on_connect:
            handler(attrs)


def availability(attrs: dict[str, AttrInfo] | None, name: str, need_write: bool = False
                 ) -> tuple[AttrInfo | None, str]:
    """(info, '') when ``name`` can be used, else (info or None, why not)."""
    if attrs is None:
        return None, "not connected to the device"
    info = attrs.get(name.lower())
    if info is None:
        return None, f"this device has no attribute {name}"
    if need_write and not info.writable:
        return info, f"{name} is read-only on this device"
    return info, ""


def _tooltip(info: AttrInfo) -> str:
    unit = f" [{info.unit}]" if info.unit else ""
    return f"{info.name}{unit}: {info.doc}" if info.doc else f"{info.name}{unit}"


class AttrEditor(QtCore.QObject):
    """Binds an editor widget (spin box, check box, line edit, combo box) to a R/W attribute.

    ``scale`` converts device to display units (display = device * scale).
    """

    def __init__(self, binder: Binder, name: str, widget: QtWidgets.QWidget, scale: float = 1.0) -> None:
        super().__init__(widget)
        self.binder = binder
        self.name = name
        self.widget = widget
        self.scale = scale
        self.device_value: Any = None
        w = widget
        if isinstance(w, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            w.setKeyboardTracking(False)
            w.editingFinished.connect(self._edited)
        elif isinstance(w, QtWidgets.QCheckBox):
            w.clicked.connect(self._edited)
        elif isinstance(w, QtWidgets.QLineEdit):
            w.editingFinished.connect(self._edited)
        elif isinstance(w, QtWidgets.QComboBox):
            w.activated.connect(self._edited)
        else:
            raise TypeError(f"no editor binding for {type(w).__name__}")
        binder.watch(name, self.show_value)
        binder.on_connect(self._connected)

    def _connected(self, attrs: dict[str, AttrInfo] | None) -> None:
        info, why = availability(attrs, self.name, need_write=True)
        self.widget.setEnabled(not why)
        self.widget.setToolTip(why or _tooltip(info))
        if info is None:
            return
        w = self.widget
        if isinstance(w, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            lo = info.min_value * self.scale if info.min_value is not None else w.minimum()
            hi = info.max_value * self.scale if info.max_value is not None else w.maximum()
            if isinstance(w, QtWidgets.QSpinBox):
                lo, hi = int(max(lo, -2**31)), int(min(hi, 2**31 - 1))
            w.setRange(lo, hi)
        elif isinstance(w, QtWidgets.QComboBox) and info.enum_labels:
            current = w.currentIndex()
            w.clear()
            w.addItems(list(info.enum_labels))
            w.setCurrentIndex(max(0, current))

    def current(self) -> Any:
        """The value the widget shows, in device units."""
        w = self.widget
        if isinstance(w, QtWidgets.QSpinBox):
            return int(round(w.value() / self.scale))
        if isinstance(w, QtWidgets.QDoubleSpinBox):
            return float(w.value() / self.scale)
        if isinstance(w, QtWidgets.QCheckBox):
            return bool(w.isChecked())
        if isinstance(w, QtWidgets.QLineEdit):
            return w.text()
        return int(w.currentIndex())

    def show_value(self, value: Any) -> None:
        """Show the device's value (unless the user is editing a text or number)."""
        if value is None:
            return
        self.device_value = value
        w = self.widget
        if w.hasFocus() and not isinstance(w, (QtWidgets.QCheckBox, QtWidgets.QComboBox)):
            return
        blocked = w.blockSignals(True)
        try:
            if isinstance(w, QtWidgets.QSpinBox):
                w.setValue(int(round(float(value) * self.scale)))
            elif isinstance(w, QtWidgets.QDoubleSpinBox):
                w.setValue(float(value) * self.scale)
            elif isinstance(w, QtWidgets.QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QtWidgets.QLineEdit):
                w.setText(str(value))
            else:
                w.setCurrentIndex(int(value))
        finally:
            w.blockSignals(blocked)

    def _edited(self, *_args: Any) -> None:
        value = self.current()
        if self.device_value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if abs(float(value) - float(self.device_value)) <= 1e-9 * max(1.0, abs(float(value))):
                return
        elif value == self.device_value:
            return
        self.binder.link.write(self.name, value)


class ValueLabel(QtWidgets.QLabel):
    """Shows one read-only attribute as text (``fmt`` formats the value); ``alarm(value)``
    True paints it red (drops, lost triggers)."""

    def __init__(self, binder: Binder, name: str, fmt: str = "{}", alarm: Callable[[Any], bool] | None = None,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("-", parent)
        self.name = name
        self.fmt = fmt
        self.alarm = alarm
        self.value: Any = None
        self.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        binder.watch(name, self.show_value)
        binder.on_connect(self._connected)

    def _connected(self, attrs: dict[str, AttrInfo] | None) -> None:
        info, why = availability(attrs, self.name)
        self.setEnabled(not why)
        self.setToolTip(why or _tooltip(info))
        if info is None and attrs is not None:
            self.setText("n/a")

    def show_value(self, value: Any) -> None:
        self.value = value
        try:
            text = self.fmt.format(value)
        except (TypeError, ValueError):
            text = str(value)
        self.setText(text)
        if isinstance(value, str) and len(value) > 30:
            self.setToolTip(value)
        bad = bool(self.alarm and self.alarm(value))
        self.setStyleSheet("color: #c00000; font-weight: bold;" if bad else "")


class CommandButton(QtWidgets.QPushButton):
    """Runs a device command; ``arg()`` (optional) supplies its argument."""

    def __init__(self, binder: Binder, command: str, text: str | None = None,
                 arg: Callable[[], Any] | None = None, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(text or command, parent)
        self.command = command
        self.arg = arg
        self.binder = binder
        self.clicked.connect(self._run)
        binder.on_connect(self._connected)

    def _connected(self, attrs: dict[str, AttrInfo] | None) -> None:
        if attrs is None:
            why = "not connected to the device"
        elif not self.binder.link.has_command(self.command):
            why = f"this device has no command {self.command}"
        else:
            why = ""
        self.setEnabled(not why)
        self.setToolTip(why or f"run the device command {self.command}")

    def _run(self) -> None:
        self.binder.link.command(self.command, self.arg() if self.arg else None)
