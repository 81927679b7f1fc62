"""The pipeline's collector: a thread in the caller's process that receives the final
outputs of every stage, restores the decoder's order of ``CentroidData`` (by sequence
number), and delivers ``(MessageType, data)`` (a :class:`~.messages.QueueMessage` that also
says the settings version) to ``data_queue`` (optionally converted, e.g.
to pymepix's shapes) and to the public PUB stream."""

from __future__ import annotations

import threading
from typing import Any

import zmq

from . import transport
from .counters import SharedCounters
from .livesettings import META_SETTINGS_VERSION
from .messages import MessageType, QueueMessage, decode_frames


class Collector(threading.Thread):
    """Receives the final outputs in the caller's process; re-orders and delivers them."""

    def __init__(self, address: str, expected_eos: int, data_queue: Any, pub: zmq.Socket | None,
                 counters: SharedCounters, convert: Any = None, end_marker: bool = False) -> None:
        super().__init__(name="pipeline-collector", daemon=True)
        self.address = address
        self.expected_eos = expected_eos
        self.data_queue = data_queue
        self.convert = convert          # typed record -> pymepix shape (None: typed records)
        self.end_marker = end_marker    # put None on data_queue at the end (feeds a queue stage)
        self.pub = pub
        self.counters = counters
        self.ready = threading.Event()
        self.done = threading.Event()
        self.stop_flag = False
        self.error: str | None = None
        self.ctx: zmq.Context | None = None

    def run(self) -> None:
        sock = None
        try:
            self.ctx = zmq.Context()
            sock = transport.pull_socket(self.ctx, self.address, hwm=1000)
            self.ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            eos = 0
            next_seq = 0
            held: dict[int, Any] = {}
            while not self.stop_flag:
                if not poller.poll(50):
                    continue
                frames = sock.recv_multipart(copy=False)
                mtype, data, seq, meta = decode_frames(frames)
                if mtype == MessageType.EndOfStream:
                    eos += 1
                    if eos >= self.expected_eos:
                        break
                    continue
                if mtype == MessageType.CentroidData:      # restore the decoder's order
                    held[seq] = (frames, mtype, data, meta)
                    while next_seq in held:
                        self._deliver(*held.pop(next_seq))
                        next_seq += 1
                else:
                    self._deliver(frames, mtype, data, meta)
            for s in sorted(held):                         # gaps only after a dead worker
                self._deliver(*held[s])
        except Exception as exc:  # reported through AcquisitionPipeline.fault()
            self.error = f"collector: {type(exc).__name__}: {exc}"
        finally:
            self.ready.set()
            if sock is not None:
                sock.close(linger=0)
            if self.end_marker:
                self.data_queue.put(None)
            self.done.set()

    def _deliver(self, frames, mtype, data, meta: dict) -> None:
        if self.data_queue is not None:
            if self.convert is not None:
                data = self.convert(mtype, data)
            self.data_queue.put(QueueMessage(mtype, data, meta.get(META_SETTINGS_VERSION)))
        if self.pub is not None:
            try:
                self.pub.send_multipart([mtype.name.encode()] + list(frames), copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        self.counters.add("delivered", 1)
