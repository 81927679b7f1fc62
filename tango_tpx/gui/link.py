"""The GUI's connection to one Timepix3 device: events in, writes and commands out.

:class:`DeviceLink` owns one ``tango.DeviceProxy``, used only by its own worker thread:

* it connects (and reconnects every :data:`RETRY_S` s while the device is missing or does not
  answer), lists the device's attributes and subscribes to change events of the attributes
  the GUI shows. Array attributes whose device only pushes data-ready events are read once
  per data-ready event; scalars without events are read every :data:`SLOW_READ_S` s. No image
  is ever read faster than its data-ready events;
* it pings the device every :data:`HEARTBEAT_S` s; :data:`HEARTBEAT_MISSES` failures in a row
  drop the connection (all subscriptions) and start reconnecting;
* writes and commands from the GUI are queued and run in the same thread, so a slow device
  never freezes the window; a refusal comes back as :attr:`DeviceLink.failed` with the
  device's own message.

Values reach the GUI thread as Qt signals (queued across threads): ``value(name, value)``
with the attribute name in lower case and the value as PyTango extracts it (numpy arrays
for images and spectra, ``tango.DevState`` for State).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

from PyQt5 import QtCore

#: Seconds between connection attempts while the device cannot be reached.
RETRY_S = 2.0
#: Seconds between ``state()`` checks of a connected device.
HEARTBEAT_S = 2.0
#: Failed heartbeats in a row after which the device counts as lost.
HEARTBEAT_MISSES = 2
#: Seconds between reads of scalar attributes whose device pushes no events for them.
SLOW_READ_S = 3.0
#: Client timeout for commands and writes (Stop may drain the pipeline for a few seconds), ms.
TIMEOUT_MS = 15000


@dataclass(frozen=True)
class AttrInfo:
    """What the GUI needs to know about one device attribute."""

    name: str            #: as the device spells it
    writable: bool
    is_array: bool       #: spectrum or image
    unit: str
    label: str
    doc: str
    min_value: float | None
    max_value: float | None
    enum_labels: tuple[str, ...]


def _limit(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):  # 'Not specified'
        return None


def describe(info: Any) -> AttrInfo:
    """An :class:`AttrInfo` from a ``tango.AttributeInfoEx``."""
    import tango

    return AttrInfo(
        name=info.name,
        writable=info.writable in (tango.AttrWriteType.READ_WRITE, tango.AttrWriteType.WRITE,
                                   tango.AttrWriteType.READ_WITH_WRITE),
        is_array=info.data_format in (tango.AttrDataFormat.SPECTRUM, tango.AttrDataFormat.IMAGE),
        unit=str(info.unit or "").strip() if str(info.unit or "").strip() != "No unit" else "",
        label=str(info.label or info.name),
        doc=str(info.description or "") if str(info.description) != "No description" else "",
        min_value=_limit(getattr(info, "min_value", None)),
        max_value=_limit(getattr(info, "max_value", None)),
        enum_labels=tuple(getattr(info, "enum_labels", ()) or ()),
    )


def error_text(exc: BaseException) -> str:
    """The device's own message of a ``DevFailed`` (first description), else ``str(exc)``."""
    args = getattr(exc, "args", ())
    if args and hasattr(args[0], "desc"):
        return str(args[0].desc).strip()
    return str(exc) or type(exc).__name__


