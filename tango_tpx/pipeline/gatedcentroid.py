"""The centroid worker of the armed pipeline: :class:`GatedCentroidCalculator`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..processing.centroids import RegisteredCalculator
from ..processing.settings import ClusteringConfig
from .centroid import PipelineCentroidCalculator
from .livesettings import META_CLUSTERING, META_SETTINGS_VERSION, LiveSettings, roi_mask
from .messages import MessageType


class GatedCentroidCalculator(PipelineCentroidCalculator):
    """Centroid worker of the armed pipeline: clusters each chunk with the clustering
    settings the chunk carries (the version the decode stage used, see :mod:`.livesettings`),
    counts the centroids inside the live region of interest and tags its output with the
    chunk's settings version."""

    def __init__(self, *args: Any, live: LiveSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live = live

    def pre_run(self) -> None:
        super().pre_run()
        self._live_gen = -1
        self._roi = (0.0, 0.0, 1e9, 1e9, 0.0, 1e12)
        self._cl_cache: dict[int, RegisteredCalculator] = {}

    def _calculator_of(self, meta: dict) -> RegisteredCalculator | None:
        """The calculator of the chunk's settings version (None: the chunk carries none)."""
        attrs = meta.get(META_CLUSTERING)
        if attrs is None:
            return None
        sv = int(meta.get(META_SETTINGS_VERSION, -1))
        calc = self._cl_cache.get(sv)
        if calc is None:
            calc = RegisteredCalculator(ClusteringConfig.from_attrs(attrs), self.centroid_calculator.cent_timewalk_lut)
            self._cl_cache = {sv: calc}                 # versions only grow: keep the latest
        return calc

    def process(self, data_type=None, data=None):
        if data_type != MessageType.EventData:
            return None
        if self.live is not None and self.live.generation != self._live_gen:
            self._live_gen, v = self.live.read()
            self._roi = v.roi
        meta = self.current_meta
        w = self.wiring
        cents = (self._calculator_of(meta) or self.centroid_calculator).process(data)
        n_roi = int(np.count_nonzero(roi_mask(cents.x, cents.y, cents.tof, self._roi))) if len(cents) else 0
        w.counters.worker_add(w.worker_index, "roi_centroids", n_roi)
        w.counters.worker_add(w.worker_index, "hits_in", len(data))
        w.counters.worker_add(w.worker_index, "centroids", len(cents))
        out_meta = {META_SETTINGS_VERSION: meta[META_SETTINGS_VERSION]} if META_SETTINGS_VERSION in meta else None
        self.pushOutput(MessageType.CentroidData, cents, seq=self.current_seq, meta=out_meta)
        w.counters.worker_add(w.worker_index, "chunks_in", 1)     # last: "drained" means done
        return None
