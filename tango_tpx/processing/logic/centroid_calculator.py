"""pymepix's ``CentroidCalculator``: events ``(trigger nr, x, y, tof s, tot ns)`` -> centroids.

``process(data)`` returns a float64 array of shape (7, N): trigger nr, x, y (ToT-weighted
mean, pixels), tof (ToT-weighted mean, s), tot avg (ns), tot max (ns), cluster size; or
None when there is no cluster (as pymepix). The work is done by
:class:`tango_tpx.processing.centroids.CentroidCalculator` on exact integer times.

``clustering_args`` (pymepix keys; the dict is not modified):

=======================  ====================================================================
key                      meaning here
=======================  ====================================================================
``epsilon``              DBSCAN eps (default 2.0)
``min_samples``          DBSCAN min_samples (default 3)
``tot_threshold``        keep hits with ToT > this, **ns** as pymepix (default 0)
``triggers_processed``   centroid every n-th trigger of a batch (default 1)
``chunk_size_limit``     DBSCAN runs on chunks of whole triggers of about this many hits
``cs_min_cluster_size``  fast clustering: smallest cluster kept (default 3)
``cs_max_dist_tof``      fast clustering: largest time gap between touching hits, s
                         (pymepix's default 5e-8; tango-tpx's live default 2e-7)
``cs_sensor_size``       accepted when 256 (one chip) or 516 (quad): the pixel map is sized
                         from the data
``cs_tot_offset``        refused unless 0.5 (pymepix's default): the fast clustering links
                         hits by position and time only, ToT does not order them
=======================  ====================================================================

``dbscan_clustering`` (default True, pymepix's DBSCAN) or False: the fast connected-components
clustering (``cs_*`` keys), which the live pipelines use by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..centroids import DBSCAN_CHUNK_HITS, DBSCAN_EPS, DBSCAN_MIN_SAMPLES
from ..centroids import CentroidCalculator as _Native
from ..clustering import DEFAULT_TIME_WINDOW_NS
from ..shapes import TOT_NS, UNIT_S, centroid_array

KNOWN_ARGS = ("epsilon", "min_samples", "tot_threshold", "triggers_processed", "chunk_size_limit",
              "cs_sensor_size", "cs_min_cluster_size", "cs_max_dist_tof", "cs_tot_offset")
SENSOR_SIZES = (256, 516)


class CentroidCalculator:
    """See the module doc. cent_timewalk_lut: centroid time-walk table, ns per ToT bin;
    number_of_processes: workers for large batches (output identical for any): threads for
    the fast clustering (``dbscan_clustering=False``), processes for DBSCAN."""

    def __init__(self, cent_timewalk_lut: Any = None, number_of_processes: int = 1,
                 clustering_args: dict = {}, dbscan_clustering: bool = True) -> None:  # noqa: B006
        args = dict(clustering_args or {})
        unknown = sorted(set(args) - set(KNOWN_ARGS))
        if unknown:
            raise ValueError(f"unknown clustering_args {unknown}; known: {list(KNOWN_ARGS)}")
        self.cent_timewalk_lut = cent_timewalk_lut
        self.number_of_processes = number_of_processes
        self.dbscan_clustering = dbscan_clustering
        self.epsilon = args.get("epsilon", DBSCAN_EPS)
        self.min_samples = args.get("min_samples", DBSCAN_MIN_SAMPLES)
        self.tot_threshold = args.get("tot_threshold", 0)
        self.triggers_processed = args.get("triggers_processed", 1)
        self.chunk_size_limit = args.get("chunk_size_limit", DBSCAN_CHUNK_HITS)
        self.cs_sensor_size = args.get("cs_sensor_size", 256)
        self.cs_min_cluster_size = args.get("cs_min_cluster_size", 3)
        self.cs_max_dist_tof = args.get("cs_max_dist_tof", DEFAULT_TIME_WINDOW_NS * 1e-9)
        self.cs_tot_offset = args.get("cs_tot_offset", 0.5)
        self._calc: _Native | None = None

    # -- settings (validated when set) -----------------------------------------------------
    def _set(self, name: str, value: Any) -> None:
        self.__dict__[name] = value
        self._calc = None            # rebuilt with the new settings at the next batch

    def _positive(self, name: str, value: Any, kind=int) -> None:
        v = kind(value)
        if v <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
        self._set("_" + name, v)

    epsilon = property(lambda self: self._epsilon, lambda self, v: self._positive("epsilon", v, float),
                       doc="DBSCAN eps (pixels; ToF scaled by 1.7e7 per s)")
    min_samples = property(lambda self: self._min_samples, lambda self, v: self._positive("min_samples", v),
                           doc="DBSCAN min_samples")
    triggers_processed = property(lambda self: self._triggers_processed,
                                  lambda self, v: self._positive("triggers_processed", v),
                                  doc="centroid every n-th trigger of a batch")
    chunk_size_limit = property(lambda self: self._chunk_size_limit,
                                lambda self, v: self._positive("chunk_size_limit", v),
                                doc="DBSCAN chunk size, hits")
    cs_min_cluster_size = property(lambda self: self._cs_min_cluster_size,
                                   lambda self, v: self._positive("cs_min_cluster_size", v),
                                   doc="fast clustering: smallest cluster kept, hits")
    cs_max_dist_tof = property(lambda self: self._cs_max_dist_tof,
                               lambda self, v: self._positive("cs_max_dist_tof", v, float),
                               doc="fast clustering: largest time gap between touching hits, s")

    @property
    def tot_threshold(self) -> float:
        """Keep hits with ToT > this, ns."""
        return self._tot_threshold

    @tot_threshold.setter
    def tot_threshold(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"tot_threshold must be >= 0 ns, got {value!r}")
        self._set("_tot_threshold", value)

    @property
    def cs_sensor_size(self) -> int:
        """Sensor side in pixels (256 or 516); the clustering sizes its map from the data."""
        return self._cs_sensor_size

    @cs_sensor_size.setter
    def cs_sensor_size(self, value: int) -> None:
        if value not in SENSOR_SIZES:
            raise ValueError(f"cs_sensor_size must be 256 (one chip) or 516 (quad), got {value!r}")
        self._set("_cs_sensor_size", int(value))

    @property
    def cs_tot_offset(self) -> float:
        """pymepix's cluster-stream ToT ordering factor: only 0.5 is accepted (see the module doc)."""
        return self._cs_tot_offset

    @cs_tot_offset.setter
    def cs_tot_offset(self, value: float) -> None:
        if float(value) != 0.5:
            raise ValueError("cs_tot_offset has no counterpart in the fast clustering (hits are linked by "
                             f"position and time, not ordered by ToT): only 0.5 is accepted, got {value!r}")
        self._set("_cs_tot_offset", 0.5)

    @property
    def dbscan_clustering(self) -> bool:
        """pymepix's DBSCAN (True) or the fast connected-components clustering (False)."""
        return self._dbscan

    @dbscan_clustering.setter
    def dbscan_clustering(self, value: bool) -> None:
        self._set("_dbscan", bool(value))

    @property
    def number_of_processes(self) -> int:
        """Worker processes for large batches (the output does not depend on it)."""
        return self._nproc

    @number_of_processes.setter
    def number_of_processes(self, value: int) -> None:
        if int(value) != value or value < 1:
            raise ValueError(f"number_of_processes must be an integer >= 1, got {value!r}")
        self._set("_nproc", int(value))

    # -- processing ----------------------------------------------------------------------
    def native(self) -> _Native:
        """A :class:`tango_tpx.processing.centroids.CentroidCalculator` with these settings
        (it takes typed ``Events`` with times in 25/4096 ns and ToT in counts)."""
        return _Native(
            cent_timewalk_lut=self.cent_timewalk_lut, number_of_processes=self._nproc,
            dbscan_clustering=self._dbscan, tot_threshold=int(self._tot_threshold // TOT_NS),
            min_cluster_size=self._cs_min_cluster_size if not self._dbscan else None,
            time_window_ns=self._cs_max_dist_tof * 1e9,
            clustering_args={"epsilon": self._epsilon, "min_samples": self._min_samples,
                             "triggers_processed": self._triggers_processed,
                             "chunk_size_limit": self._chunk_size_limit})

    def pre_process(self) -> None:
        """pymepix hook (nothing to prepare)."""

    def post_process(self) -> None:
        """pymepix hook: stop the worker processes."""
        if self._calc is not None:
            self._calc.close()

    def process(self, data: Any) -> np.ndarray | None:
        """``(trigger nr, x, y, tof s, tot ns)`` -> float64 (7, N), or None (no cluster)."""
        if data is None:
            return None
        try:
            shot, x, y, tof, tot = (np.asarray(a) for a in data)
        except (TypeError, ValueError):
            raise TypeError("data must be (trigger nr, x, y, tof [s], tot [ns]) arrays") from None
        events = {"trigger_nr": shot.astype(np.int64), "x": x.astype(np.uint16), "y": y.astype(np.uint16),
                  "tof": np.rint(np.asarray(tof, np.float64) / UNIT_S).astype(np.int64),
                  "tot": np.rint(np.asarray(tot, np.float64) / TOT_NS).astype(np.uint16)}
        if self._calc is None:
            self._calc = self.native()
        cents = self._calc.process(events)
        return centroid_array(cents) if len(cents) else None


__all__ = ["CentroidCalculator", "KNOWN_ARGS"]