class DeviceLink(QtCore.QObject):
    """Event-driven connection of the GUI to the device ``url`` (see the module doc).

    ``names`` are the attributes to follow (missing ones are skipped). Call :meth:`start`
    once and :meth:`stop` before the application quits.
    """

    #: (lower-case attribute name, value)
    value = QtCore.pyqtSignal(str, object)
    #: {lower-case name: AttrInfo} once connected
    connected = QtCore.pyqtSignal(object)
    #: why the device cannot be reached (connection lost or never made)
    disconnected = QtCore.pyqtSignal(str)
    #: (what was asked, the device's message) for a refused write or command
    failed = QtCore.pyqtSignal(str, str)
    #: (command name, result) for a command that ran
    done = QtCore.pyqtSignal(str, object)

    def __init__(self, url: str, names: Iterable[str], parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.url = url
        self.names = tuple(names)
        self.attrs: dict[str, AttrInfo] = {}
        self.commands: set[str] = set()
        self.is_connected = False
        self.last_error = ""
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proxy = None
        self._subs: list[int] = []
        self._slow: list[str] = []
        self._alive = True
        self._misses = 0

    # ------------------------------------------------------------------ GUI side
    def start(self) -> None:
        """Start the worker thread (connects in the background)."""
        self._thread = threading.Thread(target=self._run, name="tango-tpx-gui-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Drop the subscriptions and end the worker thread; True when it ended in time."""
        self._stop.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def write(self, name: str, value: Any) -> None:
        """Queue a write of ``value`` to attribute ``name``."""
        self._jobs.put(("write", name, value))

    def read(self, name: str) -> None:
        """Queue a read of attribute ``name`` (its value comes as :attr:`value`)."""
        self._jobs.put(("read", name, None))

    def command(self, name: str, arg: Any = None) -> None:
        """Queue the command ``name`` (with ``arg`` when not None)."""
        self._jobs.put(("command", name, arg))

    def has(self, name: str) -> bool:
        """Whether the connected device has attribute ``name``."""
        return name.lower() in self.attrs

    def has_command(self, name: str) -> bool:
        """Whether the connected device has command ``name``."""
        return name.lower() in self.commands

    # ------------------------------------------------------------------ worker thread
    def _emit(self, signal: Any, *args: Any) -> None:
        if self._alive:
            try:
                signal.emit(*args)
            except RuntimeError:  # the Qt object is gone (application quitting)
                self._alive = False

    def _on_event(self, ev: Any) -> None:
        """Tango event callback (a Tango thread): forward the value to the GUI thread."""
        if self._stop.is_set():
            return
        import tango

        if ev.err:
            return  # a lost device is noticed by the heartbeat
        if ev.event == "data_ready" or isinstance(ev, tango.DataReadyEventData):
            self._jobs.put(("read", ev.attr_name.rsplit("/", 1)[-1], None))
            return
        av = ev.attr_value
        if av is not None:
            self._emit(self.value, av.name.lower(), av.value)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._proxy is None:
                    if not self._connect():
                        self._drain_jobs(RETRY_S, connected=False)
                        continue
                self._drain_jobs(HEARTBEAT_S, connected=True)
        finally:
            self._disconnect()

    def _drain_jobs(self, period: float, connected: bool) -> None:
        """Run queued jobs for ``period`` s, then (connected) check the device."""
        deadline = time.monotonic() + period
        next_slow = time.monotonic() + SLOW_READ_S
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                job = self._jobs.get(timeout=min(left, max(0.05, next_slow - time.monotonic())))
            except queue.Empty:
                job = None
            if self._stop.is_set():
                return
            if connected and time.monotonic() >= next_slow:
                self._read(self._slow)
                next_slow = time.monotonic() + SLOW_READ_S
            if job is None:
                continue
            kind, name, arg = job
            if not connected:
                if kind != "read":  # a refresh can wait for the connection; a write or command cannot
                    self._emit(self.failed, f"{kind} {name}", f"not connected: {self.last_error}")
                continue
            self._run_job(kind, name, arg)
        if connected and not self._stop.is_set():
            try:  # ping does not wait for the device's lock (a long command may hold it)
                self._proxy.ping()
                self._misses = 0
            except Exception as exc:  # noqa: BLE001 - twice in a row: the device is gone
                self._misses += 1
                if self._misses >= HEARTBEAT_MISSES:
                    self._lost(error_text(exc))

    def _run_job(self, kind: str, name: str, arg: Any) -> None:
        import tango

        proxy = self._proxy
        try:
            if kind == "read":
                self._read([name])
            elif kind == "write":
                proxy.write_attribute(name, arg)
                self._read([name])
            else:
                result = proxy.command_inout(name, arg) if arg is not None else proxy.command_inout(name)
                self._emit(self.done, name, result)
                self._read(["State", "Status"])
        except tango.DevFailed as exc:
            what = f"{name} = {arg!r}" if kind == "write" else (f"{name}({arg!r})" if arg is not None
                                                                 else name)
            self._emit(self.failed, what, error_text(exc))
            if kind == "write":
                self._read([name])  # the widget goes back to the device's value
        except Exception as exc:  # noqa: BLE001 - reported, the GUI goes on
            self._emit(self.failed, name, error_text(exc))

    def _read(self, names: list[str]) -> None:
        if not names or self._proxy is None:
            return
        try:
            for av in self._proxy.read_attributes(list(names)):
                if not av.has_failed:
                    self._emit(self.value, av.name.lower(), av.value)
        except Exception:  # noqa: BLE001 - the heartbeat decides whether the device is gone
            pass

    def _connect(self) -> bool:
        import tango

        try:
            proxy = tango.DeviceProxy(self.url)
            proxy.set_timeout_millis(TIMEOUT_MS)
            proxy.ping()
            infos = proxy.attribute_list_query_ex()
            commands = {c.cmd_name.lower() for c in proxy.command_list_query()}
        except Exception as exc:  # noqa: BLE001 - shown, and retried
            self.last_error = f"cannot reach {self.url}: {error_text(exc)}"
            self._emit(self.disconnected, self.last_error)
            return False
        self.attrs = {i.name.lower(): describe(i) for i in infos}
        self.commands = commands
        self._proxy = proxy
        self._misses = 0
        self.is_connected = True
        self.last_error = ""
        self._emit(self.connected, dict(self.attrs))
        wanted = ["State", "Status", *self.names]
        self._slow = []
        for name in wanted:
            info = self.attrs.get(name.lower())
            if info is None and name not in ("State", "Status"):
                continue
            if self._stop.is_set():
                break
            try:
                self._subs.append(proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, self._on_event))
                continue
            except tango.DevFailed:
                pass
            if info is not None and info.is_array:
                try:
                    self._subs.append(proxy.subscribe_event(name, tango.EventType.DATA_READY_EVENT,
                                                            self._on_event))
                except tango.DevFailed:
                    pass
                self._read([name])  # the current value once; then at each data-ready event
            else:
                self._slow.append(name)
        self._read(self._slow)
        return True

    def _lost(self, why: str) -> None:
        self._disconnect()
        self.last_error = f"lost {self.url}: {why}"
        self._emit(self.disconnected, self.last_error)

    def _disconnect(self) -> None:
        proxy, self._proxy = self._proxy, None
        self.is_connected = False
        subs, self._subs = self._subs, []
        for sid in subs:
            try:
                proxy.unsubscribe_event(sid)
            except Exception:  # noqa: BLE001 - the device may be gone
                pass
