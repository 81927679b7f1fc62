"""One Timepix3 device as the Pool's controllers see it: proxy, states, one shared acquisition.

The counter/timer, image and ToF controllers of a measurement group all read the same
device. :class:`DeviceLink` (one per device name in the Pool process, from :func:`get_link`)
makes them share one bounded acquisition per point: the first controller that starts in a
point sends ``Start``; the others, started by the Pool a few milliseconds later in the same
point, join it. The file series settings of the image controller (``RecordingPath``,
``FilePrefix``, ``AutoRecord``, ``AutoConvert``) are written on the device when it prepares.

Device state -> Sardana state: ON -> On; RUNNING, MOVING, INIT -> Moving; FAULT and every
other state -> Fault with the device's Status text. An unreachable device gives Fault (in
``StateOne``) or a RuntimeError naming the device and the reason (in commands); a call
never waits longer than the controller's ``Timeout``.

A device in Fault is refused when the measurement group prepares (:meth:`DeviceLink.check_ready`).
A Start that fails later, in the point itself, is not raised to the Pool: the Pool's software
acquisition would then stay busy and every later acquisition of the measurement group would
wait for it for ever. :meth:`DeviceLink.fail` keeps the reason instead and the channels are in
Fault with it until the next measurement prepares or a stop, so the Pool ends the point with
Fault.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: A controller that starts within this many seconds after another one, in the same point, joins it.
JOIN_WINDOW_S = 1.0
#: State reads are shared between the controllers for this long (s).
STATE_CACHE_S = 0.02
#: Group of the converted HDF5 file that ``h5file://`` references point at (written without the
#: leading "/": Sardana's NXscan recorder only accepts ``h5file://FILE::a/b`` dataset paths).
H5_DATASET = "centroided"

#: Synchronisation modes the controllers accept (names of sardana.pool.AcqSynch members).
SUPPORTED_SYNCH = ("SoftwareTrigger", "SoftwareGate")


class DeviceError(RuntimeError):
    """A Timepix3 device call failed; the text names the device and says why."""


@dataclass(frozen=True)
class SeriesRequest:
    """Where the image controller wants each point's file: ``directory/prefix<NNNNN>.raw``.

    ``directory`` None = the device's RecordingPath as it is; ``convert``: also HDF5.
    """

    directory: str | None
    prefix: str | None
    convert: bool


def parse_value_ref_pattern(pattern: str | None) -> SeriesRequest:
    """Turn a Sardana value reference pattern into the device's file series settings.

    The Timepix3 device writes ``RecordingPath/{FilePrefix}{FileIndex:05d}.raw``, FileIndex
    counting on from file to file (never overwriting). So the pattern names a directory and
    a prefix; ``{index}`` (Sardana's placeholder) stands for that running number and may only
    come last, optionally followed by ``.raw`` or ``.h5``:

    * ``""`` -> the device's RecordingPath and FilePrefix as set;
    * ``file:///data/run7/scan_{index}.raw`` -> RecordingPath /data/run7, FilePrefix ``scan_``;
    * ``h5file:///data/run7/scan_{index}`` -> the same, plus AutoConvert (HDF5 references);
    * ``/data/run7/`` -> RecordingPath /data/run7, the device's FilePrefix.

    Raises ValueError saying what is accepted for anything else.
    """
    text = (pattern or "").strip()
    if not text:
        return SeriesRequest(None, None, False)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    path, sep, dataset = rest.partition("::")
    if scheme not in ("", "file", "h5file") or (sep and scheme != "h5file"):
        raise ValueError(f"value reference pattern {text!r}: expected [file://|h5file://]DIR/PREFIX{{index}}"
                         f"[.raw|.h5]")
    convert = scheme == "h5file"
    if not path.startswith("/"):
        raise ValueError(f"value reference pattern {text!r}: the directory must be an absolute path")
    if path.endswith("/"):
        return SeriesRequest(path.rstrip("/") or "/", None, convert)
    directory, _, name = path.rpartition("/")
    stem = re.sub(r"\.(raw|h5)$", "", name)
    prefix, brace, rest = stem.partition("{")
    if brace and not re.fullmatch(r"index(:[0-9<>^=]*d?)?}", rest):
        raise ValueError(f"value reference pattern {text!r}: only {{index}} may follow the prefix (the "
                         f"device numbers its files PREFIX00000.raw, PREFIX00001.raw, ...)")
    if "/" in prefix or not re.fullmatch(r"[\w.+-]*", prefix):
        raise ValueError(f"value reference pattern {text!r}: prefix {prefix!r} may hold letters, digits, "
                         f"'_', '-', '+' and '.' only")
    return SeriesRequest(directory or "/", prefix, convert)


def file_reference(raw_path: str, hdf5_path: str | None, convert: bool) -> str:
    """The URI the NXscan recorder stores for one point: ``file://X.raw`` or ``h5file://X.h5::centroided``."""
    if convert:
        h5 = hdf5_path or str(Path(raw_path).with_suffix(".h5"))
        return f"h5file://{h5}::{H5_DATASET}"
    return f"file://{raw_path}"


def sardana_state(dev_state: Any, status: str) -> tuple[str, str]:
    """Map a Tango device state to the name of a Sardana state and a status line."""
    name = str(dev_state).split(".")[-1].upper()
    if name == "ON":
        return "On", status
    if name in ("RUNNING", "MOVING", "INIT"):
        return "Moving", status
    return "Fault", status


@dataclass
class _Round:
    started: float
    members: set[str] = field(default_factory=set)


class DeviceLink:
    """The Timepix3 device ``name`` for all controllers of one Pool (see module docstring)."""

    def __init__(self, name: str, timeout_s: float = 3.0) -> None:
        self.name = name
        self.timeout_s = float(timeout_s)
        self._proxy: Any = None
        self._lock = threading.RLock()
        self._round: _Round | None = None
        self._state: tuple[float, str, str] | None = None
        self.integration_time: float | None = None
        self.series: SeriesRequest | None = None
        #: why the last start failed (the channels are in Fault with it until the next start/stop)
        self.failure: str | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def proxy(self) -> Any:
        """The DeviceProxy (created on first use, client timeout = ``timeout_s``)."""
        import tango

        with self._lock:
            if self._proxy is None:
                try:
                    proxy = tango.DeviceProxy(self.name)
                    proxy.set_timeout_millis(int(self.timeout_s * 1000))
                except tango.DevFailed as exc:
                    raise DeviceError(f"Timepix3 device {self.name} unreachable: {_desc(exc)}") from None
                self._proxy = proxy
            return self._proxy

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(proxy)``; a Tango error becomes DeviceError ``"<device>: <what> failed: <reason>"``."""
        import tango

        try:
            return fn(self.proxy())
        except tango.DevFailed as exc:
            raise DeviceError(f"Timepix3 device {self.name}: {what} failed: {_desc(exc)}") from None

    def read(self, *names: str) -> dict[str, Any]:
        """Read attributes in one call; returns name -> value."""
        values = self.call(f"reading {', '.join(names)}", lambda p: p.read_attributes(list(names)))
        return {n: v.value for n, v in zip(names, values)}

    def write(self, name: str, value: Any) -> None:
        self.call(f"writing {name} = {value!r}", lambda p: p.write_attribute(name, value))

    # -- state ---------------------------------------------------------------------------------
    def state(self, fresh: bool = False) -> tuple[str, str]:
        """``(Sardana state name, status)``; an unreachable device is ``Fault`` with the reason."""
        failure = self.failure
        if failure is not None:
            return "Fault", failure
        now = time.monotonic()
        cached = self._state
        if not fresh and cached is not None and now - cached[0] < STATE_CACHE_S:
            return cached[1], cached[2]
        try:
            dev_state = self.call("reading State", lambda p: p.state())
            status = self.call("reading Status", lambda p: p.status()) if str(dev_state) != "ON" else "ON"
            result = sardana_state(dev_state, f"{self.name}: {status.strip()}")
        except DeviceError as exc:
            result = ("Fault", str(exc))
        self._state = (time.monotonic(), *result)
        return result

    def check_ready(self) -> None:
        """Before a measurement: forget an earlier failed start, then raise DeviceError naming the
        device's state and status if it is in Fault (or unreachable)."""
        self.failure = None
        state, status = self.state(fresh=True)
        if state == "Fault":
            raise DeviceError(f"Timepix3 device {self.name} is in Fault, not ready to acquire: {status}")

    def fail(self, reason: str) -> None:
        """Loading or starting a point failed: the channels report Fault with ``reason`` (and
        this point starts nothing) until the next measurement prepares or a stop."""
        with self._lock:
            self._round = None
            self._state = None
            self.failure = reason

    # -- acquisition ---------------------------------------------------------------------------
    def prepare_series(self, request: SeriesRequest | None) -> None:
        """Write the file series settings for the coming acquisitions (None: recording off)."""
        with self._lock:
            if request is None:
                self.write("AutoRecord", False)
            else:
                if request.directory is not None:
                    self.write("RecordingPath", request.directory)
                if request.prefix is not None:
                    self.write("FilePrefix", request.prefix)
                self.write("AutoConvert", bool(request.convert))
                self.write("AutoRecord", True)
            self.series = request

    def load(self, seconds: float) -> None:
        """Set the integration time (AcquisitionTime) of the coming acquisitions, in s (> 0)."""
        if not seconds > 0:
            raise ValueError(f"Timepix3 counts in time: integration time must be > 0 s, got {seconds!r} "
                             f"(monitor counting is not supported)")
        with self._lock:
            if self.integration_time != seconds:
                self.write("AcquisitionTime", float(seconds))
                self.write("AcquisitionTriggers", 0)
            self.integration_time = float(seconds)

    def start(self, who: str) -> bool:
        """Start a bounded acquisition for controller ``who`` or join the one of this point.

        Returns True when this call sent Start. Raises DeviceError if the device is not ON
        (the text names its state and status) or refuses Start.
        """
        with self._lock:
            now = time.monotonic()
            r = self._round
            if r is not None and who not in r.members and now - r.started < JOIN_WINDOW_S:
                r.members.add(who)
                return False
            if self.failure is not None:  # this point's load or another controller's start failed
                raise DeviceError(self.failure)
            if self.integration_time is None:
                raise DeviceError(f"Timepix3 device {self.name}: no integration time loaded")
            dev_state = self.call("reading State", lambda p: p.state())
            if str(dev_state) != "ON":
                status = self.call("reading Status", lambda p: p.status())
                sardana = sardana_state(dev_state, "")[0]
                raise DeviceError(f"Timepix3 device {self.name} is {dev_state} (Sardana state {sardana}), "
                                  f"not ON: {status.strip()}")
            # AcquisitionTime may have been changed by someone else since load()
            if abs(float(self.read("AcquisitionTime")["AcquisitionTime"]) - self.integration_time) > 1e-9:
                self.write("AcquisitionTime", self.integration_time)
            self.call("Start", lambda p: p.command_inout("Start"))
            self._round = _Round(time.monotonic(), {who})
            self._state = None
            return True

    def stop(self, wait_s: float = 15.0) -> None:
        """Stop the acquisition and close its file; waits up to ``wait_s`` for the device to settle.

        Harmless when nothing runs (the several channels of a measurement group all call it).
        """
        with self._lock:
            self._round = None
            self._state = None
            self.failure = None
            state = str(self.call("reading State", lambda p: p.state()))
            if state == "RUNNING":
                try:
                    self.call("Stop", lambda p: p.command_inout("Stop"))
                except DeviceError:
                    if str(self.call("reading State", lambda p: p.state())) == "RUNNING":
                        raise
            deadline = time.monotonic() + wait_s
            while str(self.call("reading State", lambda p: p.state())) in ("RUNNING", "MOVING"):
                if time.monotonic() > deadline:
                    raise DeviceError(f"Timepix3 device {self.name} still busy {wait_s:g} s after Stop")
                time.sleep(0.05)
            if self.read("RecordingFile")["RecordingFile"]:
                self.call("CloseFile", lambda p: p.command_inout("CloseFile"))

    def last_reference(self) -> str:
        """URI of the last acquisition's file (``file://...raw`` or ``h5file://...h5::centroided``)."""
        values = self.read("LastFile", "AutoConvert")
        raw = values["LastFile"]
        if not raw:
            raise DeviceError(f"Timepix3 device {self.name}: no file was recorded (AutoRecord off?)")
        convert = bool(values["AutoConvert"])
        h5 = None
        if convert:
            h5 = self.read("LastHdf5File")["LastHdf5File"] or None
            if h5 and Path(h5).stem != Path(raw).stem:
                h5 = None  # the conversion of this file has not published its name yet
        return file_reference(raw, h5, convert)


def _desc(exc: Any) -> str:
    try:
        return exc.args[0].desc.strip()
    except (AttributeError, IndexError):
        return str(exc)


_LINKS: dict[str, DeviceLink] = {}
_LINKS_LOCK = threading.Lock()


def get_link(name: str, timeout_s: float = 3.0) -> DeviceLink:
    """The process-wide DeviceLink for ``name`` (the longest timeout asked for wins)."""
    with _LINKS_LOCK:
        link = _LINKS.get(name.lower())
        if link is None:
            link = _LINKS[name.lower()] = DeviceLink(name, timeout_s)
        elif float(timeout_s) > link.timeout_s:
            link.timeout_s = float(timeout_s)
            if link._proxy is not None:
                link._proxy.set_timeout_millis(int(link.timeout_s * 1000))
        return link
