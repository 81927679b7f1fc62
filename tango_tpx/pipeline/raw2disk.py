"""Raw2Disk: byte-exact recording of the raw UDP stream, off the receive path (pymepix name).

Runs as a writer thread inside the :class:`~tango_tpx.pipeline.udpsampler.UdpSampler`
process: the receive loop hands it whole chunks (numpy uint8 arrays, no copy) in order;
``open``/``close`` are queued between chunks, so a file holds exactly the chunks handed
over between its open and its close (switching files loses and duplicates nothing).
Files are pymepix ``.raw``: an 8-byte little-endian ``time.time_ns()`` header followed by
the UDP payloads back to back (:class:`tango_tpx.tpx3.files.RawFileWriter`).

A write error (ENOSPC: disk full, EIO ...) closes the file (what was written stays
readable), drops the rest of that recording (counted) and reports a fault; reception
goes on. If the disk is slower than the stream, chunks beyond ``max_pending_bytes`` are
dropped from the recording (counted, fault reported) instead of stalling reception.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable

import numpy as np

from ..tpx3 import files as _files
from .counters import SharedCounters

#: the file writer class (a module attribute so tests can substitute a failing one).
RawFileWriter = _files.RawFileWriter


class Raw2Disk:
    """Ordered writer thread for raw chunks.

    counters: shared counters (``recorded_bytes``, ``record_dropped_bytes``);
    on_fault: ``callable(message)`` for non-fatal faults (disk full ...).
    """

    def __init__(self, counters: SharedCounters, on_fault: Callable[[str], None],
                 max_pending_bytes: int = 512 << 20) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._counters = counters
        self._on_fault = on_fault
        self._max_pending = max_pending_bytes
        self._pending = 0
        self._lock = threading.Lock()
        self.recording = False          # receive-thread view: chunks go to the queue
        self.path = ""
        self._thread = threading.Thread(target=self._run, name="Raw2Disk", daemon=True)
        self._thread.start()

    # -- receive-thread side -------------------------------------------------------------
    def open(self, path: str) -> str:
        """Create ``path`` now (FileExistsError/OSError raised here) and record every
        chunk handed over from now on. Closes a file already open (no gap, no overlap)."""
        path = os.path.abspath(path)
        writer = RawFileWriter(path)
        if self.recording:
            self._q.put(("close", None))
        self._q.put(("open", writer))
        self.recording = True
        self.path = path
        return path

    def close(self, done: Callable[[str, int], None] | None = None) -> None:
        """Stop recording after the chunks already handed over; ``done(path, payload_bytes)``
        is called from the writer thread once the file is closed."""
        self._q.put(("close", done))
        self.recording = False
        self.path = ""

    def put(self, chunk: np.ndarray, owner=None) -> None:
        """Hand over one chunk (only while recording). Never blocks. ``owner.written()`` is
        called once the chunk's memory is no longer needed."""
        n = chunk.nbytes
        with self._lock:
            if self._pending + n > self._max_pending:
                over = True
            else:
                self._pending += n
                over = False
        if over:
            self._counters.add("record_dropped_bytes", n)
            self._q.put(("overflow", n))
            if owner is not None:
                owner.written()
            return
        self._q.put(("data", (chunk, owner)))

    def stop(self, timeout: float = 3.0) -> bool:
        """Close any file and end the thread; True if it ended in time."""
        self._q.put(("close", None))
        self._q.put(("quit", None))
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        writer = None
        failed = False     # current recording hit an error: drop until the next open
        overflow_reported = False
        while True:
            kind, item = self._q.get()
            if kind == "data":
                item, owner = item
                n = item.nbytes
                with self._lock:
                    self._pending -= n
                if writer is None or failed:
                    if failed:
                        self._counters.add("record_dropped_bytes", n)
                else:
                    try:
                        writer.write(item)
                        self._counters.add("recorded_bytes", n)
                    except OSError as exc:
                        failed = True
                        self._counters.add("record_dropped_bytes", n)
                        self._fault(writer, exc)
                        writer = self._safe_close(writer)
                del item
                if owner is not None:
                    owner.written()
            elif kind == "open":
                writer, failed, overflow_reported = item, False, False
            elif kind == "overflow":
                if writer is not None and not overflow_reported:
                    overflow_reported = True
                    self._on_fault(f"recording to {writer.path} cannot keep up with the stream: "
                                   f"dropped {item} bytes from the file (disk too slow)")
            elif kind == "close":
                path = writer.path if writer is not None else ""
                nbytes = writer.bytes_written if writer is not None else 0
                if writer is not None:
                    try:
                        writer.close()
                    except OSError as exc:
                        self._fault(writer, exc)
                    writer = None
                failed = False
                if item is not None:
                    item(path, nbytes)
            elif kind == "quit":
                return

    def _fault(self, writer, exc: OSError) -> None:
        import errno
        what = "disk full" if exc.errno == errno.ENOSPC else "write error"
        self._on_fault(f"{what} while recording to {writer.path}: {exc} "
                       f"({writer.bytes_written} payload bytes written and kept; recording stopped)")

    @staticmethod
    def _safe_close(writer):
        try:
            writer.close()
        except OSError:
            pass
        return None
