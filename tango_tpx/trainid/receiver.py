"""Train-ID readers (a process and a thread) and a simulated receiver on a pty.

Two ways to read the receiver, same logic (:func:`run_read_loop`):

* :class:`USBTrainID` (pymepix name): a separate process (``spawn`` context by default,
  safe next to threads, numba and Tango). Frames come to the parent through a
  multiprocessing queue (``reader.queue``, items are ``list[TrainFrame]``), or to a
  ``callback(frames)`` called from a thread in the parent, and optionally over ZMQ PUB.
  Status and counters live in shared memory and are readable from the parent
  (``status``, ``counters()``, ``latest()``). The child exits when the parent dies
  (it watches the parent pid) and ``stop()`` returns within 2 s.
* :class:`TrainIdReader`: a daemon thread in the calling process with the same options;
  the simplest choice inside an existing process (pipeline stage, Tango device).

Both keep running while the receiver is unplugged: status becomes
``'disconnected: <reason>'`` and the port is reopened with exponential backoff
(``reconnect_min_s`` doubling up to ``reconnect_max_s``); status returns to
``'connected: <port>'`` when it is back, and ``reconnects`` counts the re-connections.

``source``: a tty/pty path (``'/dev/ttyUSB0'``, serial transport), ``'usb'`` or
``'usb:VID:PID[:IFACE]'`` (pyusb transport), or any object with ``open()``,
``read(timeout_s) -> bytes``, ``close()`` and ``description`` (picklable for USBTrainID).

ZMQ: with ``zmq_address`` (e.g. ``'tcp://127.0.0.1:5600'``) the reader binds a PUB socket
and sends each batch as three frames ``[ZMQ_TOPIC, format, payload]``: format ``b'json'``
with payload ``[{"host_time_ns":..., "train_id":..., "beam_mode":...}, ...]``
(``zmq_format='json'``), or ``b'numpy'`` with the raw little-endian bytes of a
:data:`TRAINID_DTYPE` array; decode either with :func:`decode_zmq_message`.

:class:`SimulatedReceiver` writes valid frames at ``rate_hz`` to a pty with optional
faults; ``.path`` is a stable symlink to the pty slave (like ``/dev/serial/by-id``),
removed by ``unplug()`` and recreated by ``replug()``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import tempfile
import threading
import time
import tty
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..runtime.guard import OrphanGuard
from .protocol import (PARSER_STATS, TRAINID_DTYPE, FrameParser, TrainFrame, TransportError,
                       array_to_frames, encode_frame, frames_to_array)

#: ZMQ topic (first message frame) of published train-ID batches.
ZMQ_TOPIC = b"trainid"

#: Counters shared by both readers (integers): the parser statistics plus these.
COUNTER_NAMES: tuple[str, ...] = PARSER_STATS + (
    "connects",            # successful opens of the port
    "reconnects",          # opens after a disconnection
    "disconnects",         # losses of an open port
    "open_failures",       # failed open attempts
    "queue_drops",         # batches dropped because the queue was full
    "last_train_id",       # 0 before the first frame
    "last_beam_mode",
    "last_host_time_ns",   # host wall clock ns (Unix epoch) of the last frame, 0 before
    "connected",           # 1 while the port is open
)
_IDX = {name: i for i, name in enumerate(COUNTER_NAMES)}
_STATUS_BYTES = 256


def make_transport(source: Any):
    """Transport for a ``source`` (see the module doc)."""
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if s.lower() == "usb" or s.lower().startswith("usb:"):
            from .usb import UsbTransport, parse_usb_source
            return UsbTransport(**parse_usb_source(s))
        from .serial import SerialTransport
        return SerialTransport(s)
    for attr in ("open", "read", "close"):
        if not callable(getattr(source, attr, None)):
            raise TypeError(f"source {source!r} is neither a path, 'usb[:VID:PID]' nor a transport "
                            f"(missing {attr}())")
    return source



def _drain_batches(q, timeout_s: float) -> list[TrainFrame]:
    """Every frame of the batches now in queue ``q`` (waiting up to ``timeout_s`` for the first)."""
    out: list[TrainFrame] = []
    try:
        out.extend(q.get(timeout=timeout_s) if timeout_s > 0 else q.get_nowait())
        while True:
            out.extend(q.get_nowait())
    except queue_mod.Empty:
        pass
    return out

class _SharedState:
    """Status string and int64 counters in lock-free shared memory.

    One writer (the read loop), any number of readers in any process. Consistency uses
    a sequence counter (odd while a write is in progress; readers retry), not a lock,
    so a writer killed at any moment can never block the parent.
    """

    def __init__(self, ctx=None) -> None:
        ctx = ctx or mp.get_context("spawn")
        self._seq = ctx.RawValue("q", 0)
        self._status = ctx.RawArray("c", _STATUS_BYTES)
        self._counters = ctx.RawArray("q", len(COUNTER_NAMES))

    def _begin(self) -> None:
        self._seq.value += 1

    def _end(self) -> None:
        self._seq.value += 1

    def _read(self, fn):
        for _ in range(1000):
            s0 = self._seq.value
            if s0 % 2 == 0:
                out = fn()
                if self._seq.value == s0:
                    return out
            time.sleep(0)
        return fn()  # writer died mid-write: best effort

    def set_status(self, text: str) -> None:
        raw = text.encode("utf-8", "replace")[:_STATUS_BYTES - 1]
        self._begin()
        self._status.value = raw
        self._end()

    def get_status(self) -> str:
        return self._read(lambda: self._status.value).decode("utf-8", "replace")

    def add(self, name: str, n: int = 1) -> None:
        self._begin()
        self._counters[_IDX[name]] += n
        self._end()

    def put(self, **values: int) -> None:
        self._begin()
        for name, v in values.items():
            self._counters[_IDX[name]] = int(v)
        self._end()

    def snapshot(self) -> dict[str, int]:
        vals = self._read(lambda: list(self._counters))
        return dict(zip(COUNTER_NAMES, (int(v) for v in vals)))


class _SharedFlag:
    """A stop flag in shared memory with the ``threading.Event`` methods the read loop
    uses; ``wait`` polls (no condition variable that a killed process could break)."""

    def __init__(self, ctx) -> None:
        self._v = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._v.value = 1

    def is_set(self) -> bool:
        return bool(self._v.value)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._v.value:
            left = 0.02 if deadline is None else min(0.02, deadline - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return bool(self._v.value)


class _ZmqPublisher:
    def __init__(self, address: str, fmt: str) -> None:
        import zmq
        if fmt not in ("json", "numpy"):
            raise ValueError(f"zmq_format must be 'json' or 'numpy', not {fmt!r}")
        self.fmt = fmt
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(exc.errno, f"cannot bind ZMQ PUB to {address}: {exc}") from exc

    def send(self, frames: list[TrainFrame]) -> None:
        import zmq
        if self.fmt == "json":
            payload = json.dumps([f._asdict() for f in frames]).encode()
        else:
            payload = frames_to_array(frames).tobytes()
        try:
            self._sock.send_multipart([ZMQ_TOPIC, self.fmt.encode(), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


def decode_zmq_message(parts: Sequence[bytes]) -> list[TrainFrame]:
    """``[topic, format, payload]`` from the PUB socket -> frames (JSON or numpy payload)."""
    if len(parts) != 3 or bytes(parts[0]) != ZMQ_TOPIC:
        raise ValueError("not a train-ID message")
    fmt, payload = bytes(parts[1]), bytes(parts[2])
    if fmt == b"json":
        return [TrainFrame(int(d["host_time_ns"]), int(d["train_id"]), int(d["beam_mode"]))
                for d in json.loads(payload)]
    if fmt != b"numpy":
        raise ValueError(f"unknown train-ID payload format {fmt!r}")
    if len(payload) % TRAINID_DTYPE.itemsize:
        raise ValueError(f"payload of {len(payload)} bytes is not a whole number of records")
    return array_to_frames(np.frombuffer(payload, dtype=TRAINID_DTYPE))


def run_read_loop(source: Any, stop: Any, emit: Callable[[list[TrainFrame]], None],
                  state: _SharedState, *, parent_pid: int | None = None,
                  read_timeout_s: float = 0.1, reconnect_min_s: float = 0.1,
                  reconnect_max_s: float = 2.0, parser_kwargs: dict | None = None) -> None:
    """Connect, read, parse and ``emit`` batches until ``stop`` (an Event) is set or the
    parent process ``parent_pid`` is gone. Never raises for receiver trouble: it goes
    to the ``disconnected`` status and retries with backoff."""
    transport = make_transport(source)
    parser = FrameParser(**(parser_kwargs or {}))
    desc = getattr(transport, "description", repr(transport))
    backoff = reconnect_min_s
    ever_connected = False

    parent_gone = OrphanGuard(parent_pid).orphaned

    def sync_stats() -> None:
        state.put(**parser.stats)

    state.set_status(f"connecting: {desc}")
    try:
        while not stop.is_set() and not parent_gone():
            # ---- connect
            try:
                transport.open()
            except Exception as exc:  # noqa: BLE001 - any failure means "not there yet"
                state.add("open_failures")
                state.set_status(f"disconnected: {desc}: {exc}")
                stop.wait(backoff)
                backoff = min(backoff * 2, reconnect_max_s)
                continue
            desc = getattr(transport, "description", desc)
            state.add("connects")
            if ever_connected:
                state.add("reconnects")
            ever_connected = True
            backoff = reconnect_min_s
            state.put(connected=1)
            state.set_status(f"connected: {desc}")
            # ---- read
            try:
                while not stop.is_set() and not parent_gone():
                    data = transport.read(read_timeout_s)
                    if not data:
                        continue
                    frames = parser.feed(data)
                    sync_stats()
                    if frames:
                        last = frames[-1]
                        state.put(last_train_id=last.train_id, last_beam_mode=last.beam_mode,
                                  last_host_time_ns=last.host_time_ns)
                        emit(frames)
            except Exception as exc:  # noqa: BLE001 - unplugged or I/O error
                state.add("disconnects")
                state.set_status(f"disconnected: {desc}: {exc}")
            finally:
                state.put(connected=0)
                parser.reset_partial()
                sync_stats()
                try:
                    transport.close()
                except Exception:  # noqa: BLE001
                    pass
    finally:
        try:
            transport.close()
        except Exception:  # noqa: BLE001
            pass
        state.put(connected=0)
        state.set_status("stopped" if stop.is_set() else "stopped: parent process gone")


def _child_main(source, stop, state, out_queue, zmq_address, zmq_format, parent_pid,
                loop_kwargs) -> None:
    """Entry point of the USBTrainID process."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    pub = None
    try:
        if zmq_address:
            pub = _ZmqPublisher(zmq_address, zmq_format)

        def emit(frames: list[TrainFrame]) -> None:
            if out_queue is not None:
                try:
                    out_queue.put_nowait(frames)
                except queue_mod.Full:
                    state.add("queue_drops")
            if pub is not None:
                pub.send(frames)

        run_read_loop(source, stop, emit, state, parent_pid=parent_pid, **loop_kwargs)
    except Exception as exc:  # noqa: BLE001 - report, don't die silently
        state.set_status(f"fault: {type(exc).__name__}: {exc}")
    finally:
        if pub is not None:
            pub.close()
        if out_queue is not None:
            out_queue.cancel_join_thread()  # never block exit on an unread queue


