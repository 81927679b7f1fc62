"""Read/write (memorized) attributes of the ``Timepix3`` device.

Ranges are declared as ``min_value``/``max_value`` (Taurus and Sardana show them; Tango
refuses a value outside them itself). The write methods check what a range cannot say
(start <= end, a directory that exists, a setting that cannot change while RUNNING) and
refuse with a text that names what is allowed; nothing changes on a refusal.

Live settings (event window, ToT threshold, clustering radius / time window / minimum
size, ROI) take effect while RUNNING at the next chunk. ``CentroidProcesses``,
``Centroiding`` and ``ClusteringAlgorithm`` change the pipeline's processes: refused while
RUNNING or MOVING, they re-arm the pipeline in the background when written in ON.
"""

from __future__ import annotations

import enum
import os
import tempfile
from typing import Any

import numpy as np
import tango
from tango import AttrWriteType, DevState
from tango.server import attribute

from ..processing.clustering import DEFAULT_MIN_CLUSTER_SIZE, DEFAULT_RADIUS, DEFAULT_TIME_WINDOW_NS

#: Largest CentroidProcesses value: the CPUs this server may run on (at least 1).
try:
    CENTROID_PROCESSES_MAX: int = max(1, len(os.sched_getaffinity(0)))
except AttributeError:  # pragma: no cover - not Linux
    CENTROID_PROCESSES_MAX = max(1, os.cpu_count() or 1)
#: Event window limit, us (the window is relative to each TDC1 trigger).
EVENT_WINDOW_MAX_US: float = 1.0e6
#: Largest ToT value of a Timepix3 pixel (10-bit counter of 25 ns).
TOT_MAX: int = 1023
#: Longest AcquisitionTime, s (one day).
ACQ_TIME_MAX_S: float = 86400.0
#: Largest AcquisitionTriggers.
ACQ_TRIGGERS_MAX: int = 1 << 40
#: Clustering limits: radius px, time window ns, minimum cluster size hits.
CLUSTER_RADIUS_MAX: int = 16
CLUSTER_TIME_WINDOW_MAX_NS: float = 1.0e6
MIN_CLUSTER_SIZE_MAX: int = 1000
#: FileIndex limit (5 digits in the file name; larger numbers just get longer).
FILE_INDEX_MAX: int = 10**9 - 1
#: ROI limits: pixels of the 516 x 516 quad frame, ToF in us.
ROI_DEFAULT: tuple[float, ...] = (0.0, 0.0, 515.0, 515.0, 0.0, EVENT_WINDOW_MAX_US)


class ClusteringAlgorithm(enum.IntEnum):
    """Centroiding algorithm: ``fast`` (numba connected components) or ``dbscan``. Each
    member's name is its key in the clustering registry (:mod:`tango_tpx.processing.settings`)."""

    fast = 0
    dbscan = 1

    @property
    def key(self) -> str:
        """The clustering registry key."""
        return self.name


#: defaults of every setting (values written by clients survive Init)
DEFAULT_SETTINGS: dict[str, Any] = {
    "CentroidProcesses": 1, "EventWindowStart": 0.0, "EventWindowEnd": 1000.0, "RecordingPath": "",
    "Centroiding": True, "ClusteringAlgorithm": ClusteringAlgorithm.fast, "TotThreshold": 0,
    "AcquisitionTime": 0.0, "AcquisitionTriggers": 0, "FilePrefix": "run_", "FileIndex": 0,
    "AutoRecord": False, "AutoConvert": False, "Roi": ROI_DEFAULT, "ClusterRadius": DEFAULT_RADIUS,
    "ClusterTimeWindow": float(DEFAULT_TIME_WINDOW_NS), "MinClusterSize": DEFAULT_MIN_CLUSTER_SIZE,
}
#: settings that change the pipeline's processes (re-arm in ON, refused while RUNNING)
REARM_SETTINGS = ("CentroidProcesses", "Centroiding", "ClusteringAlgorithm")


def fail(reason: str, desc: str, origin: str) -> None:
    """Raise DevFailed with a reason code and a human readable description."""
    tango.Except.throw_exception(reason, desc, origin)


def _rw(**kw: Any) -> dict[str, Any]:  # read/write, memorized, restored into the hardware
    return dict(access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=True, **kw)


