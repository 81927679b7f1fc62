"""AcquisitionController: the Python facade the Tango device wraps.

One controller owns the shared counters and preview (they survive start/stop; only
:meth:`AcquisitionController.reset_counters` zeroes them) and builds a fresh pipeline at
every :meth:`start` from the current settings:

* ``centroiding`` False: :class:`PixelPipeline` with events (decode + ToF, preview with a
  ToF histogram);
* ``centroiding`` True: :class:`CentroidPipeline` with ``centroid_processes`` workers.

Armed operation (what the Tango device uses): :meth:`AcquisitionController.arm` starts the
same pipeline once with gated stages (:mod:`.gated`) and :attr:`AcquisitionController.session`
(:class:`~.session.AcquisitionSession`) runs acquisitions on it without blocking: begin/end,
bounded by detector time or trigger count, per-acquisition counts and preview; live settings
(:meth:`AcquisitionController.set_live`) apply at the next chunk.

Train IDs (European XFEL, :mod:`.controltrain`): :meth:`AcquisitionController.set_train_id_source`
runs a :class:`~tango_tpx.trainid.TrainIdReader` thread (or a
:class:`~tango_tpx.trainid.USBTrainID` process) from then until :meth:`close`, independent
of start/stop. Each accepted frame (host time ns, train ID, beam mode) updates
:attr:`~AcquisitionController.train_id` and the ``train_*`` counters, and while a raw file
is being recorded it is appended to the side file ``<raw>.trainid.csv`` next to it (opened
just after the raw file is open, closed just before the raw file closes, so the side file
holds exactly the frames received while the raw file was recording). An unplugged receiver
is reported in ``train_status`` (``'disconnected: ...'``) and reopened when it is back; the
acquisition goes on meanwhile.

Thread-safe: every public method may be called from any thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .acquisition import CentroidPipeline, PixelPipeline
from .counters import SharedCounters, SharedPreview, tof_bins
from .gated import ArmedCentroidPipeline, ArmedPixelPipeline
from ..processing.settings import ClusteringConfig, DetectorLayout, EventWindow, TimeWalk
from .controlsettings import TypedSettings
from .controltrain import TRAIN_COUNTER_KEYS, TRAIN_HISTORY_FRAMES, TrainIdLink
from .livesettings import LiveSettings, LiveValues
from .session import AcquisitionSession

#: the public counter keys of :meth:`AcquisitionController.counters`.
COUNTER_KEYS = ("datagrams", "bytes", "hits", "triggers", "events", "centroids", "malformed_words",
                "kernel_drops", "lost_triggers", "rcvbuf_bytes", "time")


class AcquisitionController(TypedSettings, TrainIdLink):
    """Live acquisition: UDP receiver, recording, decoding, events, centroids, counters.

    udp_host, udp_port: where the SPIDR (or simulator) sends; layout: a
    :class:`~tango_tpx.processing.settings.DetectorLayout` or its name ('single' | 'quad');
    stream_address: optional ZMQ PUB address (e.g. ``tcp://*:5555``) publishing the results
    (:mod:`tango_tpx.pipeline.messages`); preview_period_s: s per preview frame; window,
    clustering, timewalk: the typed settings (:mod:`tango_tpx.processing.settings`), checked here.

    Settings read at the next :meth:`start` / :meth:`arm`: ``centroid_processes`` (int >= 1),
    ``centroiding`` (bool), :attr:`window` (an ``EventWindow``; also as ``event_window``,
    (min, max) ToF in s), :attr:`clustering` (a ``ClusteringConfig``; its algorithm and ToT
    threshold also as ``clustering_algorithm`` (a registered key: 'fast', 'dbscan' ...) and
    ``tot_threshold`` (ToT counts of 25 ns)), :attr:`timewalk` (a ``TimeWalk``; its tables
    also as ``timewalk_lut`` and ``cent_timewalk_lut``). Each is validated when it is set.
    """

    def __init__(self, udp_host: str = "127.0.0.1", udp_port: int = 8192,
                 layout: str | DetectorLayout = "single", stream_address: str | None = None,
                 preview_period_s: float = 1.0, data_queue: Any = None, *,
                 window: EventWindow | None = None, clustering: ClusteringConfig | None = None,
                 timewalk: TimeWalk | None = None) -> None:
        self.detector = DetectorLayout.of(layout)
        self.udp_host = udp_host
        self.udp_port = int(udp_port)
        self.layout = self.detector.layout
        self.stream_address = stream_address
        self.preview_period_s = float(preview_period_s)
        self.data_queue = data_queue
        self.centroid_processes: int = 1
        self.window: EventWindow = window if window is not None else EventWindow()
        self.centroiding: bool = False
        self.clustering: ClusteringConfig = clustering if clustering is not None else ClusteringConfig()
        self.timewalk: TimeWalk = timewalk if timewalk is not None else TimeWalk()
        self._counters = SharedCounters()
        side = self.detector.frame_size_px
        self._preview = SharedPreview(side, side)
        self._pipeline: PixelPipeline | None = None
        # armed operation (the Tango device): one pipeline kept up, acquisitions behind a gate
        self.live_values = LiveValues(self.window, self.clustering)
        self._live_lock = threading.Lock()
        self.live = LiveSettings(self.live_values)
        self._acq_preview = SharedPreview(side, side)
        self.session = AcquisitionSession(lambda: self._build(armed=True), self._counters, self._acq_preview)
        self.session.on_file_open = lambda path: self._open_side_file(path) if self._train_reader else None
        self.session.on_file_close = lambda: self._close_side_file()
        self._last_fault: str | None = None
        self._longtime: int | None = None
        self._lock = threading.RLock()
        self._init_train_ids()

    # -- run control ----------------------------------------------------------------------
    def _build(self, armed: bool = False) -> PixelPipeline:
        n = int(self.centroid_processes)
        if n < 1:
            raise ValueError(f"centroid_processes must be >= 1, got {n}")
        window, cl = self._window.as_tuple(), self._clustering
        common = dict(layout=self.layout, stream_address=self.stream_address, counters=self._counters,
                      preview=self._preview, preview_period_s=self.preview_period_s,
                      timewalk_lut=self.timewalk_lut)
        address = (self.udp_host, self.udp_port)
        if armed:
            common.update(live=self.live, acq_preview=self._acq_preview)
            self.set_live(window=self._window, clustering=cl)
        if self.centroiding:
            calc = dict(dbscan_clustering=(cl.algorithm == "dbscan"), tot_threshold=cl.tot_threshold,
                        cent_timewalk_lut=self.cent_timewalk_lut)
            if not armed:          # an armed pipeline clusters with the live settings
                calc["clustering_args"] = dict(min_cluster_size=cl.min_cluster_size, radius=cl.radius,
                                               time_window_ns=cl.time_window_ns, epsilon=cl.eps,
                                               min_samples=cl.min_samples, chunk_size_limit=cl.chunk_hits)
            return (ArmedCentroidPipeline if armed else CentroidPipeline)(
                self.data_queue, address, self._longtime, num_processes=n, event_window=window, **calc, **common)
        return (ArmedPixelPipeline if armed else PixelPipeline)(self.data_queue, address, self._longtime, use_event=True,
                                                                  event_window=window, **common)

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
            self._close_side_file()   # the recording ends with the run
            try:
                pipe.stop()
            finally:
                f = pipe.fault()
                if f:
                    self._last_fault = f
                self._pipeline = None

    # -- armed operation ----------------------------------------------------------------------
    def arm(self) -> None:
        """Start the pipeline once for many acquisitions (:attr:`session`); blocking."""
        self.session.arm()

    def disarm(self) -> None:
        """Stop the armed pipeline's processes."""
        self.session.disarm()

    def set_live(self, **changes: Any) -> int:
        """Change live settings (:meth:`~.livesettings.LiveValues.with_`: ``window``,
        ``clustering``, ``roi`` or single fields such as ``radius``); an armed pipeline applies
        them at its next chunk; they are also the :attr:`window` and :attr:`clustering` of the
        next arm / start. Returns the new settings version (every output chunk says which
        version made it). ValueError names a bad value."""
        with self._live_lock:
            values = self.live_values.with_(**changes)
            version = self.live.publish(values)
            self.live_values = values
            self._window, self._clustering = values.window, values.clustering
            return version

    def acquisition_preview(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hit map int32, ToF histogram, ToF axis ns) of the current or last acquisition."""
        return self._acq_preview.read()

    def close(self) -> None:
        """Stop and release everything (the train-ID reader too)."""
        try:
            self.session.disarm()
            self.stop()
        finally:
            with self._lock:
                self._stop_train_reader()

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
            full = self._pipeline.open_file(path)
            if self._train_reader is not None:
                self._open_side_file(full)
            return full

    def close_file(self) -> None:
        """Stop recording (no-op if not recording); returns once the file is closed."""
        with self._lock:
            self._close_side_file()
            if self.running and self._pipeline.recording_file:
                self._pipeline.close_file()

    @property
    def recording_file(self) -> str:
        """Absolute path of the file being recorded, '' if none."""
        p = self._pipeline
        return p.recording_file if p is not None else self.session.recording_file

    # -- monitoring -----------------------------------------------------------------------
    def counters(self) -> dict:
        """Live counters: datagrams, bytes, hits, triggers, events, centroids, malformed_words,
        kernel_drops, lost_triggers, rcvbuf_bytes (ints) and time (monotonic s); the train-ID
        keys :data:`TRAIN_COUNTER_KEYS` (train_id, train_frames, train_errors, train_status
        ...); plus extra keys (recorded_bytes, handoff_dropped_bytes, queue_depths ...)."""
        snap = self._counters.snapshot()
        p = self._pipeline
        if p is not None:
            snap["queue_depths"] = {s.klass.__name__: d for s, d in
                                    zip(p.stages, self._counters.queue_depths(len(p.stages)))}
        snap.update(self.train_counters())
        return snap

    def reset_counters(self) -> None:
        """Zero the pipeline and train-ID counters (train_id, the latest frame, is kept)."""
        self._counters.reset()
        self._reset_train_counters()

    def preview(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hitmap int32 [H, W] hits per pixel, tof_hist float64 counts, tof_axis_ns float64
        bin centres in ns) of the last complete preview period."""
        return self._preview.read()

    def fault(self) -> str | None:
        """Why the pipeline is broken (dead stage and its exception, disk full ...), or None."""
        if self.session.armed:
            return self.session.fault()
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


__all__ = ["COUNTER_KEYS", "TRAIN_COUNTER_KEYS", "TRAIN_HISTORY_FRAMES", "AcquisitionController"]
