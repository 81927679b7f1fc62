"""HDF5 output layout of tango-tpx: the one place that names every dataset, its dtype and unit.

The group and dataset names are those of pymepix (CFEL-CMI) so that user scripts written for
pymepix's ``RawFileSampler`` output keep working; the dtypes are honest and every dataset
carries its true ``unit`` attribute. See ``docs/hdf5-layout.md`` for the table.

Units inside tango-tpx are int64 fine units of 25/4096 ns (times) and uint16 counts of 25 ns
(ToT); the conversion to the file units (s for ToF and trigger times, ns for ToT and the
time stamps) happens only here, in :func:`events_columns` & co. The writer is
:mod:`tango_tpx.io.hdf5` (which also exports every name of this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from tango_tpx.tpx3.units import UNIT_NS

#: Version of this layout (bump when a dataset changes name, dtype or unit).
LAYOUT_VERSION = "1.0"

#: Fine units (25/4096 ns) -> s.
_UNIT_S = UNIT_NS * 1e-9
#: ToT count -> ns.
_TOT_NS = 25


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the layout: HDF5 path, numpy dtype, unit attribute, description."""

    path: str
    dtype: np.dtype
    unit: str
    description: str

    @property
    def group(self) -> str:
        return self.path.rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


def _spec(path: str, dtype, unit: str, description: str) -> DatasetSpec:
    return DatasetSpec(path, np.dtype(dtype), unit, description)


#: Group path -> description (also written as the group's ``description`` attribute).
GROUPS: dict[str, str] = {
    "raw": "time-walk corrected pixel hits inside the event window, one row per hit, sorted by ToA",
    "centroided": "clusters of hits (centroids), one row per cluster, ordered by trigger nr",
    "timing": "timing information from Timepix and facility",
    "timing/timepix": "every TDC1 rising edge (trigger) of Timepix, one row per trigger",
    "timing/trainID": "facility train IDs (European XFEL timing receiver, see tango_tpx.trainid)",
    "triggers": "triggering information from Timepix",
    "triggers/trigger1": "every TDC1 edge in stream order; negative time = falling edge",
    "triggers/trigger2": "every TDC2 edge in stream order; negative time = falling edge",
}

#: Every dataset, grouped by table (tables are appended row-aligned).
RAW: dict[str, DatasetSpec] = {
    "trigger nr": _spec("raw/trigger nr", np.int64, "", "global event number (0-based TDC1 rising edge index)"),
    "x": _spec("raw/x", np.uint16, "pixel", "column"),
    "y": _spec("raw/y", np.uint16, "pixel", "row"),
    "tof": _spec("raw/tof", np.float64, "s", "time of flight = ToA - trigger time (time-walk corrected)"),
    "tot": _spec("raw/tot", np.uint32, "ns", "time over threshold (multiple of 25 ns)"),
}
CENTROIDED: dict[str, DatasetSpec] = {
    "trigger nr": _spec("centroided/trigger nr", np.int64, "", "global event number of the cluster"),
    "x": _spec("centroided/x", np.float32, "pixel", "ToT-weighted mean column"),
    "y": _spec("centroided/y", np.float32, "pixel", "ToT-weighted mean row"),
    "tof": _spec("centroided/tof", np.float64, "s", "ToT-weighted mean time of flight (centroid time-walk corrected)"),
    "tot avg": _spec("centroided/tot avg", np.float32, "ns", "mean time over threshold in cluster"),
    "tot max": _spec("centroided/tot max", np.uint32, "ns", "maximum of time over threshold in cluster"),
    "tot sum": _spec("centroided/tot sum", np.uint32, "ns", "sum of time over threshold in cluster"),
    "clustersize": _spec("centroided/clustersize", np.uint32, "hits", "number of hits in cluster"),
}
TIMEPIX: dict[str, DatasetSpec] = {
    "trigger nr": _spec("timing/timepix/trigger nr", np.int64, "", "global event number"),
    "event trigger": _spec("timing/timepix/event trigger", np.float64, "s",
                           "trigger (TDC1 rising edge) time on the Timepix clock"),
    "timestamp": _spec("timing/timepix/timestamp", np.uint64, "ns",
                       "ns since the epoch (pymepix): the raw file header's wall clock plus 'trigger time' "
                       "(input without a header: 'trigger time')"),
    "trigger time": _spec("timing/timepix/trigger time", np.uint64, "ns",
                          "trigger time on the Timepix clock, rounded to integer ns"),
    "tdc counter": _spec("timing/timepix/tdc counter", np.uint16, "",
                         "12-bit TDC trigger counter of the edge (gaps = lost triggers)"),
}
TRAINID: dict[str, DatasetSpec] = {
    "timestamp": _spec("timing/trainID/timestamp", np.uint64, "ns", "host wall clock (time.time_ns) at reception"),
    "train id": _spec("timing/trainID/train id", np.uint64, "", "facility train ID"),
    "beam mode": _spec("timing/trainID/beam mode", np.uint32, "", "facility beam mode word"),
}
TRIGGER1: dict[str, DatasetSpec] = {
    "time": _spec("triggers/trigger1/time", np.float64, "s",
                  "TDC1 edge time on the Timepix clock; negative = falling edge"),
}
TRIGGER2: dict[str, DatasetSpec] = {
    "time": _spec("triggers/trigger2/time", np.float64, "s",
                  "TDC2 edge time on the Timepix clock; negative = falling edge"),
}

