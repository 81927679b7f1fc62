"""UdpSampler: receive SPIDR UDP datagrams and hand off large raw chunks (pymepix name).

The receive loop does nothing but ``recv_into`` straight into a large preallocated
buffer (datagram boundaries are irrelevant to decoding) and hand the filled buffer off,
without copying, to the decoder stage and to the recording thread
(:class:`~tango_tpx.pipeline.raw2disk.Raw2Disk`). When the pipeline provides a shared
:class:`~tango_tpx.pipeline.shmring.RawRing` (the decoder stage declares
``raw_ring_ok``), the buffers are ring slots in shared memory and only the slot number
travels over ZeroMQ; otherwise (or when every slot is still in use) the chunk itself is
sent as a zero-copy ZeroMQ frame. Hand-offs are non-blocking: if the decoder cannot keep
up the chunk is counted in ``handoff_dropped_bytes``. A chunk is handed off when it holds
``chunk_bytes`` bytes or ``chunk_size`` datagrams, or ``flush_timeout`` s after its first
datagram.

Socket: receive buffer requested with SO_RCVBUFFORCE (33, needs CAP_NET_ADMIN) then
SO_RCVBUF; the granted size is published in the ``rcvbuf_bytes`` counter. SO_RXQ_OVFL (40)
makes the kernel attach its cumulative drop count to each datagram: published as
``kernel_drops``.
"""

from __future__ import annotations

import collections
import select
import socket
import threading
import time
from typing import Any

import numpy as np
import zmq

from .baseplugin import BasePipelineObject
from .counters import CTRL_DRAIN, CTRL_FORCE
from .messages import MessageType, encode_frames
from .raw2disk import Raw2Disk
from ..runtime.shm import META_BYTES, META_SLOT

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SK_MEMINFO_DROPS = 8     # index of the drop counter in the SO_MEMINFO array
#: largest UDP payload: every datagram is received into a slot this big.
MAX_DATAGRAM = 65536
DEFAULT_CHUNK_BYTES = 4 << 20
DEFAULT_RCVBUF = 256 << 20
#: s to sleep after the socket became readable, so that datagrams are read in batches.
WAKE_DELAY_S = 0.001
#: receive buffers kept for reuse (each chunk_bytes + 64 KiB); more are allocated if needed.
POOL_BUFFERS = 48
#: s the receiver may wait for a free shared ring slot while the socket buffer fills
RING_WAIT_S = 1.0


