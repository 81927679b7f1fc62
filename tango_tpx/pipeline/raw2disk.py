"""Raw2Disk: byte-exact recording of the raw UDP stream, off the receive path (pymepix name).

Runs as a writer thread inside the :class:`~tango_tpx.pipeline.udpsampler.UdpSampler`
process: the receive loop hands it whole chunks (numpy uint8 arrays, no copy) in order;
``open``/``close`` are queued between chunks, so a file holds exactly the chunks handed
over between its open and its close (switching files loses and duplicates nothing).
Files are pymepix ``.raw``: an 8-byte little-endian ``time.time_ns()`` header followed by
the UDP payloads back to back (the format of :class:`tango_tpx.tpx3.files.RawFileWriter`).

A write error (ENOSPC: disk full, EIO ...) closes the file (what was written stays
readable), drops the rest of that recording (counted) and reports a fault; reception
goes on. If the disk is slower than the stream, chunks beyond ``max_pending_bytes`` are
dropped from the recording (counted, fault reported) instead of stalling reception.

Files are written by :class:`DirectRawFileWriter`: ``O_DIRECT`` writes of a page-aligned
staging buffer (block-aligned sizes; the unaligned tail is written padded and the file
truncated to its exact length at close). Measured on the 2-core test machine: buffered
writes cost 0.7 to 2 s of CPU per GB (page cache copy, dirty-page writeback), ``O_DIRECT``
0.03 to 0.08 s per GB plus the staging copy (~0.1 s per GB), which is what lets one core
record a full chip (640 MB/s). Where ``O_DIRECT`` is refused (tmpfs ...) the same large
writes go through the page cache.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from typing import Callable

import numpy as np

from .counters import SharedCounters

#: alignment of O_DIRECT file offsets, sizes and buffer addresses (bytes).
DIRECT_ALIGN = 4096
#: staging buffer of :class:`DirectRawFileWriter` (bytes, a multiple of DIRECT_ALIGN).
STAGE_BYTES = 8 << 20


def _as_bytes(data) -> memoryview:
    """A flat byte view of ``data`` (bytes, memoryview, or a contiguous ndarray)."""
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data)).cast("B")
    mv = memoryview(data)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


class DirectRawFileWriter:
    """pymepix ``.raw`` file writer (8-byte LE ``time_ns`` header, then payload bytes)
    using large ``O_DIRECT`` writes; same interface as :class:`tango_tpx.tpx3.files.RawFileWriter`.

    path: created exclusively (FileExistsError if it exists); time_ns: header value (default
    ``time.time_ns()`` at open); header=False: no header; direct=False: page-cache writes.
    Bytes are staged in a page-aligned buffer of ``STAGE_BYTES`` and written in multiples of
    ``DIRECT_ALIGN``; :meth:`close` writes the tail (padded to a block) and truncates the file
    to its exact size. ``bytes_written`` counts payload bytes accepted (the header excluded);
    ``direct`` says whether O_DIRECT is in use. Write errors (ENOSPC ...) raise OSError.
    """

    def __init__(self, path: str | os.PathLike, time_ns: int | None = None, header: bool = True,
                 direct: bool = True) -> None:
        self.path = str(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        odirect = getattr(os, "O_DIRECT", 0) if direct else 0
        fd = -1
        if odirect:
            try:
                fd = os.open(self.path, flags | odirect, 0o644)
            except OSError as exc:
                if isinstance(exc, FileExistsError):
                    raise
                fd = -1               # EINVAL: this file system refuses O_DIRECT
        if fd < 0:
            odirect = 0
            fd = os.open(self.path, flags, 0o644)
        self._fd = fd
        self.direct = bool(odirect)
        self._stage_mm = mmap.mmap(-1, STAGE_BYTES)          # page aligned
        self._stage = np.frombuffer(self._stage_mm, np.uint8)
        self._fill = 0              # staged bytes not yet on disk
        self._file_pos = 0          # bytes on disk (always a multiple of DIRECT_ALIGN if direct)
        self.bytes_written = 0
        self.header_bytes = 0
        self.time_ns: int | None = None
        if header:
            self.time_ns = int(time.time_ns() if time_ns is None else time_ns)
            self._stage[:8] = np.frombuffer(self.time_ns.to_bytes(8, "little"), np.uint8)
            self._fill = 8
            self.header_bytes = 8

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _write_out(self, nbytes: int) -> None:
        """Write ``_stage[:nbytes]`` (a multiple of DIRECT_ALIGN when direct) at _file_pos."""
        mv = memoryview(self._stage_mm)[:nbytes]
        done = 0
        try:
            while done < nbytes:
                k = os.write(self._fd, mv[done:])
                if k <= 0:
                    raise OSError(28, "No space left on device")
                done += k
        finally:
            mv.release()
        self._file_pos += nbytes

    def write(self, data) -> int:
        """Append payload bytes (bytes, memoryview or ndarray); returns bytes accepted."""
        if self._fd < 0:
            raise ValueError("write to a closed file")
        src = np.frombuffer(_as_bytes(data), np.uint8)
        n = src.size
        pos = 0
        stage, cap = self._stage, STAGE_BYTES
        while pos < n:
            k = min(cap - self._fill, n - pos)
            stage[self._fill:self._fill + k] = src[pos:pos + k]
            self._fill += k
            pos += k
            if self._fill == cap:
                self._write_out(cap)
                self._fill = 0
        self.bytes_written += n
        return n

    def flush(self) -> None:
        """Write the whole blocks staged so far (the unaligned tail stays staged)."""
        whole = (self._fill // DIRECT_ALIGN) * DIRECT_ALIGN if self.direct else self._fill
        if whole:
            self._write_out(whole)
            rest = self._fill - whole
            self._stage[:rest] = self._stage[whole:self._fill].copy()
            self._fill = rest

    def close(self) -> None:
        """Write what is staged and truncate the file to header + payload bytes."""
        if self._fd < 0:
            return
        try:
            size = self._file_pos + self._fill
            if self._fill:
                pad = -(-self._fill // DIRECT_ALIGN) * DIRECT_ALIGN if self.direct else self._fill
                self._write_out(pad)
            if self.direct:
                os.ftruncate(self._fd, size)
        finally:
            fd, self._fd = self._fd, -1
            self._fill = 0
            os.close(fd)
            self._stage = None
            self._stage_mm.close()

    def __enter__(self) -> "DirectRawFileWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: the file writer class (a module attribute so tests can substitute a failing one).
RawFileWriter = DirectRawFileWriter


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