class _ReaderBase:
    """Shared parent-side API of USBTrainID and TrainIdReader."""

    _state: _SharedState

    @property
    def status(self) -> str:
        """'connecting: ...', 'connected: <port>', 'disconnected: <reason>', 'stopped', 'fault: ...'."""
        return self._state.get_status()

    def counters(self) -> dict[str, int]:
        """Counter snapshot (:data:`COUNTER_NAMES`)."""
        return self._state.snapshot()

    def latest(self) -> TrainFrame | None:
        """Last frame received (from shared memory), or None before the first."""
        c = self._state.snapshot()
        if not c["frames"]:
            return None
        return TrainFrame(c["last_host_time_ns"], c["last_train_id"], c["last_beam_mode"])

    @property
    def connected(self) -> bool:
        return bool(self._state.snapshot()["connected"])

    def wait_connected(self, timeout_s: float = 5.0) -> bool:
        """Poll until connected; True if it happened within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected:
                return True
            time.sleep(0.01)
        return self.connected

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class USBTrainID(_ReaderBase):
    """European XFEL train-ID receiver read in a separate process.

    name: process name; source: see the module doc (default ``'/dev/ttyUSB0'``);
    callback: called with each ``list[TrainFrame]`` from a thread of the parent (then
    ``queue`` is consumed by that thread); queue_size: bound of :attr:`queue` (batches
    beyond it are dropped and counted in ``queue_drops``); zmq_address/zmq_format: see
    the module doc; mp_context: multiprocessing start method ('spawn' default);
    reconnect_min_s/reconnect_max_s: backoff bounds (s); read_timeout_s: longest block
    of one read (s), also the reaction time to ``stop()``.
    """

    def __init__(self, name: str = "USBTrainId", source: Any = "/dev/ttyUSB0",
                 callback: Callable[[list[TrainFrame]], None] | None = None,
                 queue_size: int = 100_000, zmq_address: str | None = None,
                 zmq_format: str = "json", mp_context: str = "spawn",
                 reconnect_min_s: float = 0.1, reconnect_max_s: float = 2.0,
                 read_timeout_s: float = 0.1, parser_kwargs: dict | None = None) -> None:
        if zmq_format not in ("json", "numpy"):
            raise ValueError(f"zmq_format must be 'json' or 'numpy', not {zmq_format!r}")
        make_transport(source)  # validate early, in the parent
        self.name = name
        self.source = source
        self.callback = callback
        self.zmq_address = zmq_address
        self.zmq_format = zmq_format
        self._ctx = mp.get_context(mp_context)
        self._state = _SharedState(self._ctx)
        self._stop = _SharedFlag(self._ctx)
        self.queue = self._ctx.Queue(queue_size)
        self._loop_kwargs = dict(read_timeout_s=read_timeout_s, reconnect_min_s=reconnect_min_s,
                                 reconnect_max_s=reconnect_max_s, parser_kwargs=parser_kwargs)
        self._proc: mp.process.BaseProcess | None = None
        self._drain: threading.Thread | None = None
        self._drain_stop = threading.Event()
        self.callback_errors = 0
        self.last_callback_error: str | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def status(self) -> str:
        """As for TrainIdReader, plus ``'fault: process exited with code N'`` when the
        child died without reporting (e.g. killed, or failed while starting)."""
        text = self._state.get_status()
        proc = self._proc
        if (proc is not None and not proc.is_alive() and proc.exitcode is not None
                and not text.startswith(("stopped", "fault"))):
            text = f"fault: process exited with code {proc.exitcode} (last status: {text})"
        return text

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child process to end (multiprocessing.Process compatibility)."""
        if self._proc is not None:
            self._proc.join(timeout)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        """Start the child process (and the callback thread)."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self._state.set_status("starting")
        self._proc = self._ctx.Process(
            target=_child_main, name=self.name, daemon=True,
            args=(self.source, self._stop, self._state, self.queue, self.zmq_address,
                  self.zmq_format, os.getpid(), self._loop_kwargs))
        self._proc.start()
        if self.callback is not None:
            self._drain = threading.Thread(target=self._drain_loop, name=f"{self.name}-callback",
                                           daemon=True)
            self._drain.start()

    def _drain_loop(self) -> None:
        while not self._drain_stop.is_set():
            try:
                frames = self.queue.get(timeout=0.05)
            except queue_mod.Empty:
                continue
            except (OSError, ValueError, EOFError):
                return
            try:
                self.callback(frames)
            except Exception as exc:  # noqa: BLE001 - a bad callback must not kill the reader
                self.callback_errors += 1
                self.last_callback_error = f"{type(exc).__name__}: {exc}"

    def get(self, timeout_s: float = 0.0) -> list[TrainFrame]:
        """All frames now in the queue (waiting up to ``timeout_s`` for the first batch).
        Not to be used together with a callback."""
        return _drain_batches(self.queue, timeout_s)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the child (terminate/kill it if it does not end in time); returns
        within ``timeout_s`` plus a few ms."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        proc = self._proc
        if proc is not None:
            proc.join(max(0.0, deadline - time.monotonic() - 0.4))
            if proc.is_alive():
                proc.terminate()
                proc.join(max(0.05, deadline - time.monotonic() - 0.15))
            if proc.is_alive():
                proc.kill()
                proc.join(0.1)
        self._drain_stop.set()
        if self._drain is not None and self._drain is not threading.current_thread():
            self._drain.join(max(0.05, deadline - time.monotonic()))
        if proc is not None and not proc.is_alive():
            status = self._state.get_status()
            if not status.startswith(("stopped", "fault")):
                self._state.set_status("stopped")

    def close(self) -> None:
        """Stop and release the queue."""
        self.stop()
        self.queue.close()
        self.queue.cancel_join_thread()


class TrainIdReader(_ReaderBase):
    """The same reader as :class:`USBTrainID` in a daemon thread of this process.

    Frames go to ``callback(frames)`` (called in the reader thread: keep it short), else
    to :attr:`queue` (a ``queue.Queue`` of ``list[TrainFrame]``), and to ZMQ PUB if
    ``zmq_address`` is set.
    """

    def __init__(self, source: Any = "/dev/ttyUSB0",
                 callback: Callable[[list[TrainFrame]], None] | None = None,
                 queue_size: int = 100_000, zmq_address: str | None = None,
                 zmq_format: str = "json", name: str = "TrainIdReader",
                 reconnect_min_s: float = 0.1, reconnect_max_s: float = 2.0,
                 read_timeout_s: float = 0.1, parser_kwargs: dict | None = None) -> None:
        self.name = name
        self.source = source
        self.callback = callback
        self._transport = make_transport(source)
        self.queue: queue_mod.Queue = queue_mod.Queue(queue_size)
        self._state = _SharedState(mp.get_context("spawn"))
        self._stop = threading.Event()
        self._pub = _ZmqPublisher(zmq_address, zmq_format) if zmq_address else None
        self._loop_kwargs = dict(read_timeout_s=read_timeout_s, reconnect_min_s=reconnect_min_s,
                                 reconnect_max_s=reconnect_max_s, parser_kwargs=parser_kwargs)
        self._thread: threading.Thread | None = None
        self.callback_errors = 0
        self.last_callback_error: str | None = None

    def _emit(self, frames: list[TrainFrame]) -> None:
        if self.callback is not None:
            try:
                self.callback(frames)
            except Exception as exc:  # noqa: BLE001
                self.callback_errors += 1
                self.last_callback_error = f"{type(exc).__name__}: {exc}"
        else:
            try:
                self.queue.put_nowait(frames)
            except queue_mod.Full:
                self._state.add("queue_drops")
        if self._pub is not None:
            self._pub.send(frames)

    def _run(self) -> None:
        try:
            run_read_loop(self._transport, self._stop, self._emit, self._state, **self._loop_kwargs)
        except Exception as exc:  # noqa: BLE001
            self._state.set_status(f"fault: {type(exc).__name__}: {exc}")

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._state.set_status("starting")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def get(self, timeout_s: float = 0.0) -> list[TrainFrame]:
        """All frames now in the queue (waiting up to ``timeout_s`` for the first batch)."""
        return _drain_batches(self.queue, timeout_s)

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if self._pub is not None:
            self._pub.close()
            self._pub = None

    close = stop


# --------------------------------------------------------------------------- simulator

@dataclass
class SimFaults:
    """Faults injected by :class:`SimulatedReceiver` (0 = never). Frame k counts from 1.

    bad_crc_every: every Nth frame gets a wrong CRC; bad_hex_every: a non-hex character;
    garbage_every: ``garbage`` bytes are written before every Nth frame;
    repeat_every: every Nth frame is sent twice; drop_etx_every: every Nth frame loses
    its ETX; split_writes: each frame is written in ``split_parts`` pieces with
    ``split_delay_s`` between them; pack: frames are written ``pack`` per write.
    """

    bad_crc_every: int = 0
    bad_hex_every: int = 0
    garbage_every: int = 0
    garbage: bytes = b"\x00\xffnoise\x03\r\n"
    repeat_every: int = 0
    drop_etx_every: int = 0
    split_writes: bool = False
    split_parts: int = 3
    split_delay_s: float = 0.002
    pack: int = 1


@dataclass
class SimCounts:
    """What :class:`SimulatedReceiver` did (for exact assertions)."""

    ticks: int = 0                 # trains elapsed (sent or not)
    sent_ids: list[int] = field(default_factory=list)   # IDs written as valid frames (repeats once)
    bad_crc: int = 0
    bad_hex: int = 0
    garbage_bytes: int = 0
    repeated: int = 0
    dropped_etx: int = 0
    unplugged_ticks: int = 0       # trains while unplugged
    write_drops: int = 0           # writes lost because the pty buffer was full


#: Simulated receivers alive in this process (their pty fds are closed in forked children).
_LIVE_SIMULATORS: "weakref.WeakSet[SimulatedReceiver]" = weakref.WeakSet()


def _close_sim_fds_after_fork() -> None:
    """In a forked child (a pipeline stage, a DeviceTestContext server) drop the copies
    of every simulator's pty fds: a child keeping the master open would hide ``unplug()``
    from readers (the pty slave reports EIO only once every master fd is closed). No lock
    is taken: the thread that might hold it does not exist in the child."""
    for sim in list(_LIVE_SIMULATORS):
        fds = (sim._master, sim._slave)
        sim._master = sim._slave = None
        sim._lock = threading.Lock()
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_sim_fds_after_fork)


class SimulatedReceiver:
    """A fake XFEL timing receiver on a pty.

    rate_hz: frames per second (10 at XFEL); start_train_id: first ID (one more per
    tick, also while unplugged, like the real timing system); beam_mode: 32-bit word;
    faults: :class:`SimFaults` or a dict of its fields; max_frames: stop sending after
    this many ticks (None: forever); link_dir: folder of the stable ``.path`` symlink
    (default: a private temporary folder, removed by ``stop()``).
    """

    def __init__(self, rate_hz: float = 10.0, start_train_id: int = 1_000_000_000,
                 beam_mode: int = 0x0000_0001, faults: SimFaults | dict | None = None,
                 max_frames: int | None = None, link_dir: str | None = None) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self.rate_hz = float(rate_hz)
        self.start_train_id = int(start_train_id)
        self.beam_mode = int(beam_mode)
        self.faults = faults if isinstance(faults, SimFaults) else SimFaults(**(faults or {}))
        self.max_frames = max_frames
        self._own_dir = link_dir is None
        self._dir = link_dir or tempfile.mkdtemp(prefix="tpx-trainid-")
        self.path = os.path.join(self._dir, "ttyTRAINID")
        self.pty_path: str | None = None
        self.counts = SimCounts()
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = threading.Event()   # set when max_frames ticks have passed
        self._plug()
        _LIVE_SIMULATORS.add(self)

    # ---- pty handling
    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)          # raw before anyone reads: 0x03 must not become ^C
        os.set_blocking(master, False)
        self.pty_path = os.ttyname(slave)
        tmp = self.path + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(self.pty_path, tmp)
        os.replace(tmp, self.path)   # atomic, like udev updating /dev/serial/by-id
        with self._lock:
            self._master, self._slave = master, slave

    def _unplug_fds(self) -> None:
        with self._lock:
            fds = (self._master, self._slave)
            self._master = self._slave = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for fd in fds:
            if fd is not None:
                os.close(fd)

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def unplug(self) -> None:
        """Close the pty (readers get EIO) and remove ``.path``."""
        self._unplug_fds()

    def replug(self) -> None:
        """A new pty behind ``.path`` (no-op if plugged)."""
        if not self.plugged:
            self._plug()

    # ---- frame generation
    def frame_bytes(self, k: int, train_id: int) -> bytes:
        """Bytes written for tick ``k`` (from 1) with ``train_id``, faults applied and
        counted."""
        f, c = self.faults, self.counts
        out = b""
        if f.garbage_every and k % f.garbage_every == 0:
            out += f.garbage
            c.garbage_bytes += len(f.garbage)
        if f.bad_crc_every and k % f.bad_crc_every == 0:
            good = encode_frame(train_id, self.beam_mode)
            bad_crc = (int(good[25:27], 16) ^ 0x5A) & 0xFF
            c.bad_crc += 1
            return out + encode_frame(train_id, self.beam_mode, crc_value=bad_crc)
        frame = encode_frame(train_id, self.beam_mode)
        if f.bad_hex_every and k % f.bad_hex_every == 0:
            c.bad_hex += 1
            return out + frame[:5] + b"G" + frame[6:]
        if f.drop_etx_every and k % f.drop_etx_every == 0:
            c.dropped_etx += 1
            return out + frame[:-1]
        c.sent_ids.append(train_id)
        out += frame
        if f.repeat_every and k % f.repeat_every == 0:
            c.repeated += 1
            out += frame
        return out

    def _write(self, data: bytes) -> None:
        f = self.faults
        pieces = [data]
        if f.split_writes and f.split_parts > 1 and len(data) > 1:
            cuts = np.linspace(0, len(data), f.split_parts + 1).astype(int)
            pieces = [data[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        for i, piece in enumerate(pieces):
            with self._lock:
                fd = self._master
                if fd is None:
                    return
                try:
                    os.write(fd, piece)
                except BlockingIOError:
                    self.counts.write_drops += 1
                    return
                except OSError:
                    return
            if i < len(pieces) - 1:
                self._stop.wait(f.split_delay_s)

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        t0 = time.monotonic()
        k = 0
        pending = b""
        while not self._stop.is_set():
            k += 1
            if self.max_frames is not None and k > self.max_frames:
                break
            delay = t0 + k * period - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            train_id = self.start_train_id + k - 1
            self.counts.ticks = k
            if not self.plugged:
                self.counts.unplugged_ticks += 1
                pending = b""
                continue
            pending += self.frame_bytes(k, train_id)
            if k % max(1, self.faults.pack) == 0:
                self._write(pending)
                pending = b""
        if pending and self.plugged:
            self._write(pending)
        self.done.set()

    def start(self) -> "SimulatedReceiver":
        if self._thread is not None:
            raise RuntimeError("simulated receiver already started")
        if not self.plugged:
            self._plug()
        self._thread = threading.Thread(target=self._run, name="SimulatedReceiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending, close the pty and remove the symlink (and its folder if private)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._unplug_fds()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "SimulatedReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["USBTrainID", "TrainIdReader", "SimulatedReceiver", "SimFaults", "SimCounts",
           "COUNTER_NAMES", "ZMQ_TOPIC", "decode_zmq_message", "make_transport", "run_read_loop",
           "TransportError"]
