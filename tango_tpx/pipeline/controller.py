"""AcquisitionController: the Python facade the Tango device wraps.

One controller owns the shared counters and preview (they survive start/stop; only
:meth:`AcquisitionController.reset_counters` zeroes them) and builds a fresh pipeline at
every :meth:`start` from the current settings:

* ``centroiding`` False: :class:`PixelPipeline` with events (decode + ToF, preview with a
  ToF histogram);
* ``centroiding`` True: :class:`CentroidPipeline` with ``centroid_processes`` workers.

Thread-safe: every public method may be called from any thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .acquisition import CentroidPipeline, PixelPipeline
from .counters import SharedCounters, SharedPreview, tof_bins

#: the public counter keys of :meth:`AcquisitionController.counters`.
COUNTER_KEYS = ("datagrams", "bytes", "hits", "triggers", "events", "centroids", "malformed_words",
                "kernel_drops", "lost_triggers", "rcvbuf_bytes", "time")


class AcquisitionController:
    """Live acquisition: UDP receiver, recording, decoding, events, centroids, counters.

    udp_host, udp_port: where the SPIDR (or simulator) sends; layout: 'single' | 'quad';
    stream_address: optional ZMQ PUB address (e.g. ``tcp://*:5555``) publishing the results
    (:mod:`tango_tpx.pipeline.messages`); preview_period_s: s per preview frame.

    Settings read at the next :meth:`start`: ``centroid_processes`` (int >= 1),
    ``event_window`` ((min, max) ToF in s), ``centroiding`` (bool), ``clustering_algorithm``
    ('fast' | 'dbscan'), ``tot_threshold`` (ToT counts of 25 ns).
    """

    def __init__(self, udp_host: str = "127.0.0.1", udp_port: int = 8192, layout: str = "single",
                 stream_address: str | None = None, preview_period_s: float = 1.0,
                 data_queue: Any = None) -> None:
        if layout not in ("single", "quad"):
            raise ValueError(f"layout must be 'single' or 'quad', not {layout!r}")
        self.udp_host = udp_host
        self.udp_port = int(udp_port)
        self.layout = layout
        self.stream_address = stream_address
        self.preview_period_s = float(preview_period_s)
        self.data_queue = data_queue
        self.centroid_processes: int = 1
        self.event_window: tuple[float, float] = (0.0, 1e-3)
        self.centroiding: bool = False
        self.clustering_algorithm: str = "fast"
        self.tot_threshold: int = 0
        self.timewalk_lut = None
        self.cent_timewalk_lut = None
        self._counters = SharedCounters()
        side = 516 if layout == "quad" else 256
        self._preview = SharedPreview(side, side)
        self._pipeline: PixelPipeline | None = None
        self._last_fault: str | None = None
        self._longtime: int | None = None
        self._lock = threading.RLock()

    # -- run control ----------------------------------------------------------------------
    def _build(self) -> PixelPipeline:
        algo = str(self.clustering_algorithm).lower()
        if algo not in ("fast", "dbscan"):
            raise ValueError(f"clustering_algorithm must be 'fast' or 'dbscan', not {self.clustering_algorithm!r}")
        n = int(self.centroid_processes)
        if n < 1:
            raise ValueError(f"centroid_processes must be >= 1, got {n}")
        lo, hi = (float(v) for v in self.event_window)
        if not (0 <= lo <= hi):
            raise ValueError(f"event_window must satisfy 0 <= min <= max (s), got {self.event_window}")
        common = dict(layout=self.layout, stream_address=self.stream_address, counters=self._counters,
                      preview=self._preview, preview_period_s=self.preview_period_s,
                      timewalk_lut=self.timewalk_lut)
        address = (self.udp_host, self.udp_port)
        if self.centroiding:
            return CentroidPipeline(self.data_queue, address, self._longtime, num_processes=n,
                                    dbscan_clustering=(algo == "dbscan"), tot_threshold=int(self.tot_threshold),
                                    cent_timewalk_lut=self.cent_timewalk_lut, event_window=(lo, hi), **common)
        return PixelPipeline(self.data_queue, address, self._longtime, use_event=True,
                             event_window=(lo, hi), **common)

    def start(self) -> None:
        """Start acquiring (no-op if running). OSError naming the port if it cannot bind."""
        with self._lock:
            if self.running:
                return
            self._last_fault = None
            pipe = self._build()
            # a fresh, empty preview with this run's ToF axis until the first frame
            self._preview.publish(np.zeros(self._preview.shape, np.int32),
                                  np.zeros(self._preview.n_tof_bins),
                                  tof_bins(tuple(self.event_window), self._preview.n_tof_bins)[2])
            pipe.start()
            self._pipeline = pipe

    def stop(self) -> None:
        """Stop acquiring; closes any recording. Always returns within 5 s."""
        with self._lock:
            pipe = self._pipeline
            if pipe is None:
                return
            try:
                pipe.stop()
            finally:
                f = pipe.fault()
                if f:
                    self._last_fault = f
                self._pipeline = None

    def close(self) -> None:
        """Stop and release everything."""
        self.stop()

    def __enter__(self) -> "AcquisitionController":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        p = self._pipeline
        return bool(p is not None and p.isRunning)

    # -- recording ------------------------------------------------------------------------
    def open_file(self, path: str) -> str:
        """Record the raw stream to ``path`` (pymepix .raw with header) from now on; returns
        the absolute path. FileExistsError if it exists; RuntimeError if not running."""
        with self._lock:
            path = os.path.abspath(os.fspath(path))
            if os.path.exists(path):
                raise FileExistsError(17, f"refusing to overwrite {path}", path)
            if not self.running:
                raise RuntimeError("cannot record: the acquisition is not running")
            return self._pipeline.open_file(path)

    def close_file(self) -> None:
        """Stop recording (no-op if not recording); returns once the file is closed."""
        with self._lock:
            if self.running and self._pipeline.recording_file:
                self._pipeline.close_file()

    @property
    def recording_file(self) -> str:
        """Absolute path of the file being recorded, '' if none."""
        p = self._pipeline
        return p.recording_file if p is not None else ""

    # -- monitoring -----------------------------------------------------------------------
    def counters(self) -> dict:
        """Live counters: datagrams, bytes, hits, triggers, events, centroids, malformed_words,
        kernel_drops, lost_triggers, rcvbuf_bytes (ints) and time (monotonic s); plus extra
        keys (recorded_bytes, handoff_dropped_bytes, queue_depths ...)."""
        snap = self._counters.snapshot()
        p = self._pipeline
        if p is not None:
            snap["queue_depths"] = {s.klass.__name__: d for s, d in
                                    zip(p.stages, self._counters.queue_depths(len(p.stages)))}
        return snap

    def reset_counters(self) -> None:
        self._counters.reset()

    def preview(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hitmap int32 [H, W] hits per pixel, tof_hist float64 counts, tof_axis_ns float64
        bin centres in ns) of the last complete preview period."""
        return self._preview.read()

    def fault(self) -> str | None:
        """Why the pipeline is broken (dead stage and its exception, disk full ...), or None."""
        p = self._pipeline
        if p is not None:
            f = p.fault()
            if f:
                self._last_fault = f
            return f
        return self._last_fault

    def set_longtime(self, ticks_25ns: int) -> None:
        """Anchor the time extension on a 48-bit SPIDR global time (25 ns ticks)."""
        self._longtime = int(ticks_25ns)
        p = self._pipeline
        if p is not None:
            p.set_longtime(ticks_25ns)

    def set_train_id_source(self, source: Any) -> None:
        """Reserved: train-ID tagging (issue 7)."""
        raise NotImplementedError("train ID source not wired yet")
