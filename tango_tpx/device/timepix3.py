"""Tango device class ``Timepix3``: a thin Tango face of the acquisition pipeline.

The device holds no processing logic. It translates attributes and commands to
:class:`tango_tpx.pipeline.controller.AcquisitionController` and publishes the
controller's counters as Tango events from one monitor thread.

State machine::

    INIT --init_device--> ON --Start--> RUNNING --Stop--> ON
                           \\              |
                            `-- FAULT <---'   (stage died, disk full, UDP port busy ...)
    FAULT --Init--> ON

Limits are checked by the write methods, not with Tango's ``min_value``/``max_value``:
Tango's own refusal ("below the minimum authorized") does not say what is allowed, ours
does (the ranges are also in each attribute's description).

Units: event window in microseconds (us), rates in Hz, ToT in counts of 25 ns, time of
flight axis in ns, hit map in hits per pixel over the last summary period.
"""

from __future__ import annotations

import enum
import errno
import os
import tempfile
import threading
import time
import traceback
from typing import Any

import numpy as np
import tango
from tango import AttrWriteType, DevState, DispLevel
from tango.server import Device, attribute, command, device_property

#: Largest CentroidProcesses value: the CPUs this server may run on (at least 1).
try:
    CENTROID_PROCESSES_MAX: int = max(1, len(os.sched_getaffinity(0)))
except AttributeError:  # pragma: no cover - not Linux
    CENTROID_PROCESSES_MAX = max(1, os.cpu_count() or 1)

#: Event window limits in us (the window is relative to each TDC1 trigger).
EVENT_WINDOW_MAX_US: float = 1.0e6
#: Largest ToT value of a Timepix3 pixel (10-bit counter of 25 ns).
TOT_MAX: int = 1023
#: Shortest summary period accepted from the SummaryPeriod property, s.
MIN_SUMMARY_PERIOD_S: float = 0.05
#: Image size limits of Preview (2x2 quad frame is 516 x 516 pixels).
PREVIEW_MAX_DIM: int = 516
#: Longest ToF spectrum the device can publish (bins).
TOF_MAX_BINS: int = 1 << 16

#: Summary attributes pushed as change and archive events.
SUMMARY_ATTRIBUTES: tuple[str, ...] = (
    "HitRate", "TriggerRate", "EventRate", "CentroidRate",
    "TotalHits", "TotalTriggers", "TotalEvents", "TotalCentroids",
    "BytesReceived", "KernelDrops", "LostTriggers", "MalformedWords",
    "RecordingFile", "TrainId",
)
#: Array attributes pushed as change and data-ready events.
ARRAY_ATTRIBUTES: tuple[str, ...] = ("Preview", "TofHistogram", "TofAxis")

# counters() key -> (total attribute, rate attribute or None). Triggers are the TDC1 rising
# edges the pipeline numbers as events ("trigger_events"); "triggers" (all TDC edges) is
# the fall-back for a controller without that key.
_COUNTER_KEYS: dict[str, tuple[str, str | None]] = {
    "hits": ("TotalHits", "HitRate"),
    "trigger_events": ("TotalTriggers", "TriggerRate"),
    "events": ("TotalEvents", "EventRate"),
    "centroids": ("TotalCentroids", "CentroidRate"),
    "bytes": ("BytesReceived", None),
    "kernel_drops": ("KernelDrops", None),
    "lost_triggers": ("LostTriggers", None),
    "malformed_words": ("MalformedWords", None),
}


class ClusteringAlgorithm(enum.IntEnum):
    """Centroiding algorithm: ``fast`` (numba connected components) or ``dbscan``."""

    fast = 0
    dbscan = 1


class _Stopped(Exception):
    """The monitor thread was told to stop in the middle of pushing."""


def _fail(reason: str, desc: str, origin: str) -> None:
    """Raise DevFailed with a reason code and a human readable description."""
    tango.Except.throw_exception(reason, desc, origin)


