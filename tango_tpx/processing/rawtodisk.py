"""pymepix import path of ``Raw2Disk``: write raw bytes to a file from a writer thread.

``Raw2Disk(context=None)``; ``open_file(socket, filename)`` -> True, or False (as pymepix)
when a file is already open, ``filename`` exists or its directory does not;
``write(data)`` queues a copy of ``data`` (bytes-like); ``close()`` waits until everything
queued is on disk, closes the file and returns True (False when no file was open).
The file holds exactly the bytes given, back to back (``header=True`` puts pymepix's
8-byte little-endian ``time.time_ns()`` first). ``socket`` and ``context`` belong to
pymepix's ZeroMQ hand-shake and are not needed here (any value, e.g. None).

The live pipeline records with its own writer (O_DIRECT, no copy, off the receive path):
:class:`tango_tpx.pipeline.raw2disk.Raw2Disk` inside the UDP receiver, driven by
``open_file``/``close_file`` of the pipeline or the Tango device.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

_CLOSE = object()


class Raw2Disk:
    """See the module doc. ``last_error`` says why the last open or write failed."""

    def __init__(self, context: Any = None, *, header: bool = False) -> None:
        self.context = context
        self.header = bool(header)
        self.writing = False
        self.filename = ""
        self.bytes_written = 0
        self.last_error: str | None = None
        self._fh = None
        self._queue: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def open_file(self, socket: Any, filename: str) -> bool:
        """Create ``filename`` (never overwrites) and start writing; see the module doc."""
        if self.writing:
            self.last_error = f"already writing {self.filename}"
            return False
        path = os.fspath(filename)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            self.last_error = f"directory {directory} does not exist"
            return False
        try:
            self._fh = open(path, "xb")
        except OSError as exc:
            self.last_error = f"cannot create {path}: {exc.strerror or exc}"
            return False
        if self.header:
            self._fh.write(time.time_ns().to_bytes(8, "little"))
        self.filename, self.bytes_written, self.writing, self.last_error = path, 0, True, None
        self._done.clear()
        self._thread = threading.Thread(target=self._writer, name="Raw2Disk", daemon=True)
        self._thread.start()
        return True

    def _writer(self) -> None:
        fh = self._fh
        try:
            while True:
                item = self._queue.get()
                if item is _CLOSE:
                    break
                try:
                    fh.write(item)
                    self.bytes_written += len(item)
                except OSError as exc:      # e.g. disk full: keep what is written, drop the rest
                    self.last_error = f"write to {self.filename} failed: {exc.strerror or exc}"
        finally:
            try:
                fh.close()
            except OSError as exc:
                self.last_error = f"close of {self.filename} failed: {exc.strerror or exc}"
            self._done.set()

    def write(self, data: Any) -> bool:
        """Queue a copy of ``data`` for the file; False (nothing queued) when no file is open."""
        if not self.writing:
            self.last_error = "cannot write: no file open"
            return False
        self._queue.put(bytes(memoryview(data).cast("B")))
        return True

    def close(self, socket: Any = None) -> bool:
        """Write what is queued, close the file; True when a file was open."""
        if not self.writing:
            return False
        self._queue.put(_CLOSE)
        self._done.wait()
        self._thread.join()
        self.writing = False
        self._fh = self._thread = None
        return self.last_error is None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


__all__ = ["Raw2Disk"]
