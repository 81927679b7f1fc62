"""Process tuning for throughput, only inside a context manager that undoes it on exit.

:class:`ProcessTuning` (the converter's calling process, and each pool worker):

* the garbage collector paused (the loops create no reference cycles worth collecting) and,
  with ``freeze``, what exists at entry moved to the permanent generation (no scans of it,
  no copy-on-write of it in forked children); re-enabled / unfrozen on exit;
* glibc keeps batch-sized memory in its heap (:func:`keep_heap`): without it every array
  above ~1-32 MB is a fresh ``mmap`` whose pages the kernel faults in and zeroes, ~15 ns/hit
  of system time per batch; the defaults are restored and free memory returned on exit;
* optionally SIGTERM raises ``interrupt_exc("SIGTERM")`` in the main thread (never installed
  from another thread: ``signal.signal`` is main-thread only); the old handler is restored.
"""

from __future__ import annotations

import ctypes
import gc
import signal
import threading

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20                  # glibc's largest M_MMAP_THRESHOLD (64-bit)
_DEFAULT_THRESHOLD = 128 << 10                  # glibc's default for both (bytes)
_heap_lock = threading.Lock()
_heap_users = 0                                 # ProcessTuning contexts keeping the heap


def keep_heap(keep: bool = True) -> bool:
    """glibc only: serve arrays up to 32 MB from the heap and keep freed memory there
    (``keep``), or go back to the defaults and return free memory to the OS. Returns False
    where there is no glibc (nothing tuned). Process-wide: use :class:`ProcessTuning`."""
    try:
        libc = ctypes.CDLL(None)
        if keep:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        else:
            libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
            libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


class ProcessTuning:
    """Context manager: garbage collector paused (and with ``freeze`` the existing objects
    frozen), glibc keeping batch-sized memory, SIGTERM -> ``interrupt_exc`` in the main
    thread; all undone on exit. Nested or concurrent uses (threads) are fine: the heap
    defaults come back when the last one exits, each restores the gc state it found."""

    def __init__(self, interrupt_exc: type[BaseException] | None = None, *, freeze: bool = False,
                 heap: bool = True) -> None:
        self.interrupt_exc = interrupt_exc
        self.freeze = freeze
        self.heap = heap
        self.old_handler = None
        self.gc_enabled = True
        self._tuned_heap = False

    def __enter__(self) -> "ProcessTuning":
        self.gc_enabled = gc.isenabled()
        if self.freeze:
            gc.freeze()
        gc.disable()
        if self.heap:
            global _heap_users
            with _heap_lock:
                self._tuned_heap = _heap_users > 0 or keep_heap(True)
                _heap_users += self._tuned_heap
        if self.interrupt_exc is not None and threading.current_thread() is threading.main_thread():
            exc = self.interrupt_exc

            def handler(signum, frame):
                raise exc("SIGTERM")

            self.old_handler = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.old_handler is not None:
            signal.signal(signal.SIGTERM, self.old_handler)
            self.old_handler = None
        if self._tuned_heap:
            global _heap_users
            with _heap_lock:
                _heap_users -= 1
                if _heap_users == 0:
                    keep_heap(False)
            self._tuned_heap = False
        if self.freeze:
            gc.unfreeze()
        if self.gc_enabled:
            gc.enable()


__all__ = ["keep_heap", "ProcessTuning"]
