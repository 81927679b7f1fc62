"""File series names and the background HDF5 conversion of recorded acquisitions.

:func:`series_path` builds ``{directory}/{prefix}{index:05d}.raw`` and refuses a name that
exists (files are never overwritten). :class:`BackgroundConverter` converts raw files to
HDF5 one after the other in a spawned child process (:func:`tango_tpx.io.convert_file`,
so the output equals ``tango-tpx convert`` with the same settings), publishing the progress
of the running one (0..100 %) and the last finished HDF5 file. The caller never waits.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import threading
from typing import Any


def series_path(directory: str, prefix: str, index: int, suffix: str = ".raw") -> str:
    """``directory/{prefix}{index:05d}{suffix}``; FileExistsError naming it if it exists."""
    path = os.path.join(directory, f"{prefix}{int(index):05d}{suffix}")
    if os.path.exists(path):
        raise FileExistsError(17, f"{path} already exists (files are never overwritten); raise FileIndex "
                                  "or change FilePrefix", path)
    return path


def hdf5_path_for(raw_path: str) -> str:
    """The HDF5 file next to a raw file: same name, ``.h5``."""
    base, _ = os.path.splitext(raw_path)
    return base + ".h5"


def _convert_child(raw: str, h5: str, kwargs: dict, progress) -> None:
    from tango_tpx.io import convert_file

    def on_progress(fraction: float) -> None:
        progress.value = 100.0 * float(fraction)

    convert_file(raw, h5, progress_callback=on_progress, **kwargs)
    progress.value = 100.0


class BackgroundConverter:
    """Converts queued raw files to HDF5, one at a time, in a spawned process."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._progress = self._ctx.Value("d", 0.0, lock=False)
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._proc = None
        self._closed = False
        self.last_hdf5 = ""
        self.error: str | None = None
        self.converted = 0

    @property
    def progress(self) -> float:
        """Percent done of the running (or last) conversion, 0..100."""
        return float(self._progress.value)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or (self._thread is not None and self._thread.is_alive())

    def submit(self, raw: str, h5: str, **kwargs: Any) -> None:
        """Queue ``raw`` -> ``h5`` (convert_file keyword arguments in ``kwargs``)."""
        with self._lock:
            self._queue.append((raw, h5, kwargs))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="auto-convert", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                if not self._queue:
                    return
                raw, h5, kwargs = self._queue.popleft()
            self._progress.value = 0.0
            proc = self._ctx.Process(target=_convert_child, args=(raw, h5, kwargs, self._progress),
                                     name="auto-convert", daemon=True)
            self._proc = proc
            proc.start()
            proc.join()
            if proc.exitcode == 0 and os.path.exists(h5):
                self.last_hdf5 = h5
                self.converted += 1
                self.error = None
            elif not self._closed:
                self.error = f"conversion of {raw} failed (exit code {proc.exitcode})"

    def wait(self, timeout: float) -> bool:
        """Wait until the queue is empty (tests, shutdown); True if it is."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.busy

    def close(self) -> None:
        """Stop: the running conversion is terminated (its ``.partial`` output is left)."""
        self._closed = True
        self._queue.clear()
        p = self._proc
        if p is not None and p.is_alive():
            p.terminate()
            p.join(5.0)