def open_udp_socket(host: str, port: int, rcvbuf: int = DEFAULT_RCVBUF) -> tuple[socket.socket, int]:
    """Bind a non-blocking UDP socket with a large receive buffer and drop reporting.

    Returns (socket, granted receive buffer in bytes). Raises OSError naming the address.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            except OSError:
                pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind UDP {host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except BaseException:
        sock.close()
        raise
    return sock, granted


class _Buffer:
    """One receive buffer: a shared ring slot (``ring_index`` >= 0) or a private array of
    the pool; reused once the decoder (ring flag or ZeroMQ tracker) and the recorder
    released it."""

    __slots__ = ("buf", "mv", "tracker", "writing", "ring_index")

    def __init__(self, nbytes: int = 0, array: np.ndarray | None = None, ring_index: int = -1) -> None:
        self.buf = np.empty(nbytes, np.uint8) if array is None else array
        self.mv = memoryview(self.buf)
        self.tracker = None
        self.writing = False
        self.ring_index = ring_index

    def written(self) -> None:          # called by the recording thread
        self.writing = False


class UdpSampler(BasePipelineObject):
    """Source stage: UDP receiver, chunker and recorder.

    address: (host, port) to bind; chunk_size: max datagrams per chunk; flush_timeout: s after
    the first datagram of a chunk before it is handed off anyway; chunk_bytes: max bytes
    per chunk; rcvbuf_bytes: receive buffer to request.
    """

    accepts = frozenset()
    #: receives into the shared raw ring when the next stage accepts it (see :mod:`.shmring`)
    uses_raw_ring = True

    def __init__(self, address: tuple[str, int], chunk_size: int = 10000,
                 flush_timeout: float = 0.3, input_queue=None, create_output: bool = True,
                 num_outputs: int = 1, shared_output=None, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 rcvbuf_bytes: int = DEFAULT_RCVBUF, name: str = "UdpSampler", **kwargs: Any) -> None:
        super().__init__(name, input_queue=None, create_output=create_output, num_outputs=num_outputs,
                         shared_output=shared_output, **kwargs)
        self.address = (str(address[0]), int(address[1]))
        self.chunk_size = max(1, int(chunk_size))
        self.flush_timeout = float(flush_timeout)
        self.chunk_bytes = max(MAX_DATAGRAM, int(chunk_bytes))
        self.rcvbuf_bytes = int(rcvbuf_bytes)
        self._pending_cmds: collections.deque = collections.deque()
        self._has_pending = False
        self._recording_path = ""

    # -- parent-side helpers (pymepix: record / close_file) -------------------------------
    # These work on the object the pipeline holds (the parent side) while it runs; the
    # receive loop applies them between two chunks.
    _cmd_sender = None  # set by the pipeline: callable(name, arg) -> reply

    def open_file(self, path: str) -> str:
        """Start recording to ``path`` (refuses an existing file); returns the absolute path."""
        if self._cmd_sender is None:
            raise RuntimeError("the sampler is not running")
        self._recording_path = self._cmd_sender("open", path)
        return self._recording_path

    @property
    def record(self) -> bool:
        """True while a file is being recorded; set False to stop recording (pymepix)."""
        return bool(self._recording_path)

    @record.setter
    def record(self, value: bool) -> None:
        if value and not self._recording_path:
            raise ValueError("recording needs a file name: use open_file(path)")
        if not value:
            self.close_file = True

    @property
    def close_file(self) -> bool:
        """Write True to close the file being recorded (pymepix)."""
        return False

    @close_file.setter
    def close_file(self, value: bool) -> None:
        if value and self._cmd_sender is not None:
            self._cmd_sender("close", None)
            self._recording_path = ""

    # -- child side ----------------------------------------------------------------------
    def pre_run(self) -> None:
        self.sock, granted = open_udp_socket(*self.address, rcvbuf=self.rcvbuf_bytes)
        self.wiring.counters.set("rcvbuf_bytes", granted)
        self.raw2disk = Raw2Disk(self.wiring.counters, lambda msg: self.report("fault", msg))
        threading.Thread(target=self._command_thread, name="commands", daemon=True).start()

    def _command_thread(self) -> None:
        """Receives open/close commands from the parent; the receive loop applies them."""
        conn = self._conn
        while True:
            try:
                if not conn.poll(0.1):
                    if self._forced():
                        return
                    continue
                msg = conn.recv()
            except (EOFError, OSError):
                return
            self._pending_cmds.append(msg)
            self._has_pending = True

    def _apply_commands(self) -> None:
        self._has_pending = False
        while self._pending_cmds:
            _, cid, name, arg = self._pending_cmds.popleft()
            if name == "open":
                try:
                    path = self.raw2disk.open(arg)
                except OSError as exc:
                    self.report("reply", cid, False, (type(exc).__name__, exc.errno, str(exc)))
                    continue
                self.report("reply", cid, True, path)
            elif name == "close":
                if not self.raw2disk.recording:
                    self.report("reply", cid, True, ("", 0))
                    continue
                self.raw2disk.close(lambda p, n, cid=cid: self.report("reply", cid, True, (p, n)))
            else:
                self.report("reply", cid, False, ("ValueError", 0, f"unknown command {name!r}"))

    def _handoff(self, slot: "_Buffer", nbytes: int, ndgram: int) -> "_Buffer":
        """Hand ``slot.buf[:nbytes]`` to the recorder and the decoder (no copies); returns
        the buffer to fill next."""
        c = self.wiring.counters
        self._kernel_drops()
        chunk = slot.buf[:nbytes]
        if self.raw2disk.recording:
            slot.writing = True
            self.raw2disk.put(chunk, slot)
        if self._down:
            ring, ri = self._ring, slot.ring_index
            try:
                if ri >= 0:
                    ring.acquire(ri)
                    self._down[0].send_multipart(
                        encode_frames(MessageType.RawData, None, self._seq, {META_SLOT: ri, META_BYTES: nbytes}),
                        flags=zmq.NOBLOCK, copy=False)
                else:
                    slot.tracker = self._down[0].send_multipart(
                        encode_frames(MessageType.RawData, chunk, self._seq), flags=zmq.NOBLOCK,
                        copy=False, track=True)
                c.stage_sent(self.wiring.next_slot)
            except zmq.Again:
                if ri >= 0:
                    ring.release(ri)
                c.add("handoff_dropped_bytes", nbytes)
        self._seq += 1
        c.add("chunks", 1)
        c.add("datagrams", ndgram)
        c.add("bytes", nbytes)
        return self._free_buffer()

    def _free_buffer(self) -> "_Buffer":
        """The first free ring slot (lowest index: a small working set), else a pooled
        buffer nobody uses any more (sent by ZeroMQ, written to disk), else a new one."""
        ring = self._ring
        if ring is not None:
            deadline = 0.0
            while True:
                for b in self._ring_bufs:
                    if not b.writing and not ring.busy[b.ring_index]:
                        return b
                # every slot is with the decoder or the recorder: while the kernel's socket
                # buffer is less than half full let it absorb the stall (up to RING_WAIT_S)
                # instead of handing off private copies that the decoder queue would refuse
                now = time.monotonic()
                if not deadline:
                    deadline = now + RING_WAIT_S
                ctrl = self.wiring.counters.ctrl
                if now > deadline or ctrl[CTRL_FORCE] or ctrl[CTRL_DRAIN] or self._socket_fill() > 0.5:
                    break
                time.sleep(0.0005)
        for b in self._pool:
            if not b.writing and (b.tracker is None or b.tracker.done):
                b.tracker = None
                return b
        b = _Buffer(self.chunk_bytes + MAX_DATAGRAM)
        if len(self._pool) < POOL_BUFFERS:
            self._pool.append(b)
        return b

    def _socket_fill(self) -> float:
        """Share of the socket receive buffer in use (SO_MEMINFO), 1.0 if unknown."""
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 64)
            alloc, rcvbuf = int.from_bytes(info[0:4], "little"), int.from_bytes(info[4:8], "little")
        except (OSError, ValueError):
            return 1.0
        return alloc / rcvbuf if rcvbuf > 0 else 1.0

    def _kernel_drops(self) -> None:
        """Exact cumulative drop count of the socket (SO_MEMINFO), if the kernel has it."""
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 64)
        except OSError:
            return
        if len(info) >= 4 * (SK_MEMINFO_DROPS + 1):
            self._note_drops(int.from_bytes(info[4 * SK_MEMINFO_DROPS:4 * SK_MEMINFO_DROPS + 4], "little"))

    def _note_drops(self, cumulative: int) -> None:
        """Count the growth of the kernel's 32-bit cumulative drop counter. The ancillary
        value of a datagram is the counter when it was queued, so it may be older (smaller)
        than one already read through SO_MEMINFO: a step "backwards" is ignored, not taken
        for a wrap-around."""
        d = (cumulative - self._last_drops) & 0xFFFFFFFF
        if 0 < d < 0x80000000:
            self.wiring.counters.add("kernel_drops", d)
            self._last_drops = cumulative

    def main_loop(self) -> bool:
        """Receive loop: ``recv_into`` at the fill offset of the chunk buffer; every 32nd
        datagram through ``recvmsg_into`` for the kernel's SO_RXQ_OVFL drop count (it is
        cumulative, so sampling loses nothing), checks (time, commands, stop) every 64."""
        sock = self.sock
        recv_into = sock.recv_into
        recvmsg_into = sock.recvmsg_into
        anc_size = socket.CMSG_SPACE(4)
        chunk_bytes, max_dgrams, flush_s = self.chunk_bytes, self.chunk_size, self.flush_timeout
        ctrl = self.wiring.counters.ctrl
        monotonic = time.monotonic
        self._seq = 0
        self._last_drops = 0
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLIN)

        self._pool: list[_Buffer] = []
        self._ring = self.wiring.settings.get("raw_ring") if self._down else None
        self._ring_bufs: list[_Buffer] = []
        if self._ring is not None and self._ring.slot_bytes >= self.chunk_bytes + MAX_DATAGRAM:
            self._ring_bufs = [_Buffer(array=self._ring.slot(i), ring_index=i) for i in range(self._ring.n_slots)]
        else:
            self._ring = None
        slot = self._free_buffer()
        mv = slot.mv
        off = ndg = 0
        t_first = 0.0
        k = 0
        while True:
            try:
                if k & 31:
                    n = recv_into(mv[off:off + MAX_DATAGRAM])
                else:
                    n, anc, _flags, _addr = recvmsg_into([mv[off:off + MAX_DATAGRAM]], anc_size)
                    for level, typ, data in anc:
                        if level == socket.SOL_SOCKET and typ == SO_RXQ_OVFL and len(data) >= 4:
                            self._note_drops(int.from_bytes(data[:4], "little"))
            except BlockingIOError:
                # idle: flush a partial chunk on time-out, apply commands, check stop
                now = monotonic()
                flush = off and (now - t_first >= flush_s or self._has_pending or ctrl[CTRL_DRAIN]
                                 or not self.enable)
                if flush:
                    slot = self._handoff(slot, off, ndg)
                    mv = slot.mv
                    off = ndg = 0
                if self._has_pending:
                    self._apply_commands()
                if ctrl[CTRL_FORCE] or self._orphaned():
                    self.raw2disk.stop(1.0)         # keep what was recorded readable
                    return False
                if ctrl[CTRL_DRAIN] or not self.enable:
                    self._kernel_drops()
                    self.raw2disk.stop()
                    return True
                wait_ms = 50 if not off else max(1, int(1000 * (t_first + flush_s - now)) + 1)
                if poll.poll(min(wait_ms, 50)):
                    # let a batch gather: one wake-up per ms instead of one per datagram
                    # halves the cost per datagram (the socket buffer holds far more)
                    time.sleep(WAKE_DELAY_S)
                continue
            if off == 0:
                t_first = monotonic()
            off += n
            ndg += 1
            k += 1
            if off >= chunk_bytes or ndg >= max_dgrams or not k & 63:
                stop = ctrl[CTRL_DRAIN] or ctrl[CTRL_FORCE] or not self.enable
                if off >= chunk_bytes or ndg >= max_dgrams or self._has_pending or stop \
                        or monotonic() - t_first >= flush_s:
                    slot = self._handoff(slot, off, ndg)
                    mv = slot.mv
                    off = ndg = 0
                    if self._has_pending:
                        self._apply_commands()
                if stop:
                    if ctrl[CTRL_FORCE] or self._orphaned():
                        self.raw2disk.stop(1.0)
                        return False
                    self._kernel_drops()
                    self.raw2disk.stop()
                    return True
                if self._orphaned():
                    self.raw2disk.stop(1.0)
                    return False

    def post_run(self):
        try:
            self.sock.close()
        except OSError:
            pass
        return None
