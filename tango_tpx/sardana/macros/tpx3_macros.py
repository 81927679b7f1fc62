"""Timepix3 macros: record, status, event window, region of interest.

The device is the MacroServer environment variable ``Tpx3Device`` (``sardana-setup`` sets
it; default ``tpx3/detector/1``). Every call to the device has a 5 s client timeout.
"""

from __future__ import annotations

import time

import tango
from sardana.macroserver.macro import Macro, Optional, Type

DEFAULT_DEVICE = "tpx3/detector/1"
TIMEOUT_MS = 5000


def _device(macro: Macro) -> tango.DeviceProxy:
    try:
        name = macro.getEnv("Tpx3Device")
    except Exception:  # noqa: BLE001 - UnknownEnv: use the default device
        name = DEFAULT_DEVICE
    proxy = tango.DeviceProxy(name)
    proxy.set_timeout_millis(TIMEOUT_MS)
    return proxy


def _wait_idle(macro: Macro, dev: tango.DeviceProxy, timeout_s: float) -> tango.DevState:
    """Wait (abortable) until the device leaves RUNNING/MOVING; returns its state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = dev.state()
        if state not in (tango.DevState.RUNNING, tango.DevState.MOVING):
            return state
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dev.name()} still {state} after {timeout_s:g} s")
        macro.checkPoint()
        time.sleep(0.05)


class tpx3_record(Macro):
    """Record one bounded Timepix3 acquisition of SECONDS to a new raw file and print the
    file and the counts (hits, centroids, triggers, ROI hits and centroids).

    NAME, if given, is the file prefix of this recording (the file is
    RecordingPath/NAME<NNNNN>.raw); the device's FilePrefix and AutoRecord are restored
    afterwards. With AutoConvert on, the HDF5 file is written beside it in the background.
    Aborting stops the acquisition and closes the file.
    """

    param_def = [
        ["seconds", Type.Float, None, "acquisition time, s (> 0)"],
        ["name", Type.String, Optional, "file prefix (default: the device's FilePrefix)"],
    ]

    def prepare(self, seconds, name):
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        self.dev = _device(self)

    def run(self, seconds, name):
        dev = self.dev
        if dev.state() != tango.DevState.ON:
            raise RuntimeError(f"{dev.name()} is {dev.state()}, not ON: {dev.status().strip()}")
        auto_record, prefix = dev.AutoRecord, dev.FilePrefix
        try:
            if name:
                dev.FilePrefix = name
            dev.AcquisitionTriggers = 0
            dev.AcquisitionTime = float(seconds)
            dev.AutoRecord = True
            t0 = time.monotonic()
            dev.Start()
            state = _wait_idle(self, dev, seconds + 60.0)
        finally:
            dev.AutoRecord = auto_record
            dev.FilePrefix = prefix
        if state != tango.DevState.ON:
            raise RuntimeError(f"{dev.name()} went {state}: {dev.status().strip()}")
        names = ["LastFile", "AutoConvert", "AcquisitionElapsed", "AcquisitionHits", "AcquisitionCentroids",
                 "AcquisitionTriggersDone", "RoiHits", "RoiCentroids"]
        v = {n: a.value for n, a in zip(names, dev.read_attributes(names))}
        self.output(f"tpx3_record: {v['LastFile']}")
        self.output(f"tpx3_record: {v['AcquisitionElapsed']:.3f} s, hits {v['AcquisitionHits']}, "
                    f"centroids {v['AcquisitionCentroids']}, triggers {v['AcquisitionTriggersDone']}, "
                    f"ROI hits {v['RoiHits']}, ROI centroids {v['RoiCentroids']} "
                    f"({time.monotonic() - t0:.1f} s wall)")
        if v["AutoConvert"]:
            self.output(f"tpx3_record: converting to {v['LastFile'][:-4]}.h5 in the background")
        return v["LastFile"]

    def on_abort(self):
        dev = getattr(self, "dev", None)
        if dev is None:
            return
        try:
            if dev.state() == tango.DevState.RUNNING:
                dev.Stop()
            deadline = time.monotonic() + 15.0
            while dev.state() == tango.DevState.MOVING and time.monotonic() < deadline:
                time.sleep(0.05)
            if dev.RecordingFile:
                dev.CloseFile()
        except tango.DevFailed as exc:
            self.warning(f"tpx3_record: stopping {dev.name()} failed: {exc.args[0].desc.strip()}")


class tpx3_status(Macro):
    """Print the Timepix3 device's state, status, rates, totals, settings and last files."""

    param_def = []

    def run(self):
        dev = _device(self)
        self.output(f"{dev.name()}: {dev.state()} - {dev.status().strip()}")
        groups = [
            ("rates (Hz)", ["HitRate", "TriggerRate", "CentroidRate"]),
            ("last acquisition", ["AcquisitionElapsed", "AcquisitionHits", "AcquisitionCentroids",
                                  "AcquisitionTriggersDone", "RoiHits", "RoiCentroids"]),
            ("settings", ["AcquisitionTime", "AcquisitionTriggers", "EventWindowStart", "EventWindowEnd",
                          "Roi", "AutoRecord", "AutoConvert", "RecordingPath", "FilePrefix", "FileIndex"]),
            ("files", ["RecordingFile", "LastFile", "LastHdf5File"]),
            ("health", ["KernelDrops", "LostTriggers", "MalformedWords"]),
        ]
        for title, names in groups:
            parts = []
            for name, attr in zip(names, dev.read_attributes(names)):
                value = attr.value
                if attr.has_failed or value is None:
                    text = "?"
                elif isinstance(value, float):
                    text = f"{value:.6g}"
                elif hasattr(value, "tolist") and not isinstance(value, str):
                    text = "[" + ", ".join(f"{x:g}" for x in value.tolist()) + "]"
                else:
                    text = str(value)
                parts.append(f"{name}={text}")
            self.output(f"  {title}: " + ", ".join(parts))


