"""Tango device class ``Timepix3``: a thin Tango face of the acquisition pipeline.

The device holds no processing logic. It keeps an armed
:class:`tango_tpx.pipeline.controller.AcquisitionController` (processes started, socket
bound) and translates attributes and commands to it; one monitor thread publishes the
counters and results as Tango events.

State machine::

    Init --(arming, MOVING)--> ON --Start--> RUNNING --Stop / time or triggers reached--> MOVING --> ON
                               ^  \\ (re-arm on a pipeline setting, MOVING)     (draining, closing file)
                               |   `-- FAULT <-- (stage died, disk full, UDP port busy ...)
                               `------- Init

Units: event window in microseconds (us), rates in Hz, ToT in counts of 25 ns, time of
flight axes in ns, acquisition time in s, hit maps in hits per pixel.

The attributes are declared in :mod:`.settings` (read/write) and :mod:`.results`
(read-only), the commands in :mod:`.commands`, the event thread in :mod:`.monitor`.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import traceback
from typing import Any, Callable

from tango import DevState
from tango.server import Device, device_property

from ..pipeline.series import BackgroundConverter, hdf5_path_for
from ..processing.settings import ClusteringConfig, DetectorLayout, EventWindow
from .commands import Commands
from .monitor import Monitor
from .results import ARRAY_ATTRIBUTES, SUMMARY_ATTRIBUTES, ResultAttributes, empty_snapshot
from .settings import (  # noqa: F401 - re-exported names
    CENTROID_PROCESSES_MAX,
    DEFAULT_SETTINGS,
    EVENT_WINDOW_MAX_US,
    REARM_SETTINGS,
    TOT_MAX,
    ClusteringAlgorithm,
    SettingsAttributes,
)

#: Background threads log here, never through the device's Tango log streams: a thread may
#: still run while the server deletes the device, and the device's C++ side is gone then.
_log = logging.getLogger("tango_tpx.device")

#: Shortest summary period accepted from the SummaryPeriod property, s.
MIN_SUMMARY_PERIOD_S: float = 0.05
#: live setting attribute -> how it is applied (see :meth:`Timepix3._live_values`)
LIVE_SETTINGS = ("EventWindowStart", "EventWindowEnd", "TotThreshold", "ClusterRadius", "ClusterTimeWindow",
                 "MinClusterSize", "Roi")


class Timepix3(SettingsAttributes, ResultAttributes, Commands, Monitor, Device):
    """Timepix3 detector read out by a SPIDR board over UDP.

    Start/Stop acquisitions (bounded by AcquisitionTime or AcquisitionTriggers, or until
    Stop), record them as a file series or with OpenFile/CloseFile, convert them to HDF5,
    and watch live rates, totals, previews and per-acquisition results.
    """

    # ------------------------------------------------------------------ properties
    UdpHost = device_property(dtype=str, default_value="127.0.0.1",
                              doc="Address the SPIDR UDP stream is received on.")
    UdpPort = device_property(dtype=int, default_value=8192, doc="UDP port the SPIDR stream is received on.")
    ChipLayout = device_property(dtype=str, default_value="single",
                                 doc="'single' (one chip, 256x256) or 'quad' (2x2 chips, 516x516).")
    DataStreamAddress = device_property(dtype=str, default_value="tcp://127.0.0.1:5560",
                                        doc="ZMQ PUB address for processed data; 'off' (or '') = no stream.")
    SummaryPeriod = device_property(dtype=float, default_value=1.0,
                                    doc="Period of summary events and of the preview, s.")
    TrainIdSource = device_property(dtype=str, default_value="",
                                    doc="European XFEL train-ID receiver: '' = none, a tty/pty path "
                                        "(e.g. /dev/serial/by-id/...; it may be plugged in later), 'usb' "
                                        "or 'usb:VID:PID'. Read from Init on, also while ON.")

    # ------------------------------------------------------------------ lifecycle
    def init_device(self) -> None:
        """Read properties, build the controller, arm it in the background, start the monitor."""
        super().init_device()
        self._gone = False   # set by delete_device: background threads stop touching the device
        self.set_state(DevState.INIT)
        self.set_status("Initialising")
        if not hasattr(self, "_settings"):
            # Survives Init: values written by clients (and restored memorized values).
            self._settings: dict[str, Any] = dict(DEFAULT_SETTINGS)
            self._converter = BackgroundConverter()
            self._last_file = ""
            self._restore_roi()
        self._lock = threading.RLock()
        retiring = getattr(self, "_retiring", None)   # the previous controller closing (Init)
        self._controller = None
        self._fault_message: str | None = None
        self._period = max(MIN_SUMMARY_PERIOD_S, float(self.SummaryPeriod))
        self._layout = str(self.ChipLayout).strip().lower()
        self._snapshot: dict[str, Any] = empty_snapshot(516 if self._layout == "quad" else 256)
        self._prev_counts: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._stop_monitor = threading.Event()
        # A monitor thread left by Init (delete_device cannot join it: the thread may be
        # waiting for the Tango monitor that Init holds); the new thread joins it first.
        previous = getattr(self, "_monitor", None)
        self._monitor: threading.Thread | None = None
        self._data_ready_counter = 0
        self._last_pushed: dict[str, Any] = {}
        self._pending_file = ""
        self._acq_series = False
        self._acq_recording = ""
        self._transition_busy = False
        self._rearm_pending = False
        self._transition_lock = threading.Lock()
        self._acq_lock = threading.Lock()     # Stop against an acquisition ending by itself

        for name in ("State", "Status", *SUMMARY_ATTRIBUTES):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        for name in ARRAY_ATTRIBUTES:
            self.set_change_event(name, True, False)
            self.set_data_ready_event(name, True)
        for name in DEFAULT_SETTINGS:
            self.set_change_event(name, True, False)
        self._pushed_settings: dict[str, Any] = {}

        try:
            try:
                DetectorLayout(self._layout)
            except ValueError as exc:
                raise ValueError(f"ChipLayout property {str(exc).removeprefix('layout ')}") from None
            if not 0 < int(self.UdpPort) < 65536:
                raise ValueError(f"UdpPort property must be 1..65535, not {self.UdpPort}")
            self._controller = self._new_controller()
            self._controller.session.on_done = self._acquisition_done
            self._controller.session.on_phase = self._acquisition_phase
            self._apply_train_id_source()
        except Exception as exc:  # noqa: BLE001 - any failure is reported as FAULT
            self._enter_fault(f"Initialisation failed: {exc}")
        else:
            self._rearm(retiring, "arming: starting and warming the pipeline processes, binding "
                        f"UDP {self.UdpHost}:{self.UdpPort}")
        self._monitor = threading.Thread(target=self._monitor_loop, args=(self._stop_monitor, previous),
                                         name="Timepix3-monitor", daemon=True)
        self._monitor.start()

    def _new_controller(self):
        """The acquisition controller for the device properties."""
        from tango_tpx.pipeline.controller import AcquisitionController

        stream = str(self.DataStreamAddress).strip()
        stream = None if stream.lower() in ("", "off", "none") else stream
        return AcquisitionController(udp_host=str(self.UdpHost), udp_port=int(self.UdpPort),
                                     layout=self._layout, stream_address=stream, preview_period_s=self._period)

    def delete_device(self) -> None:
        """Stop the monitor thread; the controller is closed by the next arming (Init) or now."""
        self._gone = True
        self._stop_monitor.set()
        self._wake.set()
        ctrl, self._controller = self._controller, None
        self._retiring = None
        if ctrl is not None:
            ctrl.session.on_done = None
            ctrl.session.on_phase = None
            # closed in the background (Init must answer at once); the next arming waits for it
            self._retiring = threading.Thread(target=self._close_quietly, args=(ctrl,), daemon=True)
            self._retiring.start()
        super().delete_device()

    def _close_quietly(self, ctrl) -> None:
        try:
            ctrl.close()
        except Exception:  # noqa: BLE001 - shutting down anyway
            _log.error("controller.close() failed: %s", traceback.format_exc())

    # ------------------------------------------------------------------ transitions
    def _run_transition(self, label: str, work: Callable[[], None]) -> None:
        """MOVING with ``label`` as Status while ``work`` runs in a thread; then ON (or FAULT)."""
        self._transition_busy = True
        self.set_state(DevState.MOVING)
        self.set_status(f"MOVING: {label}")
        self._wake.set()

        def run() -> None:
            with self._transition_lock:
                try:
                    work()
                except OSError as exc:
                    where = f"{self.UdpHost}:{self.UdpPort}"
                    msg = f"{label.split(':')[0]} failed: {exc}"
                    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and where not in msg:
                        msg += f" (cannot receive on UDP {where})"
                    if not self._gone:
                        self._enter_fault(msg)
                except Exception as exc:  # noqa: BLE001
                    _log.error("%s: %s", label, traceback.format_exc())
                    if not self._gone:
                        self._enter_fault(f"{label.split(':')[0]} failed: {type(exc).__name__}: {exc}")
                else:
                    if not self._gone and self.get_state() == DevState.MOVING:
                        self.set_state(DevState.ON)
                        self.set_status(self._idle_status())
                finally:
                    self._transition_busy = False
                    self._wake.set()

        threading.Thread(target=run, name="Timepix3-transition", daemon=True).start()

    def _rearm(self, retiring: threading.Thread | None = None, label: str = "re-arming: restarting the pipeline with the new settings") -> None:
        ctrl = self._controller

        def work() -> None:
            if retiring is not None:
                retiring.join(30.0)
            self._rearm_pending = True
            while self._rearm_pending:      # a pipeline setting written meanwhile: once more
                self._rearm_pending = False
                ctrl.disarm()
                self._apply_settings()
                ctrl.arm()

        self._run_transition(label, work)

    def _setting_changed(self, name: str) -> None:
        """A written setting: live ones go to the pipeline now, pipeline-shape ones re-arm (ON)."""
        ctrl = self._controller
        if ctrl is None:
            return
        if name in LIVE_SETTINGS:
            ctrl.set_live(**self._live_values())
        elif name in REARM_SETTINGS:
            if self.get_state() == DevState.ON:
                self._rearm()
            elif self._transition_busy:
                self._rearm_pending = True

    def _window(self) -> EventWindow:
        s = self._settings
        return EventWindow(float(s["EventWindowStart"]) * 1e-6, float(s["EventWindowEnd"]) * 1e-6)   # us -> s

    def _clustering(self) -> ClusteringConfig:
        s = self._settings
        return ClusteringConfig(algorithm=ClusteringAlgorithm(int(s["ClusteringAlgorithm"])).key,
                                radius=int(s["ClusterRadius"]), time_window_ns=float(s["ClusterTimeWindow"]),
                                min_cluster_size=int(s["MinClusterSize"]), tot_threshold=int(s["TotThreshold"]))

    def _live_values(self) -> dict[str, Any]:
        return dict(window=self._window(), clustering=self._clustering(),
                    roi=tuple(float(v) for v in self._settings["Roi"]))

    def _apply_settings(self) -> None:
        """Copy the settings onto the controller (read when it arms)."""
        ctrl = self._controller
        s = self._settings
        ctrl.centroid_processes = int(s["CentroidProcesses"])
        ctrl.window = self._window()
        ctrl.centroiding = bool(s["Centroiding"])
        ctrl.clustering = self._clustering()
        ctrl.set_live(**self._live_values())

    # ------------------------------------------------------------------ acquisition callbacks
    def _acquisition_phase(self, text: str) -> None:
        """Watcher thread: an acquisition began to stop (Stop, or its time/trigger count reached)."""
        if self._gone:
            return
        with self._acq_lock:
            if self.get_state() in (DevState.RUNNING, DevState.MOVING):
                self.set_state(DevState.MOVING)
                self.set_status(f"MOVING: {text}")
        self._wake.set()

    def _acquisition_done(self, result) -> None:
        """Watcher thread: the acquisition ended, its file is closed (or it failed)."""
        if self._gone:
            return
        path = result.file or self._acq_recording
        path = path if path and os.path.exists(path) else ""
        if path:
            self._last_file = path
        if path and self._acq_series:
            self._settings["FileIndex"] = int(self._settings["FileIndex"]) + 1
        self._acq_series = False
        self._acq_recording = ""
        if result.error:
            self._enter_fault(f"acquisition {result.id}: {result.error}" + (f" (file {path})" if path else ""))
            return
        if path and self._settings["AutoConvert"]:
            self._submit_conversion(path)
        # the final counts and images before ON: a client (a Sardana channel) reads them as
        # soon as it sees ON, before the monitor thread's next refresh
        self._refresh(period_end=False)
        self._refresh_preview()
        with self._acq_lock:
            if self.get_state() in (DevState.RUNNING, DevState.MOVING):
                self.set_state(DevState.ON)
                self.set_status(self._idle_status())
        self._wake.set()

    def _submit_conversion(self, raw: str) -> None:
        self._converter.submit(raw, hdf5_path_for(raw), centroiding=bool(self._settings["Centroiding"]),
                               event_window=self._window(), clustering=self._clustering(), layout=self._layout)

    # ------------------------------------------------------------------ status and faults
    def _train_status_line(self) -> str:
        """'' without TrainIdSource, else a line on the train-ID receiver. An unplugged
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
        pending = f"; next Start records to {self._pending_file}" if self._pending_file else ""
        return (f"ON: armed, ready to Start (UDP {self.UdpHost}:{self.UdpPort}, layout {self._layout}, "
                f"summary period {self._period:g} s){pending}" + self._train_status_line())

    def _running_status(self) -> str:
        rec = self._snapshot.get("RecordingFile") or ""
        what = f"recording to {rec}" if rec else "not recording"
        s = self._settings
        bounds = []
        if s["AcquisitionTime"] > 0:
            bounds.append(f"{s['AcquisitionTime']:g} s")
        if s["AcquisitionTriggers"] > 0:
            bounds.append(f"{s['AcquisitionTriggers']} triggers")
        until = " or ".join(bounds) if bounds else "Stop"
        return (f"RUNNING: acquiring from UDP {self.UdpHost}:{self.UdpPort} until {until}; {what}"
                + self._train_status_line())

    def _enter_fault(self, message: str) -> None:
        """Go to FAULT with ``message`` as Status (kept until Init)."""
        self._fault_message = message
        self.set_state(DevState.FAULT)
        self.set_status(f"FAULT: {message}\nRun Init to recover.")
        self.error_stream(message)
        self._wake.set()

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
