"""Read-only attributes of the ``Timepix3`` device: counters, rates, previews, results.

Every value is read from the snapshot the monitor thread refreshes (never from the pipeline
directly), so a read never waits for the acquisition. Two groups:

* rolling (since ResetCounters, or over the last summary period): ``HitRate`` ...
  ``TotalHits`` ... ``Preview``, ``TofHistogram``, ``TofAxis``;
* per acquisition (the current one, or the last one once it ended): ``Acquisition*``,
  ``RoiHits``, ``RoiCentroids``, plus the file series ``LastFile``, ``LastHdf5File``,
  ``ConversionProgress``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tango
from tango import DispLevel
from tango.server import attribute

#: Image size limit (2x2 quad frame is 516 x 516 pixels).
PREVIEW_MAX_DIM: int = 516
#: Longest ToF spectrum the device can publish (bins).
TOF_MAX_BINS: int = 1 << 16

#: (attribute, abs_change, rel_change %, archive period ms) of the archived counters.
ARCHIVE_EVENTS: tuple[tuple[str, float | None, float | None, int], ...] = (
    ("HitRate", None, 5.0, 10000), ("TriggerRate", None, 5.0, 10000), ("EventRate", None, 5.0, 10000),
    ("CentroidRate", None, 5.0, 10000), ("TotalHits", 1, None, 10000), ("TotalTriggers", 1, None, 10000),
    ("TotalEvents", 1, None, 10000), ("TotalCentroids", 1, None, 10000), ("BytesReceived", 1, None, 10000),
    ("KernelDrops", 1, None, 10000), ("LostTriggers", 1, None, 10000), ("MalformedWords", 1, None, 10000),
    ("AcquisitionHits", 1, None, 10000), ("AcquisitionCentroids", 1, None, 10000),
    ("AcquisitionTriggersDone", 1, None, 10000), ("RoiHits", 1, None, 10000), ("RoiCentroids", 1, None, 10000),
)
_ARCH = {name: (a, r, p) for name, a, r, p in ARCHIVE_EVENTS}

#: Scalar attributes pushed as change (and archive) events.
SUMMARY_ATTRIBUTES: tuple[str, ...] = (
    "HitRate", "TriggerRate", "EventRate", "CentroidRate",
    "TotalHits", "TotalTriggers", "TotalEvents", "TotalCentroids",
    "BytesReceived", "KernelDrops", "LostTriggers", "MalformedWords",
    "RecordingFile", "TrainId",
    "AcquisitionHits", "AcquisitionCentroids", "AcquisitionTriggersDone", "AcquisitionElapsed",
    "RoiHits", "RoiCentroids", "LastFile", "LastHdf5File", "ConversionProgress",
)
#: Array attributes pushed as change and data-ready events.
ARRAY_ATTRIBUTES: tuple[str, ...] = ("Preview", "TofHistogram", "TofAxis", "AcquisitionImage",
                                     "AcquisitionTofHistogram", "AcquisitionTofAxis")


def _events(name: str) -> dict[str, Any]:
    """abs_change / rel_change / archive period declared on an attribute."""
    if name not in _ARCH:
        return {}
    a, r, p = _ARCH[name]
    kw: dict[str, Any] = {"archive_period": p}
    if a is not None:
        kw.update(abs_change=a, archive_abs_change=a)
    if r is not None:
        kw.update(rel_change=r, archive_rel_change=r)
    return kw


def empty_snapshot(side: int) -> dict[str, Any]:
    """Every read-only value at rest (no data yet) for a ``side`` x ``side`` frame."""
    snap: dict[str, Any] = {name: 0 for name in SUMMARY_ATTRIBUTES}
    for name in ("HitRate", "TriggerRate", "EventRate", "CentroidRate", "AcquisitionElapsed",
                 "ConversionProgress"):
        snap[name] = 0.0
    snap.update(RecordingFile="", TrainId=-1, LastFile="", LastHdf5File="")
    snap["Preview"] = np.zeros((side, side), np.int32)
    snap["AcquisitionImage"] = np.zeros((side, side), np.uint32)
    for name in ("TofHistogram", "TofAxis", "AcquisitionTofHistogram", "AcquisitionTofAxis"):
        snap[name] = np.zeros(0, np.float64)
    return snap


def _int(label: str, doc: str, unit: str = "") -> attribute:
    return attribute(dtype=tango.DevLong64, label=label, unit=unit, format="%d", doc=doc)


class ResultAttributes:
    """Mixin of :class:`~tango_tpx.device.timepix3.Timepix3`: the read-only attributes."""

    # ---------------------------------------------------------------- rates and totals
    @attribute(dtype=float, unit="Hz", format="%.1f", label="Hit rate",
               doc="Pixel hits per second over the last summary period.", **_events("HitRate"))
    def HitRate(self) -> float:
        return self._snap("HitRate")

    @attribute(dtype=float, unit="Hz", format="%.1f", label="Trigger rate",
               doc="Triggers (TDC1 rising edges) per second over the last summary period.",
               **_events("TriggerRate"))
    def TriggerRate(self) -> float:
        return self._snap("TriggerRate")

    @attribute(dtype=float, unit="Hz", format="%.1f", label="Event rate",
               doc="Hits assigned to a trigger (events) per second over the last summary period.",
               **_events("EventRate"))
    def EventRate(self) -> float:
        return self._snap("EventRate")

    @attribute(dtype=float, unit="Hz", format="%.1f", label="Centroid rate",
               doc="Centroids per second over the last summary period.", **_events("CentroidRate"))
    def CentroidRate(self) -> float:
        return self._snap("CentroidRate")

    @attribute(dtype=tango.DevLong64, label="Total hits", format="%d",
               doc="Pixel hits decoded since the last ResetCounters.", **_events("TotalHits"))
    def TotalHits(self) -> int:
        return self._snap("TotalHits")

    @attribute(dtype=tango.DevLong64, label="Total triggers", format="%d",
               doc="Triggers (TDC1 rising edges) decoded since the last ResetCounters.", **_events("TotalTriggers"))
    def TotalTriggers(self) -> int:
        return self._snap("TotalTriggers")

    @attribute(dtype=tango.DevLong64, label="Total events", format="%d",
               doc="Hits assigned to a trigger since the last ResetCounters.", **_events("TotalEvents"))
    def TotalEvents(self) -> int:
        return self._snap("TotalEvents")

    @attribute(dtype=tango.DevLong64, label="Total centroids", format="%d",
               doc="Centroids computed since the last ResetCounters.", **_events("TotalCentroids"))
    def TotalCentroids(self) -> int:
        return self._snap("TotalCentroids")

    @attribute(dtype=tango.DevLong64, label="Bytes received", unit="B", format="%d",
               doc="UDP payload bytes received during acquisitions since the last ResetCounters.",
               **_events("BytesReceived"))
    def BytesReceived(self) -> int:
        return self._snap("BytesReceived")

    @attribute(dtype=tango.DevLong64, label="Kernel drops", format="%d",
               doc="Datagrams the kernel dropped because the socket buffer was full.", **_events("KernelDrops"))
    def KernelDrops(self) -> int:
        return self._snap("KernelDrops")

    @attribute(dtype=tango.DevLong64, label="Lost triggers", format="%d",
               doc="Triggers missing from the TDC counter sequence.", **_events("LostTriggers"))
    def LostTriggers(self) -> int:
        return self._snap("LostTriggers")

    @attribute(dtype=tango.DevLong64, label="Malformed words", format="%d",
               doc="64-bit words that could not be decoded (counted and skipped).", **_events("MalformedWords"))
    def MalformedWords(self) -> int:
        return self._snap("MalformedWords")

    @attribute(dtype=str, label="Recording file",
               doc="Absolute path of the raw file being written, or opened in ON for the next Start; '' none.")
    def RecordingFile(self) -> str:
        return self._snap("RecordingFile")

    @attribute(dtype=tango.DevLong64, label="Train ID", format="%d",
               doc="Latest European XFEL train ID from TrainIdSource (change events at each summary "
                   "period while it changes); -1 when there is none.")
    def TrainId(self) -> int:
        return self._snap("TrainId")

    # ---------------------------------------------------------------- rolling arrays
    @attribute(dtype=((np.int32,),), max_dim_x=PREVIEW_MAX_DIM, max_dim_y=PREVIEW_MAX_DIM,
               label="Hit map", display_level=DispLevel.OPERATOR,
               doc="Hits per pixel over the last summary period (y rows, x columns).")
    def Preview(self) -> np.ndarray:
        return self._snap("Preview")

    @attribute(dtype=(np.float64,), max_dim_x=TOF_MAX_BINS, label="ToF histogram",
               doc="Time-of-flight histogram of events over the last summary period (bins of TofAxis).")
    def TofHistogram(self) -> np.ndarray:
        return self._snap("TofHistogram")

    @attribute(dtype=(np.float64,), max_dim_x=TOF_MAX_BINS, label="ToF axis", unit="ns",
               standard_unit="1e-9", display_unit="1e-9", doc="Time of flight of each TofHistogram bin, ns.")
    def TofAxis(self) -> np.ndarray:
        return self._snap("TofAxis")

    # ---------------------------------------------------------------- per acquisition
    @attribute(dtype=((np.uint32,),), max_dim_x=PREVIEW_MAX_DIM, max_dim_y=PREVIEW_MAX_DIM,
               label="Acquisition image", display_level=DispLevel.OPERATOR,
               doc="Hits per pixel of the current (or last) acquisition, 256x256 or 516x516 (y rows, x columns).")
    def AcquisitionImage(self) -> np.ndarray:
        return self._snap("AcquisitionImage")

    @attribute(dtype=(np.float64,), max_dim_x=TOF_MAX_BINS, label="Acquisition ToF histogram",
               doc="Time-of-flight histogram of the events of the current (or last) acquisition "
                   "(bins of AcquisitionTofAxis; restarts when the event window changes).")
    def AcquisitionTofHistogram(self) -> np.ndarray:
        return self._snap("AcquisitionTofHistogram")

    @attribute(dtype=(np.float64,), max_dim_x=TOF_MAX_BINS, label="Acquisition ToF axis", unit="ns",
               standard_unit="1e-9", display_unit="1e-9",
               doc="Time of flight of each AcquisitionTofHistogram bin centre, ns.")
    def AcquisitionTofAxis(self) -> np.ndarray:
        return self._snap("AcquisitionTofAxis")

    @attribute(dtype=tango.DevLong64, label="Acquisition hits", format="%d",
               doc="Pixel hits of the current (or last) acquisition.", **_events("AcquisitionHits"))
    def AcquisitionHits(self) -> int:
        return self._snap("AcquisitionHits")

    @attribute(dtype=tango.DevLong64, label="Acquisition centroids", format="%d",
               doc="Centroids of the current (or last) acquisition.", **_events("AcquisitionCentroids"))
    def AcquisitionCentroids(self) -> int:
        return self._snap("AcquisitionCentroids")

    @attribute(dtype=tango.DevLong64, label="Acquisition triggers done", format="%d",
               doc="Triggers (TDC1 rising edges, = events) of the current (or last) acquisition.",
               **_events("AcquisitionTriggersDone"))
    def AcquisitionTriggersDone(self) -> int:
        return self._snap("AcquisitionTriggersDone")

    @attribute(dtype=float, label="Acquisition elapsed", unit="s", format="%.3f",
               doc="Detector time spanned by the current (or last) acquisition, s (host time until its "
                   "first data).")
    def AcquisitionElapsed(self) -> float:
        return self._snap("AcquisitionElapsed")

    @attribute(dtype=tango.DevLong64, label="ROI hits", format="%d",
               doc="Events (hits with a time of flight) inside Roi in the current (or last) acquisition.",
               **_events("RoiHits"))
    def RoiHits(self) -> int:
        return self._snap("RoiHits")

    @attribute(dtype=tango.DevLong64, label="ROI centroids", format="%d",
               doc="Centroids inside Roi in the current (or last) acquisition.", **_events("RoiCentroids"))
    def RoiCentroids(self) -> int:
        return self._snap("RoiCentroids")

    # ---------------------------------------------------------------- file series
    @attribute(dtype=str, label="Last file", doc="Absolute path of the last raw file finished; '' none.")
    def LastFile(self) -> str:
        return self._snap("LastFile")

    @attribute(dtype=str, label="Last HDF5 file",
               doc="Absolute path of the last HDF5 file AutoConvert finished; '' none.")
    def LastHdf5File(self) -> str:
        return self._snap("LastHdf5File")

    @attribute(dtype=float, label="Conversion progress", unit="%", format="%.1f", min_value=0, max_value=100,
               doc="Progress of the running (or last) AutoConvert conversion, 0..100 %.")
    def ConversionProgress(self) -> float:
        return self._snap("ConversionProgress")
