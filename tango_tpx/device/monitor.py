"""The ``Timepix3`` device's one pushing thread: snapshot refresh and Tango events.

Every summary period it reads the controller's counters into a snapshot (rates from the
deltas), the previews while RUNNING, and pushes change/archive events of the scalars and
change/data-ready events of the arrays; on every state change (and when a command wakes
it) it refreshes and pushes at once. It never blocks acquisition, and a failure inside it
is logged, not fatal.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

import numpy as np
from tango import DevState

from .results import ARRAY_ATTRIBUTES, SUMMARY_ATTRIBUTES, TOF_MAX_BINS
from .settings import DEFAULT_SETTINGS

#: the monitor thread logs here (it may outlive the device's C++ side at server exit)
_log = logging.getLogger("tango_tpx.device")

#: read/write attributes pushed as change events when their value changes (written by a
#: client, restored at start-up, or FileIndex moving on by itself)
SETTING_ATTRIBUTES: tuple[str, ...] = tuple(DEFAULT_SETTINGS)

# counters() key -> (total attribute, rate attribute or None)
COUNTER_KEYS: dict[str, tuple[str, str | None]] = {
    "hits": ("TotalHits", "HitRate"),
    "trigger_events": ("TotalTriggers", "TriggerRate"),
    "events": ("TotalEvents", "EventRate"),
    "centroids": ("TotalCentroids", "CentroidRate"),
    "bytes": ("BytesReceived", None),
    "kernel_drops": ("KernelDrops", None),
    "lost_triggers": ("LostTriggers", None),
    "malformed_words": ("MalformedWords", None),
}
# session counts key -> attribute
ACQ_ATTRIBUTES = {"hits": "AcquisitionHits", "centroids": "AcquisitionCentroids",
                  "triggers": "AcquisitionTriggersDone", "roi_hits": "RoiHits", "roi_centroids": "RoiCentroids"}


_UNSET = object()


class Stopped(Exception):
    """The monitor thread was told to stop in the middle of pushing."""


class Monitor:
    """Mixin of :class:`~tango_tpx.device.timepix3.Timepix3`: snapshot and events."""

    _controller: Any
    _snapshot: dict[str, Any]

    def _snap(self, name: str):
        with self._lock:
            return self._snapshot[name]

    def _set_snap(self, **values: Any) -> None:
        with self._lock:
            snap = dict(self._snapshot)
            snap.update(values)
            self._snapshot = snap

    def _refresh(self, period_end: bool = True) -> None:
        """Counters, per-acquisition counts and file-series values into the snapshot."""
        ctrl = self._controller
        if ctrl is None:
            return
        counts = dict(ctrl.counters())
        now = float(counts.get("time", time.monotonic()))
        session = ctrl.session
        acq = session.counts()
        conv = self._converter
        with self._lock:
            snap = dict(self._snapshot)
            prev = self._prev_counts
            for key, (total_name, rate_name) in COUNTER_KEYS.items():
                value = int(counts.get(key, 0))
                snap[total_name] = value
                if rate_name is not None and period_end:
                    if prev is not None and now > prev["time"] and value >= prev.get(key, 0):
                        snap[rate_name] = (value - prev.get(key, 0)) / (now - prev["time"])
                    else:
                        snap[rate_name] = 0.0
            for key, name in ACQ_ATTRIBUTES.items():
                snap[name] = int(acq.get(key, 0))
            snap["AcquisitionElapsed"] = float(session.elapsed_s())
            snap["RecordingFile"] = str(ctrl.recording_file or self._pending_file or "")
            train = counts.get("train_id", getattr(ctrl, "train_id", None))
            snap["TrainId"] = -1 if train is None else int(train)
            snap["ConversionProgress"] = float(conv.progress) if conv is not None else 0.0
            snap["LastHdf5File"] = conv.last_hdf5 if conv is not None else ""
            snap["LastFile"] = self._last_file
            if period_end or prev is None:
                self._prev_counts = {**{k: int(counts.get(k, 0)) for k in COUNTER_KEYS}, "time": now}
            self._snapshot = snap

    def _refresh_preview(self) -> None:
        ctrl = self._controller
        if ctrl is None:
            return
        hitmap, hist, axis = ctrl.preview()
        amap, ahist, aaxis = ctrl.acquisition_preview()
        self._set_snap(Preview=np.ascontiguousarray(hitmap, dtype=np.int32),
                       TofHistogram=np.ascontiguousarray(hist, dtype=np.float64)[:TOF_MAX_BINS],
                       TofAxis=np.ascontiguousarray(axis, dtype=np.float64)[:TOF_MAX_BINS],
                       AcquisitionImage=np.ascontiguousarray(amap, dtype=np.uint32),
                       AcquisitionTofHistogram=np.ascontiguousarray(ahist, dtype=np.float64)[:TOF_MAX_BINS],
                       AcquisitionTofAxis=np.ascontiguousarray(aaxis, dtype=np.float64)[:TOF_MAX_BINS])

    def _check_fault(self) -> None:
        ctrl = self._controller
        if ctrl is None or self.get_state() in (DevState.FAULT, DevState.MOVING) or self._transition_busy:
            return
        why = ctrl.fault()
        if why:
            self._enter_fault(str(why))

    def _push_all(self, arrays: bool, stop: threading.Event) -> None:
        def push(name: str, value, archive: bool = True) -> None:
            if stop.is_set():
                raise Stopped
            self.push_change_event(name, value)
            if archive:
                self.push_archive_event(name, value)

        push("State", self.get_state())
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
                    raise Stopped
                self.push_data_ready_event(name, self._data_ready_counter)

    def _push_settings(self, stop: threading.Event) -> None:
        """Change events of the read/write attributes whose value changed since the last push."""
        pushed = self._pushed_settings
        for name in SETTING_ATTRIBUTES:
            value = self._settings[name]
            key = tuple(value) if isinstance(value, (tuple, list)) else value
            if pushed.get(name, _UNSET) == key:
                continue
            if stop.is_set():
                raise Stopped
            if name == "Roi":
                value = np.asarray(value, np.float64)
            elif name == "ClusteringAlgorithm":
                value = int(value)
            self.push_change_event(name, value)
            pushed[name] = key

    def _push_if_changed(self, stop: threading.Event) -> None:
        """Outside RUNNING: push TrainId, Status and the conversion values when they changed."""
        with self._lock:
            snap = dict(self._snapshot)
        current = {"TrainId": snap["TrainId"], "Status": self.get_status(),
                   "ConversionProgress": snap["ConversionProgress"], "LastHdf5File": snap["LastHdf5File"]}
        last = getattr(self, "_last_pushed", {})
        for name, value in current.items():
            if last.get(name) != value:
                if stop.is_set():
                    raise Stopped
                self.push_change_event(name, value)
                self.push_archive_event(name, value)
        self._last_pushed = {**last, **current}

    def _monitor_loop(self, stop: threading.Event, previous: threading.Thread | None) -> None:
        """Refresh counters each period, push while RUNNING and on state changes."""
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
                running = state in (DevState.RUNNING, DevState.MOVING)
                changed = state != last_state
                if period_end or woken:
                    self._refresh(period_end=period_end)
                    if (period_end and running) or changed:
                        self._refresh_preview()
                if state == DevState.RUNNING:
                    self.set_status(self._running_status())
                elif state == DevState.ON and (period_end or woken):
                    self.set_status(self._idle_status())
                if changed or (period_end and running):
                    self._push_all(arrays=(running and period_end) or changed, stop=stop)
                    last_state = state
                elif period_end or woken:
                    self._push_if_changed(stop)
                self._push_settings(stop)
            except Stopped:
                break
            except Exception:  # noqa: BLE001 - the monitor must survive; report and go on
                if stop.is_set():
                    break
                _log.error("monitor thread: %s", traceback.format_exc())
