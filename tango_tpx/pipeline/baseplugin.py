"""BasePipelineObject: one pipeline stage running in its own process (pymepix name).

A stage process:

* receives ``(MessageType, data)`` messages on one bound PULL socket (its input), calls
  :meth:`BasePipelineObject.process` for each and sends what it returns (or what it passes
  to :meth:`pushOutput`) to the next stage and/or to the pipeline's collector;
* reports ``ready``, non-fatal faults and fatal errors (stage name + traceback) to the
  parent over a private pipe; it never dies silently;
* ends after the end-of-stream marker of every upstream process (clean drain), when its
  ``enable`` flag is cleared and its input is idle, when the pipeline forces a stop, or
  when its parent process disappears (the orphan guard of :mod:`tango_tpx.runtime.guard`
  is polled: no orphans).
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
from ..runtime.guard import OrphanGuard
from ..runtime.shm import META_BYTES, META_SLOT, META_SOA

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

    Two transports, chosen by the class (:meth:`zero_copy_transport`):

    * zero-copy (the built-in stages, and any stage declaring :attr:`accepts`): ZeroMQ
      frames of numpy buffers and shared-memory rings, wired by the pipeline;
    * queue mode (a pymepix-style subclass that only overrides :meth:`process`): pickled
      ``(MessageType, data)`` tuples on ``multiprocessing`` queues, exactly pymepix's
      contract: ``process`` returns ``(type, data)`` or ``(None, None)``, the input is
      passed on when ``propogate_input``, ``None`` on the input queue ends the stage.

    Parameters
    ----------
    name: process/stage name used in reports.
    input_queue: queue mode: the ``multiprocessing.Queue`` to read (None: a source whose
        ``process()`` is called while :attr:`enable` is set); zero-copy: the input address.
    create_output, num_outputs: queue mode without ``shared_output``: create that many
        output queues (pymepix).
    shared_output: queue mode: the queue (or list of queues) to push results to.
    propogate_input: queue mode: pass every input message on after processing it (pymepix
        spelling kept).
    wiring: a :class:`StageWiring` (zero-copy mode, set by the stage builder).
    """

    #: message types this stage consumes (used to route the previous stage's output).
    accepts: frozenset = frozenset()
    #: True: ``RawData`` may arrive as a slot of the shared raw ring (see :mod:`tango_tpx.runtime.shm`);
    #: ``process`` gets a read-only view valid until it returns (copy what you keep).
    raw_ring_ok: bool = False
    #: True: structure-of-arrays messages may arrive in slots of a shared message ring
    #: (:class:`~tango_tpx.runtime.shm.MsgRing`), read-only and valid until ``process`` returns.
    msg_ring_ok: bool = False

    @classmethod
    def zero_copy_transport(cls) -> bool:
        """True for stages written for the zero-copy transport: they declare the message
        types they consume (:attr:`accepts`) or feed the raw ring (the UDP receiver).
        Any other subclass (a pymepix-style stage that only overrides :meth:`process`)
        runs in queue mode on ``multiprocessing`` queues."""
        return bool(cls.accepts) or bool(getattr(cls, "uses_raw_ring", False))

    def __init__(self, name: str, input_queue: Any = None, create_output: bool = True,
                 num_outputs: int = 1, shared_output: Any = None, propogate_input: bool = True, *,
                 wiring: StageWiring | None = None, conn=None, **kwargs: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.wiring = wiring
        if wiring is not None and input_queue is not None:
            wiring.input_address = input_queue
        self.input_queue = input_queue
        self._create_output = create_output
        self._propagate_input = bool(propogate_input)
        # queue mode (no wiring): pymepix's multiprocessing queues, built as pymepix does
        self.output_queue: list = []
        if wiring is None:
            if shared_output is not None:
                self.output_queue.extend(shared_output if isinstance(shared_output, list) else [shared_output])
            elif create_output:
                self.output_queue.extend(mp.Queue() for _ in range(int(num_outputs)))
        #: the orphan guard of this stage's process (the parent is the process creating it)
        self._guard = OrphanGuard(wiring.parent_pid if wiring is not None and wiring.parent_pid else os.getpid())
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

    @classmethod
    def hasOutput(cls) -> bool:
        """Whether this class produces results (pymepix: True for every processing stage)."""
        return True

    @property
    def outputQueues(self) -> list:
        """Where this stage sends: its multiprocessing queues (queue mode) or the ZeroMQ
        addresses of the next stage and the collector (zero-copy mode)."""
        w = self.wiring
        if w is None:
            return list(self.output_queue)
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
        """Send one message on. Queue mode: ``(data_type, data)`` is put on every output
        queue (pickled, as pymepix does). Zero-copy mode: to the next stage if it consumes
        this type and to the collector if the pipeline's consumer wants it (both when the
        pipeline propagates every message). Returns False if dropped."""
        w = self.wiring
        if w is None:
            for q in self.output_queue:
                if q is not None:
                    q.put((data_type, data))
            return True
        if seq is None:      # consecutive per message type (the collector re-orders on it)
            seq = self._out_seq.get(data_type, 0)
            self._out_seq[data_type] = seq + 1
        ok = True
        if data_type in w.down_types and self._down:
            ok = self._send_round_robin(data_type, data, seq, meta)
        if data_type in w.forward_types and self._collector is not None:
            ok = transport.send(self._collector, data_type, data, seq, meta, block_s=1e9,
                                abort=self._forced) and ok
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
        return self._guard.orphaned()

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
        if self.wiring is None:
            if self.zero_copy_transport():
                raise RuntimeError(f"{type(self).__name__} runs inside an AcquisitionPipeline "
                                   "(add it with addStage)")
            self._run_queue_mode()
            return
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
        if code:
            raise SystemExit(code)

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

    # -- queue mode (pymepix-style stages) ------------------------------------------------
    def _queue_get(self) -> tuple[bool, Any]:
        """Next input item; (False, None) when the parent is gone (no orphans)."""
        import queue as queue_mod
        while True:
            try:
                return True, self.input_queue.get(timeout=POLL_S)
            except queue_mod.Empty:
                if self._guard.orphaned():
                    return False, None

    def _push_result(self, out: Any) -> None:
        if out is not None and out[0] is not None and out[1] is not None:
            self.pushOutput(out[0], out[1])

    def _run_queue_mode(self) -> None:
        """pymepix's loop: take ``(type, data)`` from the input queue until ``None`` (put
        back for the sibling processes), call :meth:`process`, pass the input on when
        ``propogate_input``, push the result; without an input queue call :meth:`process`
        while :attr:`enable` is set. An exception ends the loop with exit code 1 after
        :meth:`post_run` (the traceback goes to stderr and the pipeline reports the code)."""
        code = 0
        try:
            self.pre_run()
            while True:
                enabled = self.enable
                if self.input_queue is not None:
                    ok, value = self._queue_get()
                    if not ok:
                        break
                    if value is None:
                        self.input_queue.put(None)
                        break
                    if not enabled:
                        continue
                    out = self.process(*value)
                    if self._propagate_input:
                        self.pushOutput(*value)
                else:
                    if not enabled or self._guard.orphaned():
                        break
                    out = self.process()
                self._push_result(out)
        except Exception:
            code = 1
            traceback.print_exc()
        try:
            self._push_result(self.post_run())
        except Exception:
            code = 1
            traceback.print_exc()
        if code:
            raise SystemExit(code)
