"""Train-ID batches on a ZeroMQ PUB socket: the publisher and :func:`decode_zmq_message`.

Each batch is three frames ``[ZMQ_TOPIC, format, payload]``: format ``b'json'`` with payload
``[{"host_time_ns":..., "train_id":..., "beam_mode":...}, ...]``, or ``b'numpy'`` with the raw
little-endian bytes of a :data:`~tango_tpx.trainid.protocol.TRAINID_DTYPE` array.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from .protocol import TRAINID_DTYPE, TrainFrame, array_to_frames, frames_to_array

__all__ = ["ZMQ_TOPIC", "decode_zmq_message"]

#: ZMQ topic (first message frame) of published train-ID batches.
ZMQ_TOPIC = b"trainid"


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
