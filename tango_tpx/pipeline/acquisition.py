"""Acquisition pipelines (pymepix names): AcquisitionPipeline, PixelPipeline, CentroidPipeline.

Process layout of one run (every box a process, arrows ZeroMQ PUSH->PULL over ipc://)::

    UdpSampler --RawData--> PipelinePacketProcessor --EventData--> PipelineCentroidCalculator x N
        |  (Raw2Disk thread)          |  PixelData / TriggerData                 |  CentroidData
        +-----------------------------+------------------> collector thread (in the caller's
                                                           process): re-orders CentroidData by
                                                           sequence number, puts (MessageType, data)
                                                           on ``data_queue`` and publishes on PUB

Bulk data avoids the sockets where it can (:mod:`.shmring`): the UDP receiver receives into
slots of a shared-memory ring that the decoder reads in place (only the slot number
travels over ZeroMQ), and the decoder copies ``EventData`` into slots of a second ring
read by the centroid workers; a message that does not fit, or finds every slot in use,
goes as ZeroMQ frames instead. Measured on the 2-core test machine (benchmarks/live.py,
20 s steps, sender on the same machine): PixelPipeline with recording lossless at
100 Mhits/s, CentroidPipeline with 2 workers at 20 Mhits/s.

Data goes to the collector only when somebody wants it (``data_queue`` given or a PUB
``stream_address``); otherwise stages only count. Stop: the pipeline raises the shared
DRAIN flag; the sampler hands off its last chunk, closes the recording and sends an
end-of-stream marker, which each stage forwards after flushing; whatever has not ended
3.5 s later is forced (flag, SIGTERM, SIGKILL), so :meth:`AcquisitionPipeline.stop` always
returns within 5 s. A stage that raises reports its traceback; a stage that vanishes is
found by its exit code; both show in :meth:`AcquisitionPipeline.fault`.

Parts: :mod:`.reports` (stage reports, the receiver's command channel), :mod:`.teardown`
(drain and stop); this module wires and starts the stages and holds the pymepix classes.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import threading
from typing import Any

import zmq

from ..tpx3.codec import stream_framing
from . import transport
from .baseplugin import StageWiring
from .centroid import PipelineCentroidCalculator
from .collector import Collector as _Collector
from .counters import CTRL_DRAIN, CTRL_FORCE, SharedCounters, SharedPreview
from .messages import MessageType
from .packetprocessor import PipelinePacketProcessor
from .reports import READY_TIMEOUT_S, StageReports
from .shmring import MsgRing, RawRing
from .stage import AcquisitionStage
from .teardown import DRAIN_S, PUB_LINGER_MS, PipelineTeardown
from .udpsampler import DEFAULT_CHUNK_BYTES, MAX_DATAGRAM, UdpSampler

DATA_TYPES = frozenset({MessageType.PixelData, MessageType.TriggerData, MessageType.EventData,
                        MessageType.CentroidData})
#: stage classes whose kernels this process has loaded (see BasePipelineObject.warm_up)
_warm: set = set()
#: slots of the shared raw ring between the UDP receiver and the decoder (each one chunk,
#: ~4 MiB: 64 slots buffer ~0.4 s of a full chip; pages are only used once touched)
RAW_RING_SLOTS = 64
#: shared message ring towards multi-process consumers (EventData -> centroid workers):
#: slots of 16 MiB hold the events of one 4 MiB raw chunk (30 bytes per hit); larger
#: messages, or any when all slots are in use, go as ZeroMQ frames.
MSG_RING_SLOTS = 16
MSG_RING_SLOT_BYTES = 16 << 20

__all__ = ["AcquisitionPipeline", "PixelPipeline", "CentroidPipeline", "DATA_TYPES", "READY_TIMEOUT_S",
           "DRAIN_S", "PUB_LINGER_MS", "RAW_RING_SLOTS", "MSG_RING_SLOTS", "MSG_RING_SLOT_BYTES"]


class AcquisitionPipeline(StageReports, PipelineTeardown):
    """A chain of :class:`AcquisitionStage` s run as processes (pymepix API).

    name: label; data_queue: where ``(MessageType, data)`` results go (anything with
    ``put``), or None. Extras: ``stream_address`` (bind a ZMQ PUB there and publish the
    results, see :mod:`tango_tpx.pipeline.messages`), ``counters``/``preview`` (shared
    objects to use instead of private ones), ``typed_records``: True (default here) puts
    the typed zero-copy records on ``data_queue`` and sends each message to the stage
    that consumes it only; False (the default of the :mod:`tango_tpx.processing`
    classes) converts them to pymepix's tuples and units (:mod:`tango_tpx.processing.shapes`)
    and, as pymepix's stages do, passes every message on to ``data_queue``.

    Stages: the built-in (zero-copy) stages come first; custom pymepix-style stages
    (queue mode, see :class:`~.baseplugin.BasePipelineObject`) run after them, fed with
    what the built-in stages deliver, and the last one pushes to ``data_queue``.
    """

    def __init__(self, name: str, data_queue: Any = None, *, stream_address: str | None = None,
                 counters: SharedCounters | None = None, preview: SharedPreview | None = None,
                 typed_records: bool = True) -> None:
        self.name = name
        self._data_queue = data_queue
        self.typed_records = bool(typed_records)
        self._user_queue: Any = None
        self._stages: list[AcquisitionStage] = []
        self._running = False
        self.stream_address = stream_address
        self.counters = counters if counters is not None else SharedCounters()
        self.preview_shared = preview if preview is not None else SharedPreview()
        self._lock = threading.RLock()
        self._reports_lock = threading.Lock()
        self._errors: list[str] = []
        self._error_info: list[tuple] = []
        self._faults: list[str] = []
        self._replies: dict[int, tuple] = {}
        self._cid = itertools.count(1)
        self._stopping = False
        self._collector: _Collector | None = None
        self._pub_ctx: zmq.Context | None = None
        self._pub: zmq.Socket | None = None
        self._run_dir: str | None = None
        self.recording_file = ""
        self._rings: list[RawRing] = []

    # -- pymepix API ----------------------------------------------------------------------
    def addStage(self, stage_number: int, pipeline_klass: type, *args: Any, num_processes: int = 1,
                 **kwargs: Any) -> AcquisitionStage:
        """Add a stage running ``pipeline_klass(*args, **kwargs)`` in ``num_processes`` processes."""
        stage = AcquisitionStage(stage_number, num_processes)
        stage.configureStage(pipeline_klass, *args, **kwargs)
        self._stages = sorted([s for s in self._stages if s.stage != stage_number] + [stage],
                              key=lambda s: s.stage)
        return stage

    def getStage(self, stage_number: int) -> AcquisitionStage | None:
        for s in self._stages:
            if s.stage == stage_number:
                return s
        return None

    @property
    def stages(self) -> list[AcquisitionStage]:
        return self._stages

    @property
    def isRunning(self) -> bool:
        return self._running

    # -- start ----------------------------------------------------------------------------
    def _split_stages(self) -> tuple[list[AcquisitionStage], list[AcquisitionStage]]:
        """(built-in zero-copy stages, custom queue-mode stages); ValueError if a built-in
        stage follows a custom one or a custom stage would get raw UDP chunks."""
        native = [s for s in self._stages if s.zero_copy]
        custom = [s for s in self._stages if not s.zero_copy]
        if native and custom:
            first_custom = min(s.stage for s in custom)
            late = [s for s in native if s.stage > first_custom]
            if late:
                raise ValueError(
                    f"stage {late[0].stage} ({late[0].klass.__name__}) cannot run after the custom stage "
                    f"{first_custom}: custom stages come after the built-in ones")
            if getattr(native[-1].klass, "uses_raw_ring", False):
                raise ValueError(f"custom stage {first_custom} would receive raw UDP chunks: add a "
                                 "PipelinePacketProcessor stage between the receiver and it")
        return native, custom

    def _wire(self, native: list[AcquisitionStage], wants: bool) -> None:
        run = self._run_dir
        inputs: list[list[str]] = []
        for i, s in enumerate(native):
            if i == 0:
                inputs.append([])
            elif s.numProcess == 1:
                inputs.append([transport.ipc_address(run, f"s{i}")])
            else:
                inputs.append([transport.ipc_address(run, f"s{i}-{k}") for k in range(s.numProcess)])
        collector = transport.ipc_address(run, "collector")
        self._rings = []
        settings: list[dict] = [{} for _ in native]
        for i, s in enumerate(native[:-1]):
            nxt = native[i + 1]
            if getattr(s.klass, "uses_raw_ring", False) and getattr(nxt.klass, "raw_ring_ok", False):
                chunk = max(MAX_DATAGRAM, int(s._kwargs.get("chunk_bytes", DEFAULT_CHUNK_BYTES)))
                ring = RawRing(RAW_RING_SLOTS, chunk + MAX_DATAGRAM)
                self._rings.append(ring)
                settings[i]["raw_ring"] = settings[i + 1]["raw_ring"] = ring
            elif getattr(nxt.klass, "msg_ring_ok", False):
                ring = MsgRing(MSG_RING_SLOTS, MSG_RING_SLOT_BYTES)
                self._rings.append(ring)
                settings[i]["out_ring"] = settings[i + 1]["in_ring"] = ring
        for i, s in enumerate(native):
            nxt = native[i + 1] if i + 1 < len(native) else None
            down_types = frozenset(nxt.klass.accepts) if nxt is not None else frozenset()
            if not wants:
                forward = frozenset()
            elif self.typed_records:
                forward = DATA_TYPES - down_types
            else:                       # pymepix: every stage passes its input on
                forward = DATA_TYPES
            s.wirings = [StageWiring(
                counters=self.counters, preview=self.preview_shared, parent_pid=os.getpid(),
                input_address=inputs[i][k] if inputs[i] else None,
                expected_eos=native[i - 1].numProcess if i else 0,
                down_addresses=list(inputs[i + 1]) if nxt is not None else [],
                down_types=down_types, collector_address=collector, forward_types=forward,
                stage_slot=i, next_slot=i + 1, worker_index=k, settings=settings[i],
                # every slot of a raw ring may be in flight: ZeroMQ must not refuse them
                down_hwm=(RAW_RING_SLOTS + transport.DEFAULT_HWM) if "raw_ring" in settings[i] else None,
            ) for k in range(s.numProcess)]
        self._collector_address = collector

    def _converter(self) -> Any:
        if self.typed_records:
            return None
        from ..processing.shapes import to_pymepix
        return to_pymepix

    def start(self) -> None:
        """Build and start every stage; returns once all report ready.

        Raises OSError (naming the UDP address) if the receiver cannot bind, ValueError for
        an impossible stage order, RuntimeError if a stage fails to start, or whatever the
        first failing stage constructor raised. A failed start leaves nothing behind (no
        process, socket or shared memory).
        """
        with self._lock:
            if self._running:
                return
            self._errors, self._faults, self._replies, self._error_info = [], [], {}, []
            self._stopping = False
            self.counters.ctrl[CTRL_DRAIN] = 0
            self.counters.ctrl[CTRL_FORCE] = 0
            native, custom = self._split_stages()
            self._collector = None
            self._run_dir = transport.make_run_dir()
            try:
                if self.stream_address:
                    self._pub_ctx = zmq.Context()
                    self._pub = self._pub_ctx.socket(zmq.PUB)
                    self._pub.setsockopt(zmq.LINGER, 0)
                    self._pub.setsockopt(zmq.SNDHWM, 1000)
                    self._pub.bind(self.stream_address)
                # custom stages: pymepix queues; the first one reads what the collector delivers
                self._user_queue = mp.Queue() if (custom and native) else None
                prev_out = self._user_queue
                for i, s in enumerate(custom):
                    last = i == len(custom) - 1
                    out = (self._data_queue if self._data_queue is not None else []) if last else None
                    s.build(input_queue=prev_out, output_queue=out)
                    prev_out = s.outputQueue
                if native:
                    wants = bool(self._data_queue is not None or self._pub is not None or custom)
                    self._wire(native, wants)
                    n_proc = sum(s.numProcess for s in native)
                    target = self._user_queue if custom else self._data_queue
                    self._collector = _Collector(self._collector_address, n_proc, target, self._pub,
                                                 self.counters, convert=self._converter(),
                                                 end_marker=bool(custom))
                    self._collector.start()
                    self._collector.ready.wait(5.0)
                for s in native:
                    if s.klass not in _warm:
                        s.klass.warm_up()
                        _warm.add(s.klass)
                    s.build()
                    for p in s.processes:
                        if isinstance(p, UdpSampler):
                            p._cmd_sender = self._command_sampler
                # downstream first so that their inputs exist before data flows
                for s in reversed(self._stages):
                    s.start()
                self._running = True
                self._wait_ready()
            except BaseException:
                try:
                    self._teardown(force=True)
                except Exception:  # the first error is the one to report
                    pass
                raise

    def open_file(self, path: str) -> str:
        """Start recording the raw stream to ``path`` (pymepix .raw with header); returns
        the absolute path. FileExistsError if it exists. Switching files loses no byte."""
        with self._lock:
            path = os.path.abspath(path)
            if os.path.exists(path):
                raise FileExistsError(17, f"refusing to overwrite {path}")
            if not self._running:
                raise RuntimeError("the acquisition is not running")
            result = self._sampler()[0].open_file(path)
            self.recording_file = result
            return result

    def close_file(self) -> tuple[str, int]:
        """Stop recording; returns (path, payload bytes written) once the file is closed."""
        with self._lock:
            if not self._running:
                self.recording_file = ""
                return ("", 0)
            result = self._command_sampler("close", None)
            self._sampler()[0]._recording_path = ""
            self.recording_file = ""
            return tuple(result)

    def set_longtime(self, ticks_25ns: int) -> None:
        """Re-anchor the decoder's time extension on a 48-bit global time (25 ns ticks),
        e.g. read from the SPIDR timer."""
        from .counters import CTRL_LONGTIME, CTRL_LONGTIME_GEN
        self.counters.ctrl[CTRL_LONGTIME] = int(ticks_25ns)
        self.counters.ctrl[CTRL_LONGTIME_GEN] += 1


class PixelPipeline(AcquisitionPipeline):
    """UDP receiver + decoder (pymepix): ``PixelData``/``TriggerData`` or, with
    ``use_event``, ``EventData``/``TriggerData`` on ``data_queue``.

    address: (host, port) to receive on; longtime: initial 48-bit global time (25 ns
    ticks) or a ``multiprocessing.Value`` holding it, or None; event_window: (min, max)
    ToF in s. Keyword extras: layout ('single' | 'quad'), stream_address, counters,
    preview, preview_period_s, timewalk_lut, chunk_bytes, flush_timeout, rcvbuf_bytes,
    typed_records (see :class:`AcquisitionPipeline`; the pymepix-shaped subclass is
    :class:`tango_tpx.processing.acquisition.PixelPipeline`).
    Settings take effect at the next :meth:`start`.
    """

    def __init__(self, data_queue: Any, address: tuple[str, int], longtime: Any = None,
                 use_event: bool = False, name: str = "Pixel", event_window: tuple[float, float] = (0, 0.001),
                 *, layout: str = "single", stream_address: str | None = None,
                 counters: SharedCounters | None = None, preview: SharedPreview | None = None,
                 preview_period_s: float = 1.0, timewalk_lut: Any = None, chunk_bytes: int = 4 << 20,
                 flush_timeout: float = 0.3, rcvbuf_bytes: int = 256 << 20,
                 typed_records: bool = True) -> None:
        if preview is None:
            side = 516 if layout == "quad" else 256
            preview = SharedPreview(side, side)
        super().__init__(name, data_queue, stream_address=stream_address, counters=counters, preview=preview,
                         typed_records=typed_records)
        self.address = address
        self.longtime = longtime
        self._use_events = bool(use_event)
        self._event_window = (float(event_window[0]), float(event_window[1]))
        self.layout = layout
        self.preview_period_s = preview_period_s
        self.timewalk_lut = timewalk_lut
        self.addStage(0, UdpSampler, address, flush_timeout=flush_timeout,
                      chunk_bytes=chunk_bytes, rcvbuf_bytes=rcvbuf_bytes)
        self.addStage(2, PipelinePacketProcessor)
        self._reconfigureProcessor()

    def _reconfigureProcessor(self) -> None:
        self.getStage(2).configureStage(
            PipelinePacketProcessor, use_events=self._use_events, event_window=self._event_window,
            timewalk_lut=self.timewalk_lut, layout=self.layout, framing=stream_framing(self.layout),
            longtime=self.longtime, preview_period_s=self.preview_period_s)

    @property
    def enableEvents(self) -> bool:
        """Compute events/ToF (True) or pass pixels (False); takes effect at the next start."""
        return self._use_events

    @enableEvents.setter
    def enableEvents(self, value: bool) -> None:
        self._use_events = bool(value)
        self._reconfigureProcessor()

    @property
    def eventWindow(self) -> tuple[float, float]:
        """(min, max) ToF window in s; takes effect at the next start."""
        return self._event_window

    @eventWindow.setter
    def eventWindow(self, value: tuple[float, float]) -> None:
        self._event_window = (float(value[0]), float(value[1]))
        self._reconfigureProcessor()


class CentroidPipeline(PixelPipeline):
    """PixelPipeline + centroiding in :attr:`numBlobProcesses` worker processes (pymepix);
    ``CentroidData`` (re-ordered) and ``TriggerData`` on ``data_queue``.

    Keyword extras as :class:`PixelPipeline` plus num_processes (centroid workers),
    dbscan_clustering, tot_threshold (ToT counts), cent_timewalk_lut, clustering_args.
    """

    def __init__(self, data_queue: Any, address: tuple[str, int], longtime: Any = None, *,
                 num_processes: int = 1, dbscan_clustering: bool = False, tot_threshold: int = 0,
                 cent_timewalk_lut: Any = None, clustering_args: dict | None = None,
                 event_window: tuple[float, float] = (0, 0.001), **kwargs: Any) -> None:
        super().__init__(data_queue, address, longtime, use_event=True, name="Centroid",
                         event_window=event_window, **kwargs)
        self._dbscan = bool(dbscan_clustering)
        self._tot_threshold = int(tot_threshold)
        self._cent_lut = cent_timewalk_lut
        self._clustering_args = dict(clustering_args or {})
        self.addStage(4, PipelineCentroidCalculator, num_processes=num_processes)
        self._reconfigureCentroid()

    def _reconfigureCentroid(self) -> None:
        self.getStage(4).configureStage(PipelineCentroidCalculator, calc_args=dict(
            dbscan_clustering=self._dbscan, tot_threshold=self._tot_threshold,
            cent_timewalk_lut=self._cent_lut, clustering_args=self._clustering_args))

    @property
    def numBlobProcesses(self) -> int:
        """Centroiding processes; takes effect at the next start."""
        return self.getStage(4).numProcess

    @numBlobProcesses.setter
    def numBlobProcesses(self, value: int) -> None:
        self.getStage(4).numProcess = max(1, int(value))

    @property
    def totThreshold(self) -> int:
        """Keep hits with ToT > this (ToT counts of 25 ns); next start."""
        return self._tot_threshold

    @totThreshold.setter
    def totThreshold(self, value: int) -> None:
        self._tot_threshold = int(value)
        self._reconfigureCentroid()

    @property
    def dbscanClustering(self) -> bool:
        """pymepix's DBSCAN (True) or the fast connected-components clustering; next start."""
        return self._dbscan

    @dbscanClustering.setter
    def dbscanClustering(self, value: bool) -> None:
        self._dbscan = bool(value)
        self._reconfigureCentroid()