class SettingsAttributes:
    """Mixin of :class:`~tango_tpx.device.timepix3.Timepix3`: the R/W attributes."""

    _settings: dict[str, Any]

    def _refuse_while_busy(self, name: str) -> None:
        state = self.get_state()
        if state == DevState.RUNNING or (state == DevState.MOVING and not self._transition_busy):
            fail("Timepix3_NotNow", f"{name} cannot change in state {state}: it changes the pipeline's "
                 "processes; Stop first (allowed in ON)", f"Timepix3.{name}")

    # ---------------------------------------------------------------- pipeline shape
    @attribute(dtype=int, label="Centroid processes", format="%d", min_value=1,
               max_value=CENTROID_PROCESSES_MAX,
               doc=f"Number of centroiding processes, 1..{CENTROID_PROCESSES_MAX} (CPUs available to "
                   "this server). Not while RUNNING; in ON the pipeline is re-armed.", **_rw())
    def CentroidProcesses(self) -> int:
        return int(self._settings["CentroidProcesses"])

    @CentroidProcesses.write
    def CentroidProcesses(self, value: int) -> None:
        if not 1 <= int(value) <= CENTROID_PROCESSES_MAX:
            fail("Timepix3_BadValue", f"CentroidProcesses must be 1..{CENTROID_PROCESSES_MAX}, got {value}",
                 "Timepix3.CentroidProcesses")
        if int(value) != self._settings["CentroidProcesses"]:
            self._refuse_while_busy("CentroidProcesses")
            self._settings["CentroidProcesses"] = int(value)
            self._setting_changed("CentroidProcesses")

    @attribute(dtype=bool, label="Centroiding",
               doc="Compute centroids of clusters (True) or only events (False). Not while RUNNING; in "
                   "ON the pipeline is re-armed.", **_rw())
    def Centroiding(self) -> bool:
        return bool(self._settings["Centroiding"])

    @Centroiding.write
    def Centroiding(self, value: bool) -> None:
        if bool(value) != self._settings["Centroiding"]:
            self._refuse_while_busy("Centroiding")
            self._settings["Centroiding"] = bool(value)
            self._setting_changed("Centroiding")

    @attribute(dtype=ClusteringAlgorithm, label="Clustering algorithm",
               doc="Clustering used for centroids: fast (connected pixels in space and time) or dbscan "
                   "(scikit-learn). Not while RUNNING; in ON the pipeline is re-armed.", **_rw())
    def ClusteringAlgorithm(self) -> ClusteringAlgorithm:
        return ClusteringAlgorithm(int(self._settings["ClusteringAlgorithm"]))

    @ClusteringAlgorithm.write
    def ClusteringAlgorithm(self, value: int) -> None:
        try:
            algo = ClusteringAlgorithm(int(value))
        except (ValueError, TypeError):
            fail("Timepix3_BadValue", "ClusteringAlgorithm must be one of "
                 f"{', '.join(f'{a.value}={a.name}' for a in ClusteringAlgorithm)}, got {value!r}",
                 "Timepix3.ClusteringAlgorithm")
        if algo != self._settings["ClusteringAlgorithm"]:
            self._refuse_while_busy("ClusteringAlgorithm")
            self._settings["ClusteringAlgorithm"] = algo
            self._setting_changed("ClusteringAlgorithm")

    # ---------------------------------------------------------------- live settings
    # End is declared before Start so that restoring memorized values (in declaration
    # order) never sees a start beyond the default end.
    @attribute(dtype=float, label="Event window end", unit="us", standard_unit="1e-6", display_unit="1e-6",
               format="%.3f", min_value=0.0, max_value=EVENT_WINDOW_MAX_US,
               doc=f"End of the time-of-flight window after each trigger, us: EventWindowStart.."
                   f"{EVENT_WINDOW_MAX_US:g}. Live: applies at the next chunk, also while RUNNING.", **_rw())
    def EventWindowEnd(self) -> float:
        return float(self._settings["EventWindowEnd"])

    @EventWindowEnd.write
    def EventWindowEnd(self, value: float) -> None:
        value = float(value)
        start = float(self._settings["EventWindowStart"])
        if not np.isfinite(value) or value < 0 or value > EVENT_WINDOW_MAX_US:
            fail("Timepix3_BadValue", f"EventWindowEnd must be EventWindowStart..{EVENT_WINDOW_MAX_US:g} us "
                 f"(a negative window is not allowed), got {value}", "Timepix3.EventWindowEnd")
        if value < start:
            fail("Timepix3_BadValue", f"EventWindowEnd ({value} us) must not be before EventWindowStart "
                 f"({start} us); lower EventWindowStart first", "Timepix3.EventWindowEnd")
        self._settings["EventWindowEnd"] = value
        self._setting_changed("EventWindowEnd")

    @attribute(dtype=float, label="Event window start", unit="us", standard_unit="1e-6", display_unit="1e-6",
               format="%.3f", min_value=0.0, max_value=EVENT_WINDOW_MAX_US,
               doc="Start of the time-of-flight window after each trigger, us (0 <= start <= end). "
                   "Live: applies at the next chunk, also while RUNNING.", **_rw())
    def EventWindowStart(self) -> float:
        return float(self._settings["EventWindowStart"])

    @EventWindowStart.write
    def EventWindowStart(self, value: float) -> None:
        value = float(value)
        end = float(self._settings["EventWindowEnd"])
        if not np.isfinite(value) or value < 0:
            fail("Timepix3_BadValue", f"EventWindowStart must be 0..EventWindowEnd ({end} us); a negative "
                 f"window is not allowed, got {value}", "Timepix3.EventWindowStart")
        if value > end:
            fail("Timepix3_BadValue", f"EventWindowStart ({value} us) must not be after EventWindowEnd "
                 f"({end} us); raise EventWindowEnd first", "Timepix3.EventWindowStart")
        self._settings["EventWindowStart"] = value
        self._setting_changed("EventWindowStart")

    @attribute(dtype=int, label="ToT threshold [25 ns]", format="%d", min_value=0, max_value=TOT_MAX,
               doc=f"Hits with ToT at or below this many counts of 25 ns are left out of clustering, "
                   f"0..{TOT_MAX}. Live.", **_rw())
    def TotThreshold(self) -> int:
        return int(self._settings["TotThreshold"])

    @TotThreshold.write
    def TotThreshold(self, value: int) -> None:
        if not 0 <= int(value) <= TOT_MAX:
            fail("Timepix3_BadValue", f"TotThreshold must be 0..{TOT_MAX} ToT counts (25 ns), got {value}",
                 "Timepix3.TotThreshold")
        self._settings["TotThreshold"] = int(value)
        self._setting_changed("TotThreshold")

    @attribute(dtype=int, label="Cluster radius", unit="px", format="%d", min_value=0,
               max_value=CLUSTER_RADIUS_MAX,
               doc=f"Largest pixel distance (Chebyshev) inside a cluster, 0..{CLUSTER_RADIUS_MAX} px "
                   "(fast clustering). Live.", **_rw())
    def ClusterRadius(self) -> int:
        return int(self._settings["ClusterRadius"])

    @ClusterRadius.write
    def ClusterRadius(self, value: int) -> None:
        if not 0 <= int(value) <= CLUSTER_RADIUS_MAX:
            fail("Timepix3_BadValue", f"ClusterRadius must be 0..{CLUSTER_RADIUS_MAX} px, got {value}",
                 "Timepix3.ClusterRadius")
        self._settings["ClusterRadius"] = int(value)
        self._setting_changed("ClusterRadius")

    @attribute(dtype=float, label="Cluster time window", unit="ns", standard_unit="1e-9",
               display_unit="1e-9", format="%.1f", min_value=0.0, max_value=CLUSTER_TIME_WINDOW_MAX_NS,
               doc=f"Largest time difference of neighbouring hits in one cluster, 0.."
                   f"{CLUSTER_TIME_WINDOW_MAX_NS:g} ns (fast clustering). Live.", **_rw())
    def ClusterTimeWindow(self) -> float:
        return float(self._settings["ClusterTimeWindow"])

    @ClusterTimeWindow.write
    def ClusterTimeWindow(self, value: float) -> None:
        value = float(value)
        if not (np.isfinite(value) and 0 <= value <= CLUSTER_TIME_WINDOW_MAX_NS):
            fail("Timepix3_BadValue", f"ClusterTimeWindow must be 0..{CLUSTER_TIME_WINDOW_MAX_NS:g} ns, "
                 f"got {value}", "Timepix3.ClusterTimeWindow")
        self._settings["ClusterTimeWindow"] = value
        self._setting_changed("ClusterTimeWindow")

    @attribute(dtype=int, label="Minimum cluster size", format="%d", min_value=1, max_value=MIN_CLUSTER_SIZE_MAX,
               doc=f"Clusters with fewer hits are dropped, 1..{MIN_CLUSTER_SIZE_MAX}. Live.", **_rw())
    def MinClusterSize(self) -> int:
        return int(self._settings["MinClusterSize"])

    @MinClusterSize.write
    def MinClusterSize(self, value: int) -> None:
        if not 1 <= int(value) <= MIN_CLUSTER_SIZE_MAX:
            fail("Timepix3_BadValue", f"MinClusterSize must be 1..{MIN_CLUSTER_SIZE_MAX} hits, got {value}",
                 "Timepix3.MinClusterSize")
        self._settings["MinClusterSize"] = int(value)
        self._setting_changed("MinClusterSize")

    @attribute(dtype=(float,), max_dim_x=6, label="Region of interest", access=AttrWriteType.READ_WRITE,
               doc="x0, y0, x1, y1 (pixels, inclusive), tof_min_us, tof_max_us (inclusive): RoiHits and "
                   "RoiCentroids count what falls inside. Needs x0 <= x1, y0 <= y1, 0 <= tof_min <= tof_max. "
                   "Live. Kept in the database like a memorized attribute (property __value).")
    def Roi(self) -> np.ndarray:
        return np.asarray(self._settings["Roi"], np.float64)

    @Roi.write
    def Roi(self, value) -> None:
        v = [float(x) for x in np.asarray(value, np.float64).ravel()]
        if len(v) != 6 or not all(np.isfinite(v)) or not (0 <= v[0] <= v[2] and 0 <= v[1] <= v[3]
                                                             and 0 <= v[4] <= v[5]):
            fail("Timepix3_BadValue", "Roi must be 6 numbers x0, y0, x1, y1 (px), tof_min_us, tof_max_us "
                 f"with 0 <= x0 <= x1, 0 <= y0 <= y1, 0 <= tof_min <= tof_max, got {v}", "Timepix3.Roi")
        self._settings["Roi"] = tuple(v)
        self._setting_changed("Roi")
        self._store_roi()

    def _store_roi(self) -> None:
        """Tango memorizes scalars only: the spectrum is kept as the attribute property __value."""
        try:
            db = tango.Database()
            db.put_device_attribute_property(self.get_name(),
                                             {"Roi": {"__value": [repr(x) for x in self._settings["Roi"]]}})
        except Exception:  # noqa: BLE001 - no database (test context): not kept
            pass

    def _restore_roi(self) -> None:
        try:
            if not tango.Util.instance().use_db():
                return
            db = tango.Database()
            prop = db.get_device_attribute_property(self.get_name(), ["Roi"])["Roi"].get("__value")
            if prop and len(prop) == 6:
                self._settings["Roi"] = tuple(float(x) for x in prop)
        except Exception:  # noqa: BLE001 - keep the default
            pass

    # ---------------------------------------------------------------- acquisitions
    @attribute(dtype=float, label="Acquisition time", unit="s", format="%.3f", min_value=0.0,
               max_value=ACQ_TIME_MAX_S,
               doc=f"Length of each acquisition in detector time, s (0 = until Stop), 0..{ACQ_TIME_MAX_S:g}. "
                   "With AcquisitionTriggers, whichever comes first ends it.", **_rw())
    def AcquisitionTime(self) -> float:
        return float(self._settings["AcquisitionTime"])

    @AcquisitionTime.write
    def AcquisitionTime(self, value: float) -> None:
        value = float(value)
        if not (np.isfinite(value) and 0 <= value <= ACQ_TIME_MAX_S):
            fail("Timepix3_BadValue", f"AcquisitionTime must be 0..{ACQ_TIME_MAX_S:g} s (0 = until Stop), "
                 f"got {value}", "Timepix3.AcquisitionTime")
        self._settings["AcquisitionTime"] = value

    @attribute(dtype=tango.DevLong64, label="Acquisition triggers", format="%d", min_value=0,
               max_value=ACQ_TRIGGERS_MAX,
               doc="Number of triggers (TDC1 rising edges) per acquisition, 0 = unlimited; the acquisition "
                   "holds exactly this many events.", **_rw())
    def AcquisitionTriggers(self) -> int:
        return int(self._settings["AcquisitionTriggers"])

    @AcquisitionTriggers.write
    def AcquisitionTriggers(self, value: int) -> None:
        if not 0 <= int(value) <= ACQ_TRIGGERS_MAX:
            fail("Timepix3_BadValue", f"AcquisitionTriggers must be 0..{ACQ_TRIGGERS_MAX} (0 = unlimited), "
                 f"got {value}", "Timepix3.AcquisitionTriggers")
        self._settings["AcquisitionTriggers"] = int(value)

    # ---------------------------------------------------------------- files
    @attribute(dtype=str, label="Recording directory",
               doc="Existing writable directory (absolute path) of the file series and of relative OpenFile "
                   "names; '' = none. When set, files outside it are refused.", **_rw())
    def RecordingPath(self) -> str:
        return str(self._settings["RecordingPath"])

    @RecordingPath.write
    def RecordingPath(self, value: str) -> None:
        value = str(value).strip()
        origin = "Timepix3.RecordingPath"
        if value:
            value = os.path.expanduser(value)
            if not os.path.isabs(value):
                fail("Timepix3_BadPath", f"RecordingPath must be an absolute directory path, got {value!r}", origin)
            if not os.path.isdir(value):
                fail("Timepix3_BadPath", f"RecordingPath {value} does not exist or is not a directory", origin)
            try:  # the real test (os.access says yes to root on read-only file systems)
                with tempfile.TemporaryFile(dir=value):
                    pass
            except OSError as exc:
                fail("Timepix3_BadPath", f"RecordingPath {value} is not writable: {exc.strerror or exc}", origin)
            value = os.path.realpath(value)
        self._settings["RecordingPath"] = value

    @attribute(dtype=str, label="File prefix",
               doc="Name prefix of the file series: AutoRecord writes {FilePrefix}{FileIndex:05d}.raw in "
                   "RecordingPath. Letters, digits, '.', '-', '_' only.", **_rw())
    def FilePrefix(self) -> str:
        return str(self._settings["FilePrefix"])

    @FilePrefix.write
    def FilePrefix(self, value: str) -> None:
        value = str(value)
        if not all(ch.isalnum() or ch in "._-" for ch in value) or value.startswith("."):
            fail("Timepix3_BadValue", "FilePrefix may hold letters, digits, '.', '-' and '_' (not first '.'), "
                 f"got {value!r}", "Timepix3.FilePrefix")
        self._settings["FilePrefix"] = value

    @attribute(dtype=tango.DevLong64, label="File index", format="%d", min_value=0, max_value=FILE_INDEX_MAX,
               doc="Number of the next file of the series; incremented after each recorded acquisition.",
               **_rw())
    def FileIndex(self) -> int:
        return int(self._settings["FileIndex"])

    @FileIndex.write
    def FileIndex(self, value: int) -> None:
        if not 0 <= int(value) <= FILE_INDEX_MAX:
            fail("Timepix3_BadValue", f"FileIndex must be 0..{FILE_INDEX_MAX}, got {value}", "Timepix3.FileIndex")
        self._settings["FileIndex"] = int(value)

    @attribute(dtype=bool, label="Auto record",
               doc="Each Start records to RecordingPath/{FilePrefix}{FileIndex:05d}.raw (an existing file is "
                   "refused, never overwritten).", **_rw())
    def AutoRecord(self) -> bool:
        return bool(self._settings["AutoRecord"])

    @AutoRecord.write
    def AutoRecord(self, value: bool) -> None:
        self._settings["AutoRecord"] = bool(value)

    @attribute(dtype=bool, label="Auto convert",
               doc="After each recorded acquisition, convert the raw file to HDF5 next to it (same name, .h5) "
                   "in the background with the acquisition's settings; see ConversionProgress, LastHdf5File.",
               **_rw())
    def AutoConvert(self) -> bool:
        return bool(self._settings["AutoConvert"])

    @AutoConvert.write
    def AutoConvert(self, value: bool) -> None:
        self._settings["AutoConvert"] = bool(value)
