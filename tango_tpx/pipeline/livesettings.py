"""Settings that may change while an acquisition runs, in shared memory.

The controller (one writer) publishes a new set under a sequence lock: an int64 generation
that is odd while the values are written. The decode stage compares the generation once per
chunk and applies a new set before it processes the next chunk, so a change takes effect at
a chunk boundary: every hit is decoded and counted exactly once, whatever the settings.

Each published set has a version (:attr:`LiveSettings.version`: 1, 2, 3 ... per set
published, the generation / 2). The decode stage tags every chunk it sends with the version
it used (message meta ``sv``) and the clustering settings of that version (meta
``clustering``, :meth:`ClusteringConfig.to_attrs`); the centroid workers cluster a chunk
with the settings it carries, never with newer ones, so every output chunk was made by
exactly one version. A new version applies per trigger
(:meth:`~tango_tpx.processing.events.PacketProcessor.set_event_window`): the events whose
trigger came before the change keep the version they started with (event window, clustering),
the triggers after it use the new one. An event is therefore never split between two
outputs, whatever the new window end (also one shorter than the trigger period, changed while
an event is open), and a release that crosses a change goes out as one chunk per version.

Values (:class:`LiveValues`): ``window`` an :class:`~tango_tpx.processing.settings.EventWindow`
(s); ``clustering`` a :class:`~tango_tpx.processing.settings.ClusteringConfig` (algorithm key,
radius px, time window ns, minimum size hits, ToT threshold counts of 25 ns ...); ``roi``
(x0, y0, x1, y1 px inclusive, tof_min_us, tof_max_us).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..processing.settings import ClusteringConfig, EventWindow

#: The whole frame and every ToF: a region of interest that counts everything.
FULL_ROI: tuple[float, ...] = (0.0, 0.0, 515.0, 515.0, 0.0, 1.0e6)
#: meta keys of a chunk: the settings version that made it, its clustering settings
META_SETTINGS_VERSION, META_CLUSTERING = "sv", "clustering"
#: bytes of the shared block holding one set (JSON)
_BLOCK_BYTES = 4096
#: LiveValues.with_ keyword -> ClusteringConfig field
_CLUSTERING_KEYS = {"algorithm": "algorithm", "clustering_algorithm": "algorithm", "radius": "radius",
                    "time_window_ns": "time_window_ns", "min_cluster_size": "min_cluster_size",
                    "tot_threshold": "tot_threshold", "eps": "eps", "min_samples": "min_samples"}


@dataclass(frozen=True)
class LiveValues:
    """One consistent set of live settings (see the module docstring for units); the flat
    names of earlier use (``event_window`` tuple, ``tot_threshold``, ``radius``,
    ``time_window_ns``, ``min_cluster_size``) read through to the typed objects."""

    window: EventWindow = field(default_factory=EventWindow)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    roi: tuple[float, ...] = FULL_ROI

    def __post_init__(self) -> None:
        if not isinstance(self.window, EventWindow):
            object.__setattr__(self, "window", EventWindow.of(self.window))
        if not isinstance(self.clustering, ClusteringConfig):
            raise ValueError(f"clustering must be a ClusteringConfig, got {type(self.clustering).__name__}")
        roi = tuple(float(v) for v in self.roi)
        if len(roi) != 6 or not all(np.isfinite(roi)):
            raise ValueError(f"roi must have 6 finite values (x0, y0, x1, y1 px, tof_min_us, tof_max_us), "
                             f"got {self.roi}")
        object.__setattr__(self, "roi", roi)

    @property
    def event_window(self) -> tuple[float, float]:
        """(start, end) ToF in s."""
        return self.window.as_tuple()

    @property
    def tot_threshold(self) -> int:
        return self.clustering.tot_threshold

    @property
    def radius(self) -> int:
        return self.clustering.radius

    @property
    def time_window_ns(self) -> float:
        return self.clustering.time_window_ns

    @property
    def min_cluster_size(self) -> int:
        return int(self.clustering.min_cluster_size)

    def validate(self) -> "LiveValues":
        """Validated on construction; returns self."""
        return self

    def with_(self, **changes: Any) -> "LiveValues":
        """A validated copy: ``window`` / ``event_window`` (EventWindow or (start, end) s),
        ``clustering`` (ClusteringConfig), its fields by name (``radius``, ``tot_threshold``,
        ``algorithm`` ...), ``roi``. ValueError names the bad value."""
        window = changes.pop("window", changes.pop("event_window", self.window))
        try:
            window = EventWindow.of(window)
        except ValueError as exc:
            raise ValueError(f"event_window: {exc}") from None
        clustering = changes.pop("clustering", self.clustering)
        cl = {_CLUSTERING_KEYS[k]: changes.pop(k) for k in list(changes) if k in _CLUSTERING_KEYS}
        if cl:
            clustering = clustering.with_(**cl)
        unknown = set(changes) - {"roi"}
        if unknown:
            raise ValueError(f"unknown live settings {sorted(unknown)}; known: window, event_window, clustering, "
                             f"roi, {', '.join(sorted(_CLUSTERING_KEYS))}")
        return replace(self, window=window, clustering=clustering, roi=changes.get("roi", self.roi))

    def to_json(self) -> bytes:
        return json.dumps({"window": list(self.event_window), "clustering": self.clustering.to_attrs(),
                           "roi": list(self.roi)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "LiveValues":
        d = json.loads(data)
        return cls(EventWindow(*d["window"]), ClusteringConfig.from_attrs(d["clustering"]), tuple(d["roi"]))


class LiveSettings:
    """Shared block of :class:`LiveValues` (inherited by forked stages)."""

    def __init__(self, values: LiveValues | None = None) -> None:
        self._raw = mp.RawArray(ctypes.c_uint8, _BLOCK_BYTES)
        self._gen = mp.RawArray(ctypes.c_int64, 2)      # generation, length of the set
        self._views()
        self.publish(values or LiveValues())

    def _views(self) -> None:
        self.array = np.frombuffer(self._raw, np.uint8)
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

    @property
    def version(self) -> int:
        """Version of the latest published set: 1 for the first, +1 per set."""
        return int(self.gen_array[0]) // 2

    def publish(self, values: LiveValues) -> int:
        """Writer: publish a set (the decode stage applies it at its next chunk); returns its
        version."""
        data = values.validate().to_json()
        if len(data) > _BLOCK_BYTES:
            raise ValueError(f"live settings take {len(data)} bytes, the block holds {_BLOCK_BYTES}")
        self.gen_array[0] += 1
        self.array[:len(data)] = np.frombuffer(data, np.uint8)
        self.gen_array[1] = len(data)
        self.gen_array[0] += 1
        return self.version

    def read(self) -> tuple[int, LiveValues]:
        """Reader: (generation, values), never a half-written set."""
        for _ in range(1000):
            g = int(self.gen_array[0])
            if g % 2 == 0:
                n = int(self.gen_array[1])
                data = self.array[:n].tobytes()
                if int(self.gen_array[0]) == g:
                    return g, LiveValues.from_json(data)
            time.sleep(0.0001)
        raise RuntimeError("live settings are being written continuously")


def roi_mask(x: np.ndarray, y: np.ndarray, tof_units: np.ndarray, roi: tuple[float, ...]) -> np.ndarray:
    """Boolean mask of the items inside ``roi`` (x0, y0, x1, y1 px inclusive, tof_min_us,
    tof_max_us inclusive); ``tof_units`` in 25/4096 ns."""
    from ..tpx3.units import UNIT_NS
    x0, y0, x1, y1, t0, t1 = roi
    tof_us = tof_units * (UNIT_NS * 1e-3)
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (tof_us >= t0) & (tof_us <= t1)