class tpx3_window(Macro):
    """Set the Timepix3 event window: hits from START_US to END_US (microseconds) after each
    trigger belong to its event (EventWindowStart/End, inclusive)."""

    param_def = [
        ["start_us", Type.Float, None, "window start after the trigger, us (>= 0)"],
        ["end_us", Type.Float, None, "window end after the trigger, us (>= start_us)"],
    ]

    def run(self, start_us, end_us):
        if not 0 <= start_us <= end_us:
            raise ValueError(f"need 0 <= start_us <= end_us, got {start_us} and {end_us}")
        dev = _device(self)
        # write in the order that keeps start <= end at every moment
        if start_us > dev.EventWindowEnd:
            dev.EventWindowEnd = float(end_us)
            dev.EventWindowStart = float(start_us)
        else:
            dev.EventWindowStart = float(start_us)
            dev.EventWindowEnd = float(end_us)
        self.output(f"tpx3_window: {dev.EventWindowStart:g} .. {dev.EventWindowEnd:g} us")


class tpx3_roi(Macro):
    """Set the Timepix3 region of interest: pixels X0..X1, Y0..Y1 and ToF TOF0_US..TOF1_US
    (inclusive). RoiHits/RoiCentroids and the tpx3_roi_* channels count inside it."""

    param_def = [
        ["x0", Type.Integer, None, "first column, px"],
        ["y0", Type.Integer, None, "first row, px"],
        ["x1", Type.Integer, None, "last column, px (>= x0)"],
        ["y1", Type.Integer, None, "last row, px (>= y0)"],
        ["tof0_us", Type.Float, None, "ToF from, us"],
        ["tof1_us", Type.Float, None, "ToF to, us (>= tof0_us)"],
    ]

    def run(self, x0, y0, x1, y1, tof0_us, tof1_us):
        if x1 < x0 or y1 < y0 or tof1_us < tof0_us:
            raise ValueError("need x0 <= x1, y0 <= y1 and tof0_us <= tof1_us")
        dev = _device(self)
        dev.Roi = [float(x0), float(y0), float(x1), float(y1), float(tof0_us), float(tof1_us)]
        r = list(dev.Roi)
        self.output(f"tpx3_roi: x {r[0]:g}..{r[2]:g} px, y {r[1]:g}..{r[3]:g} px, "
                    f"ToF {r[4]:g}..{r[5]:g} us")
