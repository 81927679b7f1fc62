"""Status string, int64 counters and a stop flag in lock-free shared memory, readable from any
process; the counter names and the queue drain both train-ID readers share."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import time

from .protocol import PARSER_STATS, TrainFrame

__all__ = ["COUNTER_NAMES"]

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
