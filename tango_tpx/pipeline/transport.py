"""ZeroMQ transport helpers: sockets between stages carry :mod:`.messages` frames.

Between stages: PUSH (sender connects) -> PULL (receiver binds) over ``ipc://`` endpoints
named in Linux's abstract socket namespace (``ipc://@tpx-pipe-<pid>-<random>/<name>``): they
create no file, so nothing is left behind, even by a process that is killed.  Sends are non-blocking with bounded
retries so that no stage can hang forever on a dead peer. Large payloads between
the receiver, the decoder and the centroid workers travel through shared-memory rings
(:mod:`.shmring`); the sockets then carry only small messages naming a ring slot.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Callable

import zmq

from .messages import decode_frames, encode_frames

#: default high-water marks (messages) of stage sockets; a raw chunk is up to ~4 MiB.
DEFAULT_HWM = 32


def make_run_dir() -> str:
    """A unique name for this run's ``ipc://`` endpoints (abstract namespace: no file or
    directory is created; the names vanish with the last socket bound to them)."""
    return f"tpx-pipe-{os.getpid()}-{secrets.token_hex(6)}"


def ipc_address(run_dir: str, name: str) -> str:
    """``ipc://`` endpoint ``name`` of the run ``run_dir`` (see :func:`make_run_dir`)."""
    return f"ipc://@{run_dir}/{name}"


def pull_socket(ctx: zmq.Context, address: str, hwm: int = DEFAULT_HWM) -> zmq.Socket:
    """A bound PULL socket (the receiving side of a stage input)."""
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(address)
    return s


def push_socket(ctx: zmq.Context, address: str, hwm: int = DEFAULT_HWM, linger_ms: int = 1000) -> zmq.Socket:
    """A connected PUSH socket (the sending side towards a stage input)."""
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.LINGER, linger_ms)
    s.connect(address)
    return s


def send(sock: zmq.Socket, msg_type: int, data: Any, seq: int = 0, meta: dict | None = None,
         block_s: float = 0.0, abort: Callable[[], bool] | None = None) -> bool:
    """Send one message zero-copy; retry for up to ``block_s`` seconds while the peer's
    queue is full (stopping early when ``abort()`` is true). Returns False if not sent."""
    frames = encode_frames(msg_type, data, seq, meta)
    deadline = None
    while True:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            now = time.monotonic()
            if deadline is None:
                deadline = now + block_s
            if now >= deadline or (abort is not None and abort()):
                return False
            time.sleep(0.001)


def recv(sock: zmq.Socket, flags: int = 0):
    """Receive one message: ``(type, data, seq, meta)`` (zero-copy arrays)."""
    return decode_frames(sock.recv_multipart(flags=flags, copy=False))
