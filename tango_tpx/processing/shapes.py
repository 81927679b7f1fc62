"""pymepix's message shapes and units, from tango-tpx's typed records.

The live pipelines of :mod:`tango_tpx.processing` (the pymepix face) put these on
``data_queue`` unless ``typed_records=True`` is given; :mod:`.logic` returns them.

==================  =======================================================================
message             payload (numpy arrays of equal length)
==================  =======================================================================
``PixelData``       ``(x, y, toa, tot)``: x, y int64 pixels, toa float64 s on the
                    longtime-extended detector clock, tot int64 ns
``EventData``       ``(trigger nr, x, y, tof, tot)``: int64, int64, int64, float64 s, int64 ns
``CentroidData``    one float64 array of shape (7, N): trigger nr, x, y (ToT-weighted pixels),
                    tof s, tot avg ns, tot max ns, cluster size
``TriggerData``     (an extra: pymepix's live pipelines send none) event mode:
                    ``(trigger nr int64, time float64 s)`` of each TDC1 rising edge;
                    pixel mode: ``(trigger1, trigger2)`` edge times float64 s, negative =
                    falling edge (pymepix's ``triggers`` output of ``PacketProcessor``)
==================  =======================================================================

Times are converted from exact int64 counts of 25/4096 ns, so they are as precise as a
float64 allows (about 7 ps at 10^5 s); ToT is the 25 ns count times 25.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tpx3.units import UNIT_NS

#: seconds per fine unit (25/4096 ns)
UNIT_S: float = UNIT_NS * 1e-9
TOT_NS: int = 25


def _s(t: np.ndarray) -> np.ndarray:
    return np.asarray(t, np.int64) * UNIT_S


def _tot_ns(tot: np.ndarray) -> np.ndarray:
    return np.asarray(tot, np.int64) * TOT_NS


def pixel_tuple(px: Any) -> tuple[np.ndarray, ...]:
    """``PixelHits`` -> ``(x, y, toa s, tot ns)``."""
    return (np.asarray(px.x, np.int64), np.asarray(px.y, np.int64), _s(px.toa), _tot_ns(px.tot))


def event_tuple(ev: Any) -> tuple[np.ndarray, ...]:
    """``Events`` -> ``(trigger nr, x, y, tof s, tot ns)``."""
    return (np.asarray(ev.trigger_nr, np.int64), np.asarray(ev.x, np.int64), np.asarray(ev.y, np.int64),
            _s(ev.tof), _tot_ns(ev.tot))


def centroid_array(c: Any) -> np.ndarray:
    """``Centroids`` -> float64 (7, N): trigger nr, x, y, tof s, tot avg ns, tot max ns, size."""
    out = np.empty((7, len(c.x)), np.float64)
    out[0] = c.trigger_nr
    out[1] = c.x
    out[2] = c.y
    out[3] = _s(c.tof)
    out[4] = np.asarray(c.tot_avg, np.float64) * TOT_NS
    out[5] = np.asarray(c.tot_max, np.float64) * TOT_NS
    out[6] = c.size
    return out


def trigger_edges_s(tr: Any) -> tuple[np.ndarray, np.ndarray]:
    """``Triggers`` -> (TDC1 rising edge times s, TDC2 edge times s with falling < 0),
    pymepix's ``triggers`` pair."""
    t = _s(tr.time)
    ch = np.asarray(tr.channel)
    rising = np.asarray(tr.rising, bool)
    t1 = t[(ch == 1) & rising]
    m2 = ch == 2
    t2 = np.where(rising[m2], t[m2], -t[m2])
    return t1, t2


def to_pymepix(mtype: Any, data: Any) -> Any:
    """Convert one message payload (typed record) to pymepix's shape; anything else as is."""
    kind = type(data).__name__
    if kind == "PixelHits":
        return pixel_tuple(data)
    if kind == "Events":
        return event_tuple(data)
    if kind == "Centroids":
        return centroid_array(data)
    if kind == "TriggerTable":
        return (np.asarray(data.trigger_nr, np.int64), _s(data.time))
    if kind == "Triggers":
        return trigger_edges_s(data)
    return data


__all__ = ["pixel_tuple", "event_tuple", "centroid_array", "trigger_edges_s", "to_pymepix", "UNIT_S"]
