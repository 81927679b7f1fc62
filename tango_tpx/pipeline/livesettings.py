"""Settings that may change while an acquisition runs, in shared memory.

The controller (one writer) publishes a new set under a sequence lock: an int64 generation
that is odd while the values are written. Stages compare the generation once per chunk and
apply a new set before they process the next chunk, so a change takes effect at a chunk
boundary: every hit is decoded and counted exactly once, whatever the settings.

Fields and units: ``event_window`` (min, max) ToF in s; ``tot_threshold`` ToT counts of
25 ns (hits at or below it are left out of clustering); ``radius`` px, ``time_window_ns``
ns and ``min_cluster_size`` hits (fast clustering); ``roi`` (x0, y0, x1, y1 px inclusive,
tof_min_us, tof_max_us).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import time
from dataclasses import dataclass, replace

import numpy as np

from ..processing.clustering import DEFAULT_MIN_CLUSTER_SIZE, DEFAULT_RADIUS, DEFAULT_TIME_WINDOW_NS

#: The whole frame and every ToF: a region of interest that counts everything.
FULL_ROI: tuple[float, ...] = (0.0, 0.0, 515.0, 515.0, 0.0, 1.0e6)


@dataclass(frozen=True)
class LiveValues:
    """One consistent set of live settings (see the module docstring for units)."""

    event_window: tuple[float, float] = (0.0, 1e-3)
    tot_threshold: int = 0
    radius: int = DEFAULT_RADIUS
    time_window_ns: float = DEFAULT_TIME_WINDOW_NS
    min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE
    roi: tuple[float, ...] = FULL_ROI

    def validate(self) -> "LiveValues":
        """Raise ValueError naming the first value out of range; returns self."""
        lo, hi = self.event_window
        if not (np.isfinite(lo) and 0 <= lo <= hi):
            raise ValueError(f"event_window must satisfy 0 <= min <= max (s), got {self.event_window}")
        if not 0 <= int(self.tot_threshold) <= 1023:
            raise ValueError(f"tot_threshold must be 0..1023 ToT counts, got {self.tot_threshold}")
        if int(self.radius) < 0:
            raise ValueError(f"radius must be >= 0 px, got {self.radius}")
        if not (np.isfinite(self.time_window_ns) and self.time_window_ns >= 0):
            raise ValueError(f"time_window_ns must be >= 0 ns, got {self.time_window_ns}")
        if int(self.min_cluster_size) < 1:
            raise ValueError(f"min_cluster_size must be >= 1, got {self.min_cluster_size}")
        if len(self.roi) != 6:
            raise ValueError(f"roi must have 6 values (x0, y0, x1, y1, tof_min_us, tof_max_us), got {self.roi}")
        return self

    def with_(self, **changes) -> "LiveValues":
        return replace(self, **changes).validate()


_N = 2 + 5 + 6    # generation, write flag spare | window lo, hi, tot, radius, time window | roi


class LiveSettings:
    """Shared block of :class:`LiveValues` (inherited by forked stages)."""

    def __init__(self, values: LiveValues | None = None) -> None:
        self._raw = mp.RawArray(ctypes.c_double, _N)
        self._gen = mp.RawArray(ctypes.c_int64, 1)
        self._views()
        self.publish(values or LiveValues())

    def _views(self) -> None:
        self.array = np.frombuffer(self._raw, np.float64)
        self.gen_array = np.frombuffer(self._gen, np.int64)

    def __getstate__(self):
        return {"_raw": self._raw, "_gen": self._gen}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._views()

    @property
    def generation(self) -> int:
        """Even number that grows by 2 with every published set."""
        return int(self.gen_array[0])

    def publish(self, values: LiveValues) -> None:
        """Writer: publish a validated set (the stages apply it at their next chunk)."""
        values.validate()
        a = self.array
        self.gen_array[0] += 1
        a[2], a[3] = values.event_window
        a[4] = values.tot_threshold
        a[5] = values.radius
        a[6] = values.time_window_ns
        a[7:13] = values.roi
        a[0] = values.min_cluster_size
        self.gen_array[0] += 1

    def read(self) -> tuple[int, LiveValues]:
        """Reader: (generation, values), never a half-written set."""
        for _ in range(1000):
            g = int(self.gen_array[0])
            if g % 2 == 0:
                a = self.array.copy()
                if int(self.gen_array[0]) == g:
                    return g, LiveValues((float(a[2]), float(a[3])), int(a[4]), int(a[5]), float(a[6]),
                                         int(a[0]), tuple(float(v) for v in a[7:13]))
            time.sleep(0.0001)
        raise RuntimeError("live settings are being written continuously")


def roi_mask(x: np.ndarray, y: np.ndarray, tof_units: np.ndarray, roi: tuple[float, ...]) -> np.ndarray:
    """Boolean mask of the items inside ``roi`` (x0, y0, x1, y1 px inclusive, tof_min_us,
    tof_max_us inclusive); ``tof_units`` in 25/4096 ns."""
    from ..tpx3.units import UNIT_NS
    x0, y0, x1, y1, t0, t1 = roi
    tof_us = tof_units * (UNIT_NS * 1e-3)
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (tof_us >= t0) & (tof_us <= t1)