class Timepix3(Device):
    """Timepix3 detector read out by a SPIDR board over UDP.

    Start/Stop the acquisition, record the raw stream with OpenFile/CloseFile, and watch
    live rates, totals and a preview. Settings written as attributes take effect at the
    next Start.
    """

    # ------------------------------------------------------------------ properties
    UdpHost = device_property(dtype=str, default_value="127.0.0.1",
                              doc="Address the SPIDR UDP stream is received on.")
    UdpPort = device_property(dtype=int, default_value=8192,
                              doc="UDP port the SPIDR stream is received on.")
    ChipLayout = device_property(dtype=str, default_value="single",
                                 doc="'single' (one chip, 256x256) or 'quad' (2x2 chips, 516x516).")
    DataStreamAddress = device_property(dtype=str, default_value="tcp://127.0.0.1:5560",
                                        doc="ZMQ PUB address for processed data; '' = off.")
    SummaryPeriod = device_property(dtype=float, default_value=1.0,
                                    doc="Period of summary events and of the preview, s.")
    TrainIdSource = device_property(dtype=str, default_value="",
                                    doc="European XFEL train-ID receiver: '' = none, a tty/pty path "
                                        "(e.g. /dev/serial/by-id/...; it may be plugged in later), 'usb' "
                                        "or 'usb:VID:PID'. Read from Init on, also while ON.")

    # ------------------------------------------------------------------ lifecycle
    def init_device(self) -> None:
        """Read properties, build the controller, configure events, start the monitor thread."""
        super().init_device()
        self.set_state(DevState.INIT)
        self.set_status("Initialising")
        if not hasattr(self, "_settings"):
            # Survives Init: values written by clients (and restored memorized values).
            self._settings: dict[str, Any] = {
                "CentroidProcesses": 1,
                "EventWindowStart": 0.0,
                "EventWindowEnd": 1000.0,
                "RecordingPath": "",
                "Centroiding": True,
                "ClusteringAlgorithm": ClusteringAlgorithm.fast,
                "TotThreshold": 0,
            }
        self._lock = threading.RLock()
        self._controller = None
        self._fault_message: str | None = None
        self._period = max(MIN_SUMMARY_PERIOD_S, float(self.SummaryPeriod))
        self._layout = str(self.ChipLayout).strip().lower()
        self._snapshot: dict[str, Any] = self._empty_snapshot()
        self._prev_counts: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._stop_monitor = threading.Event()
        # A monitor thread left by Init (delete_device cannot join it: the thread may be
        # waiting for the Tango monitor that Init holds); the new thread joins it first.
        previous = getattr(self, "_monitor", None)
        self._monitor: threading.Thread | None = None
        self._data_ready_counter = 0
        self._last_pushed: dict[str, Any] = {}

        for name in ("State", "Status", *SUMMARY_ATTRIBUTES):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        for name in ARRAY_ATTRIBUTES:
            self.set_change_event(name, True, False)
            self.set_data_ready_event(name, True)

        try:
            if self._layout not in ("single", "quad"):
                raise ValueError(f"ChipLayout property must be 'single' or 'quad', not {self.ChipLayout!r}")
            if not 0 < int(self.UdpPort) < 65536:
                raise ValueError(f"UdpPort property must be 1..65535, not {self.UdpPort}")
            self._controller = self.create_controller()
            self._apply_train_id_source()
        except Exception as exc:  # noqa: BLE001 - any failure is reported as FAULT
            self._enter_fault(f"Initialisation failed: {exc}")
        else:
            self.set_state(DevState.ON)
            self.set_status(self._idle_status())
        self._refresh(period_end=False)
        self._monitor = threading.Thread(target=self._monitor_loop, args=(self._stop_monitor, previous),
                                         name="Timepix3-monitor", daemon=True)
        self._monitor.start()

    def create_controller(self):
        """Build the acquisition controller from the device properties (override in tests)."""
        from tango_tpx.pipeline.controller import AcquisitionController

        stream = str(self.DataStreamAddress).strip() or None
        return AcquisitionController(udp_host=str(self.UdpHost), udp_port=int(self.UdpPort),
                                     layout=self._layout, stream_address=stream,
                                     preview_period_s=self._period)

    def delete_device(self) -> None:
        """Stop the monitor thread and the acquisition, release the controller."""
        # Stop the monitor thread without joining it (see init_device); it exits at its
        # next step and pushes nothing more.
        self._stop_monitor.set()
        self._wake.set()
        ctrl, self._controller = self._controller, None
        if ctrl is not None:
            for step in ("stop", "close"):
                try:
                    getattr(ctrl, step)()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    self.error_stream(f"controller.{step}() failed: {traceback.format_exc()}")
        super().delete_device()

    # ------------------------------------------------------------------ helpers
    def _empty_snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {name: 0 for name in SUMMARY_ATTRIBUTES}
        for name in ("HitRate", "TriggerRate", "EventRate", "CentroidRate"):
            snap[name] = 0.0
        snap["RecordingFile"] = ""
        snap["TrainId"] = -1
        size = 516 if getattr(self, "_layout", "single") == "quad" else 256
        snap["Preview"] = np.zeros((size, size), np.int32)
        snap["TofHistogram"] = np.zeros(0, np.float64)
        snap["TofAxis"] = np.zeros(0, np.float64)
        return snap

    def _train_status_line(self) -> str:
        """'' without TrainIdSource, else a line on the train-ID receiver, e.g.
        'train-ID receiver disconnected: serial /dev/ttyUSB0: [Errno 5] ...'. An unplugged
        receiver never changes the State: the acquisition goes on and the receiver is
        reopened when it is back."""
        ctrl = self._controller
        status = str(getattr(ctrl, "train_status", "") or "") if ctrl is not None else ""
        if not status:
            return ""
        line = f"train-ID receiver {status}"
        if status.startswith("connected"):
            train = self._snapshot.get("TrainId", -1)
            line += f"; last train ID {train}" if train >= 0 else "; no train ID yet"
        return "\n" + line

    def _idle_status(self) -> str:
        return (f"ON: ready to Start (UDP {self.UdpHost}:{self.UdpPort}, layout {self._layout}, "
                f"summary period {self._period:g} s)" + self._train_status_line())

    def _running_status(self) -> str:
        rec = self._snapshot.get("RecordingFile") or ""
        what = f"recording to {rec}" if rec else "not recording"
        return f"RUNNING: acquiring from UDP {self.UdpHost}:{self.UdpPort}; {what}" + self._train_status_line()

    def _enter_fault(self, message: str) -> None:
        """Go to FAULT with ``message`` as Status (kept until Init)."""
        self._fault_message = message
        self.set_state(DevState.FAULT)
        self.set_status(f"FAULT: {message}\nRun Init to recover.")
        self.error_stream(message)
        self._wake.set()

    def _apply_settings(self) -> None:
        """Copy the attribute settings onto the controller (read by it at the next start())."""
        ctrl = self._controller
        s = self._settings
        ctrl.centroid_processes = int(s["CentroidProcesses"])
        ctrl.event_window = (float(s["EventWindowStart"]) * 1e-6, float(s["EventWindowEnd"]) * 1e-6)
        ctrl.centroiding = bool(s["Centroiding"])
        ctrl.clustering_algorithm = ClusteringAlgorithm(int(s["ClusteringAlgorithm"])).name
        ctrl.tot_threshold = int(s["TotThreshold"])

    def _apply_train_id_source(self) -> None:
        source = str(self.TrainIdSource).strip()
        if not source:
            return
        setter = getattr(self._controller, "set_train_id_source", None)
        try:
            if setter is None:
                raise NotImplementedError("this controller cannot read train IDs")
            setter(source)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(f"TrainIdSource property {source!r} cannot be used ({exc}); set it to '' "
                               "for no train IDs") from exc

    def _check_state(self, command_name: str, allowed: tuple[DevState, ...]) -> bool:
        """is_*_allowed helper: refuse with a message naming the current state."""
        state = self.get_state()
        if state in allowed:
            return True
        names = ", ".join(str(s) for s in allowed)
        hint = " Run Init to recover." if state == DevState.FAULT else ""
        _fail("API_CommandNotAllowed",
              f"{command_name} is not allowed in state {state} (allowed in: {names}).{hint}",
              f"Timepix3.{command_name}")
        return False

    def _refresh(self, period_end: bool = True) -> None:
        """Read controller counters into the snapshot; rates from deltas since the last call."""
        ctrl = self._controller
        if ctrl is None:
            return
        counts = dict(ctrl.counters())
        counts.setdefault("trigger_events", counts.get("triggers", 0))
        now = float(counts.get("time", time.monotonic()))
        with self._lock:
            snap = dict(self._snapshot)
            prev = self._prev_counts
            for key, (total_name, rate_name) in _COUNTER_KEYS.items():
                value = int(counts.get(key, 0))
                snap[total_name] = value
                if rate_name is not None and period_end:
                    if prev is not None and now > prev["time"] and value >= prev.get(key, 0):
                        snap[rate_name] = (value - prev.get(key, 0)) / (now - prev["time"])
                    else:
                        snap[rate_name] = 0.0
            snap["RecordingFile"] = str(getattr(ctrl, "recording_file", "") or "")
            train = counts.get("train_id", getattr(ctrl, "train_id", None))
            snap["TrainId"] = -1 if train is None else int(train)
            if period_end or prev is None:
                self._prev_counts = {**{k: int(counts.get(k, 0)) for k in _COUNTER_KEYS}, "time": now}
            self._snapshot = snap

    def _refresh_preview(self) -> None:
        ctrl = self._controller
        if ctrl is None:
            return
        hitmap, hist, axis = ctrl.preview()
        with self._lock:
            snap = dict(self._snapshot)
            snap["Preview"] = np.ascontiguousarray(hitmap, dtype=np.int32)
            snap["TofHistogram"] = np.ascontiguousarray(hist, dtype=np.float64)[:TOF_MAX_BINS]
            snap["TofAxis"] = np.ascontiguousarray(axis, dtype=np.float64)[:TOF_MAX_BINS]
            self._snapshot = snap

    def _check_fault(self) -> None:
        ctrl = self._controller
        if ctrl is None or self.get_state() == DevState.FAULT:
            return
        why = ctrl.fault()
        if why:
            self._enter_fault(str(why))

    def _push_all(self, arrays: bool, stop: threading.Event) -> None:
        def push(name: str, value, archive: bool = True) -> None:
            if stop.is_set():
                raise _Stopped
            self.push_change_event(name, value)
            if archive:
                self.push_archive_event(name, value)

        state = self.get_state()
        push("State", state)
        status = self.get_status()
        push("Status", status)
        with self._lock:
            snap = dict(self._snapshot)
        for name in SUMMARY_ATTRIBUTES:
            push(name, snap[name])
        self._last_pushed = {"Status": status, "TrainId": snap["TrainId"]}
        if arrays:
            self._data_ready_counter += 1
            for name in ARRAY_ATTRIBUTES:  # images/spectra: change + data-ready (no archive copies)
                push(name, snap[name], archive=False)
                if stop.is_set():
                    raise _Stopped
                self.push_data_ready_event(name, self._data_ready_counter)

    def _push_if_changed(self, stop: threading.Event) -> None:
        """Outside RUNNING: push TrainId and Status when they changed (train IDs keep
        coming while ON; a receiver unplugged while ON shows in Status)."""
        with self._lock:
            train = self._snapshot["TrainId"]
        status = self.get_status()
        last = getattr(self, "_last_pushed", {})
        for name, value in (("TrainId", train), ("Status", status)):
            if last.get(name) != value:
                if stop.is_set():
                    raise _Stopped
                self.push_change_event(name, value)
                self.push_archive_event(name, value)
        self._last_pushed = {"Status": status, "TrainId": train}

    def _monitor_loop(self, stop: threading.Event, previous: threading.Thread | None) -> None:
        """The one pushing thread: refresh counters each period, push while RUNNING and on state changes."""
        if previous is not None:
            previous.join(30.0)
        wake = self._wake  # this device generation's event (Init makes a new one)
        last_state = None
        next_t = time.monotonic() + self._period
        while not stop.is_set():
            woken = wake.wait(max(0.0, next_t - time.monotonic()))
            if stop.is_set():
                break
            wake.clear()
            period_end = time.monotonic() >= next_t
            if period_end:
                next_t += self._period
                if next_t < time.monotonic():  # fell behind (slow machine): skip, don't burst
                    next_t = time.monotonic() + self._period
            try:
                self._check_fault()
                state = self.get_state()
                running = state == DevState.RUNNING
                if period_end or woken:
                    self._refresh(period_end=period_end)
                    if period_end and running:
                        self._refresh_preview()
                if running:
                    self.set_status(self._running_status())
                elif state == DevState.ON and (period_end or woken):
                    self.set_status(self._idle_status())
                if state != last_state or (period_end and running):
                    self._push_all(arrays=running and period_end or state != last_state, stop=stop)
                    last_state = state
                elif period_end:
                    self._push_if_changed(stop)
            except _Stopped:
                break
            except Exception:  # noqa: BLE001 - the monitor must survive; report and go on
                self.error_stream(f"monitor thread: {traceback.format_exc()}")

    # ------------------------------------------------------------------ R/W attributes
    @attribute(dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
               label="Centroid processes", unit="", format="%d",
               doc=f"Number of centroiding processes, 1..{CENTROID_PROCESSES_MAX} (CPUs available "
                   "to this server). Takes effect at the next Start.")
    def CentroidProcesses(self) -> int:
        return int(self._settings["CentroidProcesses"])

    @CentroidProcesses.write
    def CentroidProcesses(self, value: int) -> None:
        if not 1 <= int(value) <= CENTROID_PROCESSES_MAX:
            _fail("Timepix3_BadValue",
                  f"CentroidProcesses must be 1..{CENTROID_PROCESSES_MAX}, got {value}",
                  "Timepix3.CentroidProcesses")
        self._settings["CentroidProcesses"] = int(value)

    # End is declared before Start so that restoring memorized values (in declaration
    # order) never sees a start beyond the default end.
    @attribute(dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
               label="Event window end", unit="us", standard_unit="1e-6", display_unit="1e-6",
               format="%.3f",
               doc=f"End of the time-of-flight window after each trigger, us: EventWindowStart.."
                   f"{EVENT_WINDOW_MAX_US:g}. "
                   "Takes effect at the next Start.")
    def EventWindowEnd(self) -> float:
        return float(self._settings["EventWindowEnd"])

    @EventWindowEnd.write
    def EventWindowEnd(self, value: float) -> None:
        value = float(value)
        start = float(self._settings["EventWindowStart"])
        if not np.isfinite(value) or value < 0 or value > EVENT_WINDOW_MAX_US:
            _fail("Timepix3_BadValue", f"EventWindowEnd must be EventWindowStart..{EVENT_WINDOW_MAX_US:g} us "
                  f"(a negative window is not allowed), got {value}",
                  "Timepix3.EventWindowEnd")
        if value < start:
            _fail("Timepix3_BadValue",
                  f"EventWindowEnd ({value} us) must not be before EventWindowStart ({start} us); "
                  "lower EventWindowStart first", "Timepix3.EventWindowEnd")
        self._settings["EventWindowEnd"] = value

    @attribute(dtype=float, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
               label="Event window start", unit="us", standard_unit="1e-6", display_unit="1e-6",
               format="%.3f",
               doc="Start of the time-of-flight window after each trigger, us (0 <= start <= end). "
                   "Takes effect at the next Start.")
    def EventWindowStart(self) -> float:
        return float(self._settings["EventWindowStart"])

    @EventWindowStart.write
    def EventWindowStart(self, value: float) -> None:
        value = float(value)
        end = float(self._settings["EventWindowEnd"])
        if not np.isfinite(value) or value < 0:
            _fail("Timepix3_BadValue", f"EventWindowStart must be 0..EventWindowEnd ({end} us); a negative "
                  f"window is not allowed, got {value}", "Timepix3.EventWindowStart")
        if value > end:
            _fail("Timepix3_BadValue",
                  f"EventWindowStart ({value} us) must not be after EventWindowEnd ({end} us); "
                  "raise EventWindowEnd first", "Timepix3.EventWindowStart")
        self._settings["EventWindowStart"] = value

    @attribute(dtype=str, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
               label="Recording directory",
               doc="Existing writable directory (absolute path) where OpenFile puts relative names; "
                   "'' = none (OpenFile then needs an absolute path). When set, files outside it are "
                   "refused.")
    def RecordingPath(self) -> str:
        return str(self._settings["RecordingPath"])

    @RecordingPath.write
    def RecordingPath(self, value: str) -> None:
        value = str(value).strip()
        if value:
            value = os.path.expanduser(value)
            origin = "Timepix3.RecordingPath"
            if not os.path.isabs(value):
                _fail("Timepix3_BadPath", f"RecordingPath must be an absolute directory path, got {value!r}",
                      origin)
            if not os.path.isdir(value):
                _fail("Timepix3_BadPath", f"RecordingPath {value} does not exist or is not a directory",
                      origin)
            try:  # the real test (os.access says yes to root on read-only file systems)
                with tempfile.TemporaryFile(dir=value):
                    pass
            except OSError as exc:
                _fail("Timepix3_BadPath", f"RecordingPath {value} is not writable: {exc.strerror or exc}",
                      origin)
            value = os.path.realpath(value)
        self._settings["RecordingPath"] = value

    @attribute(dtype=bool, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
               label="Centroiding", doc="Compute centroids of clusters (True) or only events (False). "
                                        "Takes effect at the next Start.")
    def Centroiding(self) -> bool:
        return bool(self._settings["Centroiding"])

    @Centroiding.write
    def Centroiding(self, value: bool) -> None:
        self._settings["Centroiding"] = bool(value)

    @attribute(dtype=ClusteringAlgorithm, access=AttrWriteType.READ_WRITE, memorized=True,
               hw_memorized=True, label="Clustering algorithm",
               doc="Clustering used for centroids: fast (connected pixels in space and time) or dbscan "
                   "(scikit-learn). Takes effect at the next Start.")
    def ClusteringAlgorithm(self) -> ClusteringAlgorithm:
        return ClusteringAlgorithm(int(self._settings["ClusteringAlgorithm"]))

    @ClusteringAlgorithm.write
    def ClusteringAlgorithm(self, value: int) -> None:
        try:
            algo = ClusteringAlgorithm(int(value))
        except (ValueError, TypeError):
            _fail("Timepix3_BadValue", f"ClusteringAlgorithm must be one of "
                  f"{', '.join(f'{a.value}={a.name}' for a in ClusteringAlgorithm)}, got {value!r}",
                  "Timepix3.ClusteringAlgorithm")
        self._settings["ClusteringAlgorithm"] = algo

    @attribute(dtype=int, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True,
               label="ToT threshold [25 ns]", unit="", format="%d",
               doc=f"Hits with ToT below this many counts of 25 ns are ignored by centroiding, "
                   f"0..{TOT_MAX}. Takes effect at the next Start.")
    def TotThreshold(self) -> int:
        return int(self._settings["TotThreshold"])

    @TotThreshold.write
    def TotThreshold(self, value: int) -> None:
        if not 0 <= int(value) <= TOT_MAX:
            _fail("Timepix3_BadValue", f"TotThreshold must be 0..{TOT_MAX} ToT counts (25 ns), got {value}",
                  "Timepix3.TotThreshold")
        self._settings["TotThreshold"] = int(value)

    # ------------------------------------------------------------------ read-only attributes
    def _snap(self, name: str):
        with self._lock:
            return self._snapshot[name]

    @attribute(dtype=float, unit="Hz", format="%.1f", label="Hit rate",
               doc="Pixel hits per second over the last summary period.")
    def HitRate(self) -> float:
        return self._snap("HitRate")

    @attribute(dtype=float, unit="Hz", format="%.1f", label="Trigger rate",
               doc="Triggers (TDC1 rising edges) per second over the last summary period.")
    def TriggerRate(self) -> float:
        return self._snap("TriggerRate")

    @attribute(dtype=float, unit="Hz", format="%.1f", label="Event rate",
               doc="Hits assigned to a trigger (events) per second over the last summary period.")
    def EventRate(self) -> float:
        return self._snap("EventRate")

    @attribute(dtype=float, unit="Hz", format="%.1f", label="Centroid rate",
               doc="Centroids per second over the last summary period.")
    def CentroidRate(self) -> float:
        return self._snap("CentroidRate")

    @attribute(dtype=tango.DevLong64, label="Total hits", format="%d",
               doc="Pixel hits decoded since the last ResetCounters.")
    def TotalHits(self) -> int:
        return self._snap("TotalHits")

    @attribute(dtype=tango.DevLong64, label="Total triggers", format="%d",
               doc="Triggers (TDC1 rising edges) decoded since the last ResetCounters.")
    def TotalTriggers(self) -> int:
        return self._snap("TotalTriggers")

    @attribute(dtype=tango.DevLong64, label="Total events", format="%d",
               doc="Hits assigned to a trigger since the last ResetCounters.")
    def TotalEvents(self) -> int:
        return self._snap("TotalEvents")

    @attribute(dtype=tango.DevLong64, label="Total centroids", format="%d",
               doc="Centroids computed since the last ResetCounters.")
    def TotalCentroids(self) -> int:
        return self._snap("TotalCentroids")

    @attribute(dtype=tango.DevLong64, label="Bytes received", unit="B", format="%d",
               doc="UDP payload bytes received since the last ResetCounters.")
    def BytesReceived(self) -> int:
        return self._snap("BytesReceived")

    @attribute(dtype=tango.DevLong64, label="Kernel drops", format="%d",
               doc="Datagrams the kernel dropped because the socket buffer was full.")
    def KernelDrops(self) -> int:
        return self._snap("KernelDrops")

    @attribute(dtype=tango.DevLong64, label="Lost triggers", format="%d",
               doc="Triggers missing from the TDC counter sequence.")
    def LostTriggers(self) -> int:
        return self._snap("LostTriggers")

    @attribute(dtype=tango.DevLong64, label="Malformed words", format="%d",
               doc="64-bit words that could not be decoded (counted and skipped).")
    def MalformedWords(self) -> int:
        return self._snap("MalformedWords")

    @attribute(dtype=str, label="Recording file",
               doc="Absolute path of the raw file being written; '' when not recording.")
    def RecordingFile(self) -> str:
        return self._snap("RecordingFile")

    @attribute(dtype=tango.DevLong64, label="Train ID", format="%d",
               doc="Latest European XFEL train ID from TrainIdSource (change events at each summary "
                   "period while it changes); -1 when there is none.")
    def TrainId(self) -> int:
        return self._snap("TrainId")

    @attribute(dtype=((np.int32,),), max_dim_x=PREVIEW_MAX_DIM, max_dim_y=PREVIEW_MAX_DIM,
               label="Hit map", unit="", display_level=DispLevel.OPERATOR,
               doc="Hits per pixel over the last summary period (y rows, x columns).")
    def Preview(self) -> np.ndarray:
        return self._snap("Preview")

    @attribute(dtype=(np.float64,), max_dim_x=TOF_MAX_BINS, label="ToF histogram", unit="",
               doc="Time-of-flight histogram of events over the last summary period (bins of TofAxis).")
    def TofHistogram(self) -> np.ndarray:
        return self._snap("TofHistogram")

    @attribute(dtype=(np.float64,), max_dim_x=TOF_MAX_BINS, label="ToF axis", unit="ns",
               standard_unit="1e-9", display_unit="1e-9",
               doc="Time of flight of each TofHistogram bin, ns.")
    def TofAxis(self) -> np.ndarray:
        return self._snap("TofAxis")

    # ------------------------------------------------------------------ commands
    def is_Start_allowed(self) -> bool:
        return self._check_state("Start", (DevState.ON,))

    @command(doc_in="Start the acquisition with the current settings (ON -> RUNNING).")
    def Start(self) -> None:
        ctrl = self._controller
        try:
            self._apply_settings()
            ctrl.start()
        except OSError as exc:
            where = f"{self.UdpHost}:{self.UdpPort}"
            msg = f"Start failed: {exc}"
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and where not in str(exc):
                msg = f"Start failed: cannot receive on UDP {where}: {exc}"
            self._enter_fault(msg)
            _fail("Timepix3_StartFailed", msg, "Timepix3.Start")
        except Exception as exc:  # noqa: BLE001
            msg = f"Start failed: {type(exc).__name__}: {exc}"
            self._enter_fault(msg)
            _fail("Timepix3_StartFailed", msg, "Timepix3.Start")
        with self._lock:
            self._prev_counts = None
        self.set_state(DevState.RUNNING)
        self._refresh(period_end=False)
        self.set_status(self._running_status())
        self._wake.set()

    def is_Stop_allowed(self) -> bool:
        return self._check_state("Stop", (DevState.RUNNING, DevState.FAULT))

    @command(doc_in="Stop the acquisition (RUNNING -> ON). In FAULT it stops what is left.")
    def Stop(self) -> None:
        ctrl = self._controller
        was_fault = self.get_state() == DevState.FAULT
        try:
            if ctrl is not None:
                ctrl.stop()
        except Exception as exc:  # noqa: BLE001
            self._enter_fault(f"Stop failed: {type(exc).__name__}: {exc}")
            _fail("Timepix3_StopFailed", f"Stop failed: {exc}", "Timepix3.Stop")
        self._refresh(period_end=False)
        why = ctrl.fault() if ctrl is not None and not was_fault else None
        if why:  # a stage died before or while stopping
            self._enter_fault(str(why))
        elif not was_fault:
            self.set_state(DevState.ON)
            self.set_status(self._idle_status())
        self._wake.set()

    def _resolve_recording_path(self, name: str) -> str:
        name = str(name).strip()
        origin = "Timepix3.OpenFile"
        if not name:
            _fail("Timepix3_BadPath", "OpenFile needs a file name (relative to RecordingPath) or an "
                  "absolute path", origin)
        base = str(self._settings["RecordingPath"])
        name = os.path.expanduser(name)
        if os.path.isabs(name):
            path = os.path.realpath(name)
        elif base:
            path = os.path.realpath(os.path.join(base, name))
        else:
            _fail("Timepix3_BadPath", f"OpenFile({name!r}): a relative name needs RecordingPath; set "
                  "RecordingPath or give an absolute path", origin)
        if base and os.path.commonpath([path, base]) != base:
            _fail("Timepix3_BadPath", f"OpenFile({name!r}): {path} is outside RecordingPath {base}; "
                  "only files inside RecordingPath are allowed", origin)
        if os.path.exists(path):
            _fail("Timepix3_FileExists", f"OpenFile({name!r}): {path} already exists; choose a new name "
                  "(existing files are never overwritten)", origin)
        if not os.path.isdir(os.path.dirname(path)):
            _fail("Timepix3_BadPath", f"OpenFile({name!r}): directory {os.path.dirname(path)} does not "
                  "exist", origin)
        return path

    def is_OpenFile_allowed(self) -> bool:
        return self._check_state("OpenFile", (DevState.RUNNING,))

    @command(dtype_in=str, dtype_out=str,
             doc_in="File name relative to RecordingPath, or an absolute path (inside RecordingPath "
                    "when that is set). The file must not exist. Allowed while RUNNING; Stop closes it.",
             doc_out="Absolute path of the raw file now being written.")
    def OpenFile(self, name: str) -> str:
        ctrl = self._controller
        current = str(getattr(ctrl, "recording_file", "") or "")
        if current:
            _fail("Timepix3_AlreadyRecording", f"already recording to {current}; CloseFile first",
                  "Timepix3.OpenFile")
        path = self._resolve_recording_path(name)
        try:
            full = ctrl.open_file(path)
        except FileExistsError as exc:
            _fail("Timepix3_FileExists", f"OpenFile({name!r}): {exc.filename or path} already exists; "
                  "choose a new name", "Timepix3.OpenFile")
        except (OSError, RuntimeError) as exc:
            _fail("Timepix3_OpenFailed", f"OpenFile({name!r}) failed: {exc}", "Timepix3.OpenFile")
        self._refresh(period_end=False)
        if self.get_state() == DevState.RUNNING:
            self.set_status(self._running_status())
        self._wake.set()
        return str(full)

    def is_CloseFile_allowed(self) -> bool:
        return self._check_state("CloseFile", (DevState.ON, DevState.RUNNING, DevState.FAULT))

    @command(doc_in="Finish and close the raw file being written (no-op when not recording).")
    def CloseFile(self) -> None:
        if self._controller is None:
            return
        try:
            self._controller.close_file()
        except (OSError, RuntimeError) as exc:
            _fail("Timepix3_CloseFailed", f"CloseFile failed: {exc}", "Timepix3.CloseFile")
        self._refresh(period_end=False)
        if self.get_state() == DevState.RUNNING:
            self.set_status(self._running_status())
        self._wake.set()

    def is_ResetCounters_allowed(self) -> bool:
        return self._check_state("ResetCounters", (DevState.ON, DevState.RUNNING))

    @command(doc_in="Set all totals to zero (rates restart from the next summary period).")
    def ResetCounters(self) -> None:
        self._controller.reset_counters()
        with self._lock:
            self._prev_counts = None
        self._refresh(period_end=False)
        self._wake.set()
