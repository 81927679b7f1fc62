"""Train-ID readers (a process and a thread); the simulated receiver on a pty is re-exported.

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

Parts: :mod:`.readloop` (the read loop, transports, the orphan guard), :mod:`.shared`
(shared-memory status and counters), :mod:`.zmqpub` (ZMQ PUB), :mod:`.simreceiver` (the
simulated receiver); this module holds the two readers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from typing import Any, Callable

from .protocol import TrainFrame, TransportError
from .readloop import make_transport, run_read_loop
from .shared import COUNTER_NAMES, _drain_batches, _SharedFlag, _SharedState
from .simreceiver import SimCounts, SimFaults, SimulatedReceiver
from .zmqpub import ZMQ_TOPIC, _ZmqPublisher, decode_zmq_message


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


__all__ = ["USBTrainID", "TrainIdReader", "SimulatedReceiver", "SimFaults", "SimCounts",
           "COUNTER_NAMES", "ZMQ_TOPIC", "decode_zmq_message", "make_transport", "run_read_loop",
           "TransportError"]