#: Table name -> its datasets.
TABLES: dict[str, dict[str, DatasetSpec]] = {
    "raw": RAW,
    "centroided": CENTROIDED,
    "timing/timepix": TIMEPIX,
    "timing/trainID": TRAINID,
    "triggers/trigger1": TRIGGER1,
    "triggers/trigger2": TRIGGER2,
}
#: Every dataset spec by path.
DATASETS: dict[str, DatasetSpec] = {s.path: s for t in TABLES.values() for s in t.values()}


# --------------------------------------------------------------------------------------------
# pure conversions: tango-tpx containers (fine units, ToT counts) -> file columns
# --------------------------------------------------------------------------------------------

def events_columns(events: Any, out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``Events`` (trigger_nr, x, y, tof [fine units], tot [counts]) -> ``raw`` columns.

    tof becomes float64 s, tot uint32 ns; x and y stay uint16 pixels. With ``out`` (arrays
    of the file dtypes, at least ``len(events)`` long) the columns are written into it and
    views of the written part are returned.
    """
    if out is None:
        return {
            "trigger nr": np.asarray(events.trigger_nr, dtype=np.int64),
            "x": np.asarray(events.x, dtype=np.uint16),
            "y": np.asarray(events.y, dtype=np.uint16),
            "tof": np.asarray(events.tof, dtype=np.int64) * _UNIT_S,
            "tot": np.asarray(events.tot, dtype=np.uint32) * np.uint32(_TOT_NS),
        }
    n = len(events.x)
    cols = {k: out[k][:n] for k in RAW}
    cols["trigger nr"][:] = events.trigger_nr
    cols["x"][:] = events.x
    cols["y"][:] = events.y
    np.multiply(events.tof, _UNIT_S, out=cols["tof"])
    np.multiply(events.tot, np.uint32(_TOT_NS), out=cols["tot"], dtype=np.uint32)
    return cols


def centroids_columns(centroids: Any) -> dict[str, np.ndarray]:
    """``Centroids`` (tof fine units, tot_* counts) -> ``centroided`` columns (s, ns)."""
    tot_sum = np.asarray(centroids.tot_sum, dtype=np.uint32)
    return {
        "trigger nr": np.asarray(centroids.trigger_nr, dtype=np.int64),
        "x": np.asarray(centroids.x, dtype=np.float32),
        "y": np.asarray(centroids.y, dtype=np.float32),
        "tof": np.asarray(centroids.tof, dtype=np.int64) * _UNIT_S,
        "tot avg": np.asarray(centroids.tot_avg, dtype=np.float32) * np.float32(_TOT_NS),
        "tot max": np.asarray(centroids.tot_max, dtype=np.uint32) * np.uint32(_TOT_NS),
        "tot sum": tot_sum * np.uint32(_TOT_NS),
        "clustersize": np.asarray(centroids.size, dtype=np.uint32),
    }


def trigger_table_columns(table: Any, start_time_ns: int = 0) -> dict[str, np.ndarray]:
    """``TriggerTable`` (trigger_nr, time [fine units], counter) -> ``timing/timepix`` columns;
    ``start_time_ns``: the raw file header's wall clock (ns since the epoch), added to the
    trigger time for ``timestamp``."""
    t = np.asarray(table.time, dtype=np.int64)
    # integer ns, rounded half up, without going through float for large times
    ns = np.maximum((t * 25 + 2048) // 4096, 0).astype(np.uint64)
    return {
        "trigger nr": np.asarray(table.trigger_nr, dtype=np.int64),
        "event trigger": t * _UNIT_S,
        "timestamp": ns + np.uint64(start_time_ns),
        "trigger time": ns,
        "tdc counter": np.asarray(table.counter, dtype=np.uint16),
    }


def trigger_edge_columns(triggers: Any) -> dict[int, np.ndarray]:
    """``Triggers`` (channel, rising, time [fine units]) -> {1: trigger1 s, 2: trigger2 s}.

    Falling edges get a negative sign (pymepix convention). Order of the stream is kept.
    """
    ch = np.asarray(triggers.channel)
    t = np.asarray(triggers.time, dtype=np.int64) * _UNIT_S
    t = np.where(np.asarray(triggers.rising, dtype=bool), t, -t)
    return {1: t[ch == 1], 2: t[ch == 2]}


__all__ = [
    "LAYOUT_VERSION", "DatasetSpec", "GROUPS", "RAW", "CENTROIDED", "TIMEPIX", "TRAINID", "TRIGGER1",
    "TRIGGER2", "TABLES", "DATASETS", "events_columns", "centroids_columns", "trigger_table_columns",
    "trigger_edge_columns",
]
