"""BasePipelineObject: one pipeline stage running in its own process (pymepix name).

A stage process:

* receives ``(MessageType, data)`` messages on one bound PULL socket (its input), calls
  :meth:`BasePipelineObject.process` for each and sends what it returns (or what it passes
  to :meth:`pushOutput`) to the next stage and/or to the pipeline's collector;
* reports ``ready``, non-fatal faults and fatal errors (stage name + traceback) to the
  parent over a private pipe; it never dies silently;
* ends after the end-of-stream marker of every upstream process (clean drain), when its
  ``enable`` flag is cleared and its input is idle, when the pipeline forces a stop, or
  when its parent process disappears (``os.getppid()`` is polled: no orphans).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import transport
from .counters import CTRL_DRAIN, CTRL_FORCE, SharedCounters, SharedPreview
from .messages import SOA_CLASSES, MessageType, _soa_class, encode_frames
from .shmring import META_BYTES, META_SLOT, META_SOA

#: poll period of stage loops (s): bounds the reaction time to stop/orphan checks.
POLL_S = 0.05


@dataclass
class StageWiring:
    """Where one stage process reads from and writes to (filled in by the pipeline)."""

    counters: SharedCounters
    preview: SharedPreview | None = None
    parent_pid: int = 0
    input_address: str | None = None      # bound PULL (None: a source stage)
    expected_eos: int = 1                 # end-of-stream markers to wait for on the input
    down_addresses: list[str] = field(default_factory=list)   # next stage (one per process)
    down_types: frozenset = frozenset()   # message types the next stage consumes
    collector_address: str | None = None  # the pipeline's collector (bound by the parent)
    forward_types: frozenset = frozenset()  # message types the collector wants
    stage_slot: int = 0                   # queue-depth slot of this stage's input
    next_slot: int = 0                    # queue-depth slot of the next stage's input
    worker_index: int = 0
    hwm: int = transport.DEFAULT_HWM
    down_hwm: int | None = None           # send high-water mark towards the next stage (default hwm)
    settings: dict = field(default_factory=dict)


class BasePipelineObject(mp.Process):
    """Base class of every stage (pymepix API: ``enable``, ``hasOutput``, ``outputQueues``,
    ``pre_run``, ``post_run``, ``process``, ``pushOutput``, ``run``).

    Parameters
    ----------
    name: process/stage name used in reports.
    input_queue: the stage input address (``ipc://...``) or None for a source.
    shared_output: ignored placeholder of the pymepix signature (outputs come from the
        wiring set by :class:`~tango_tpx.pipeline.stage.AcquisitionStage`).
    wiring: a :class:`StageWiring` (set by the stage builder).
    """

    #: message types this stage consumes (used to route the previous stage's output).
    accepts: frozenset = frozenset()
    #: True: ``RawData`` may arrive as a slot of the shared raw ring (see :mod:`.shmring`);
    #: ``process`` gets a read-only view valid until it returns (copy what you keep).
    raw_ring_ok: bool = False
    #: True: structure-of-arrays messages may arrive in slots of a shared message ring
    #: (:class:`~.shmring.MsgRing`), read-only and valid until ``process`` returns.
    msg_ring_ok: bool = False

    def __init__(self, name: str, input_queue: str | None = None, create_output: bool = True,
                 num_outputs: int = 1, shared_output: Any = None, wiring: StageWiring | None = None,
                 conn=None, **kwargs: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.wiring = wiring
        if wiring is not None and input_queue is not None:
            wiring.input_address = input_queue
        self._create_output = create_output
        self._conn = conn
        self._enable = mp.RawValue(ctypes.c_int8, 1)
        self._send_lock = threading.Lock()
        self._rr = 0
        self.current_seq = 0
        self.current_meta: dict = {}
        self._out_seq: dict = {}

    # -- pymepix API ----------------------------------------------------------------------
    @property
    def enable(self) -> bool:
        """Clearing it asks the stage to end once its input is idle (any process may set it)."""
        return bool(self._enable.value)

    @enable.setter
    def enable(self, value: bool) -> None:
        self._enable.value = 1 if value else 0

    def hasOutput(self) -> bool:
        w = self.wiring
        return bool(w and (w.down_addresses or w.collector_address))

    def outputQueues(self) -> list[str]:
        """Addresses this stage sends to."""
        w = self.wiring
        if w is None:
            return []
        return list(w.down_addresses) + ([w.collector_address] if w.collector_address else [])

    @classmethod
    def warm_up(cls) -> None:
        """Called once per parent process before the first fork: load/compile the numba
        kernels here so that every forked stage inherits them (fast start)."""

    def pre_run(self) -> None:
        """Called in the child process before the loop (open resources, compile kernels)."""

    def post_run(self) -> tuple[Any, Any] | None:
        """Called in the child after the input ended; may return a last ``(type, data)``."""
        return None

    def process(self, data_type: MessageType | None = None, data: Any = None) -> tuple[Any, Any] | None:
        """Handle one message; return ``(type, data)`` to send on, or None."""
        return None

    def on_idle(self) -> None:
        """Called when no input arrived for one poll period."""

    def pushOutput(self, data_type: MessageType, data: Any, seq: int | None = None,
                   meta: dict | None = None) -> bool:
        """Send one message downstream (if the next stage consumes its type) and/or to
        the collector (if the pipeline's consumer wants it). Returns False if dropped."""
        w = self.wiring
        if seq is None:      # consecutive per message type (the collector re-orders on it)
            seq = self._out_seq.get(data_type, 0)
            self._out_seq[data_type] = seq + 1
        ok = True
        if data_type in w.down_types and self._down:
            ok = self._send_round_robin(data_type, data, seq, meta)
        elif data_type in w.forward_types and self._collector is not None:
            ok = transport.send(self._collector, data_type, data, seq, meta, block_s=1e9, abort=self._forced)
        return ok

    # -- helpers for subclasses -----------------------------------------------------------
    def report(self, kind: str, *payload: Any) -> None:
        """Send a report to the parent (``'fault'`` for non-fatal problems)."""
        if self._conn is None:
            return
        with self._send_lock:
            try:
                self._conn.send((kind, self.name) + payload)
            except (OSError, ValueError):
                pass

    def _forced(self) -> bool:
        return bool(self.wiring.counters.ctrl[CTRL_FORCE]) or self._orphaned()

    def _draining(self) -> bool:
        return bool(self.wiring.counters.ctrl[CTRL_DRAIN])

    def _orphaned(self) -> bool:
        return os.getppid() != self.wiring.parent_pid

    def _send_round_robin(self, data_type, data, seq, meta) -> bool:
        # blocks while every next-stage input is full (back-pressure reaches the sampler,
        # which counts what it cannot hand off); gives up only when the pipeline is forced.
        # A structure-of-arrays payload goes through a free slot of the shared message
        # ring when there is one (one copy, no socket I/O), else as ZeroMQ frames.
        n = len(self._down)
        ring = self.wiring.settings.get("out_ring")
        slot = -1
        if ring is not None and type(data).__name__ in SOA_CLASSES:
            slot = ring.free_slot()
            ring_meta = ring.pack(slot, data) if slot >= 0 else None
            if ring_meta is None:
                slot = -1
            else:
                ring.acquire(slot)
                frames = encode_frames(data_type, None, seq, {**(meta or {}), **ring_meta})
        if slot < 0:
            frames = encode_frames(data_type, data, seq, meta)
        while True:
            for k in range(n):
                i = (self._rr + k) % n
                try:
                    self._down[i].send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    continue
                self._rr = (i + 1) % n
                self.wiring.counters.stage_sent(self.wiring.next_slot)
                return True
            if self._forced():
                if slot >= 0:
                    ring.release(slot)
                return False
            time.sleep(0.001)

    def _send_eos(self, meta: dict | None = None) -> None:
        for s in self._down:
            transport.send(s, MessageType.EndOfStream, None, 0, meta, block_s=2.0, abort=self._forced)
        if self._collector is not None:
            transport.send(self._collector, MessageType.EndOfStream, None, 0, meta, block_s=2.0,
                           abort=self._forced)

    # -- process body -----------------------------------------------------------------------
    def _open_sockets(self) -> None:
        w = self.wiring
        self._ctx = zmq.Context()
        self._in = transport.pull_socket(self._ctx, w.input_address, w.hwm) if w.input_address else None
        self._down = [transport.push_socket(self._ctx, a, w.down_hwm or w.hwm) for a in w.down_addresses]
        self._collector = (transport.push_socket(self._ctx, w.collector_address, 4 * w.hwm)
                           if w.collector_address else None)

    def _close_sockets(self) -> None:
        linger = 0 if self._forced() else 1000
        for s in [self._in, self._collector, *self._down]:
            if s is not None:
                s.close(linger=linger)
        self._ctx.term()

    def run(self) -> None:
        """Process entry point: set up, loop, drain, report; exit code 1 on a fatal error."""
        code = 0
        self._ctx = None
        try:
            self._open_sockets()
            self.pre_run()
            self.report("ready")
            clean = self.main_loop()
            if clean:
                last = self.post_run()
                if last is not None and last[0] is not None:
                    self.pushOutput(*last)
                self._send_eos()
        except BaseException as exc:
            code = 1
            self.report("error", traceback.format_exc(),
                        (type(exc).__name__, getattr(exc, "errno", None) or 0,
                         getattr(exc, "strerror", None) or str(exc), isinstance(exc, OSError)))
        finally:
            try:
                if self._ctx is not None:
                    self._close_sockets()
            except Exception:
                pass
            if self._conn is not None:
                try:
                    self._conn.close()
                except OSError:
                    pass
            if self.wiring is not None and self._orphaned():
                self._remove_endpoints()
        if code:
            raise SystemExit(code)

    def _remove_endpoints(self) -> None:
        """The parent is gone and cannot clean up: remove this stage's ipc endpoints (and
        the collector's) and, if it is then empty, the run directory."""
        w = self.wiring
        paths = [a[len("ipc://"):] for a in (w.input_address, w.collector_address)
                 if a and a.startswith("ipc://")]
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        if paths:
            try:
                os.rmdir(os.path.dirname(paths[-1]))
            except OSError:
                pass

    def main_loop(self) -> bool:
        """Default loop over the input; returns True for a clean end (drain the outputs)."""
        w = self.wiring
        poller = zmq.Poller()
        poller.register(self._in, zmq.POLLIN)
        ring = w.settings.get("raw_ring") if self.raw_ring_ok else None
        in_ring = w.settings.get("in_ring") if self.msg_ring_ok else None
        eos = 0
        while True:
            if self._forced():
                return False
            if not poller.poll(int(POLL_S * 1000)):
                if not self.enable:
                    return True
                self.on_idle()
                continue
            mtype, data, seq, meta = transport.recv(self._in)
            if mtype == MessageType.EndOfStream:
                eos += 1
                if eos >= w.expected_eos:
                    return True
                continue
            w.counters.stage_taken(w.stage_slot)
            self.current_seq, self.current_meta = seq, meta
            slot = meta.get(META_SLOT, -1) if data is None else -1
            if slot >= 0 and META_SOA in meta and in_ring is not None:
                try:
                    data = in_ring.unpack(meta, _soa_class(meta[META_SOA]))
                    out = self.process(mtype, data)
                finally:
                    data = None
                    in_ring.release(slot)
            elif slot >= 0 and ring is not None and mtype == MessageType.RawData:
                try:
                    data = ring.view(slot, int(meta.get(META_BYTES, 0)))
                    out = self.process(mtype, data)
                finally:
                    data = None
                    ring.release(slot)
            else:
                out = self.process(mtype, data)
            if out is not None and out[0] is not None:
                self.pushOutput(out[0], out[1])
