"""The converter's ordered worker pool: batches in, events + centroids out, in order.

Batch ``i`` goes to worker ``i % N`` through a shared-memory slot (anonymous ``MAP_SHARED``
mmap inherited by forked workers; 39 bytes per pixel of capacity); results are handed on
in submission order. N = 1 processes every batch in the calling process (no pool).

Start-up is safe from any thread and any process: workers are forked only from a process in
which no other Python thread runs; otherwise (a Tango server, a GUI, a Dask worker thread)
they are started with ``forkserver`` (or ``spawn``) and batches travel pickled. A daemonic
process (a Dask nanny's worker, a multiprocessing pool child) may not have children: there
the pool runs inline. Workers die with their parent (``PR_SET_PDEATHSIG`` plus a watchdog).
Process tuning (garbage collector paused, glibc keeping batch-sized memory) is done only
inside :class:`ProcessTuning` and undone when it exits.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from tango_tpx.io.batching import Batch, BatchResult, count_before, gather_pieces, make_state, process_batch


def _die_with_parent() -> None:
    """Make this worker exit when its parent dies (no orphans); Ctrl-C is the parent's business,
    SIGTERM (``Pool.terminate``) ends the worker at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent:  # parent already gone
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20                  # glibc's largest M_MMAP_THRESHOLD (64-bit)


def keep_heap(keep: bool = True) -> None:
    """glibc only: serve the batch-sized arrays (up to 32 MB) from the heap and keep freed
    memory there (``keep``), or go back to the defaults and return free memory to the OS.

    By default every array above ~1-32 MB is a fresh ``mmap`` whose pages are faulted in
    and zeroed by the kernel, and freed memory goes back at once: per batch that was ~15
    ns/hit of system time in the workers. Kept, the same memory is reused batch after batch
    (memory stays bounded: the batches have bounded sizes)."""
    try:
        libc = ctypes.CDLL(None)
        if keep:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        else:
            libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
            libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10)
            libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass



def warm_up(params: dict) -> None:
    """Run a tiny batch through events + clustering, so that numba's kernels are loaded (from
    its cache, ~0.2 s of CPU per process) before the workers are forked, not once in each."""
    from tango_tpx.tpx3.hits import PixelHits

    n = 8
    px = PixelHits(np.full(n, 5, np.uint16), np.arange(n, dtype=np.uint16) % 3 + 5,
                   np.arange(n, dtype=np.int64) * 4096 + 4096, np.full(n, 10, np.uint16), np.zeros(n, np.uint8))
    batch = Batch.of(px, np.zeros(1, np.int64), 0)
    process_batch(batch, make_state(params))
    slot = Slot(n, 1)
    slot.put(Batch([px], batch.trig_time, 0, count_before(px.toa, 4096 * 4), 4096 * 4), 3)


#: Shared-memory slot layout: (name, dtype, capacity kind). 8-byte columns first (alignment).
_SLOT_FIELDS = (
    ("in:toa", np.int64, "px"), ("in:trig", np.int64, "tr"),
    ("out:trigger nr", np.int64, "px"), ("out:tof", np.float64, "px"), ("out:tot", np.uint32, "px"),
    ("in:x", np.uint16, "px"), ("in:y", np.uint16, "px"), ("in:tot", np.uint16, "px"),
    ("out:x", np.uint16, "px"), ("out:y", np.uint16, "px"), ("in:chip", np.uint8, "px"),
)


class Slot:
    """A batch-sized shared memory area (anonymous ``MAP_SHARED`` mmap, inherited by forked
    workers): the batch's pixels and triggers go in, the ``raw/*`` columns come out, so the
    bulk data never goes through a pipe. 39 bytes per pixel of capacity."""

    def __init__(self, cap_px: int, cap_tr: int):
        import mmap

        self.cap_px, self.cap_tr = int(cap_px), int(cap_tr)
        layout, off = [], 0
        for name, dt, kind in _SLOT_FIELDS:
            n = self.cap_px if kind == "px" else self.cap_tr
            layout.append((name, np.dtype(dt), n, off))
            off += (n * np.dtype(dt).itemsize + 7) // 8 * 8
        self.mem = mmap.mmap(-1, max(off, 8))
        self.views = {name: np.frombuffer(self.mem, dtype=dt, count=n, offset=o) for name, dt, n, o in layout}

    def fits(self, n_pixels: int, batch: Batch) -> bool:
        return n_pixels <= self.cap_px and len(batch.trig_time) <= self.cap_tr

    def put(self, batch: Batch, n: int) -> tuple[int, int]:
        """Copy the batch in, gathered straight from the pending pieces (one pass)."""
        v = self.views
        gather_pieces(batch.pieces, batch.cut, n, {k[3:]: v[k] for k in ("in:toa", "in:x", "in:y", "in:tot", "in:chip")})
        v["in:trig"][:len(batch.trig_time)] = batch.trig_time
        return n, len(batch.trig_time)

    def get_batch(self, n_px: int, n_tr: int, first_nr: int) -> Batch:
        from tango_tpx.tpx3.hits import PixelHits

        v = self.views
        px = PixelHits(v["in:x"][:n_px], v["in:y"][:n_px], v["in:toa"][:n_px], v["in:tot"][:n_px], v["in:chip"][:n_px])
        return Batch.of(px, v["in:trig"][:n_tr], first_nr)

    def raw_views(self) -> dict:
        return {k[4:]: a for k, a in self.views.items() if k.startswith("out:")}

    def get_raw(self, n: int) -> dict:
        return {k[4:]: a[:n] for k, a in self.views.items() if k.startswith("out:")}


def _worker_loop(conn, params: dict, slots: list) -> None:
    """Worker process: batches in (through a slot or pickled), events + centroids out."""
    import traceback

    _die_with_parent()
    # a worker only runs numpy/numba on batches: no reference cycles worth collecting, and
    # what it inherited is never garbage (freeze it: no scans, no copy-on-write of it)
    gc.freeze()
    gc.disable()
    keep_heap()
    state = make_state(params)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        try:
            if msg[0] == "slot":
                _, s, n_px, n_tr, first_nr = msg
                slot = slots[s]
                # events <= pixels <= slot capacity: the raw columns fit in the slot
                res = process_batch(slot.get_batch(n_px, n_tr, first_nr), state, out=slot.raw_views())
                conn.send(("slot", len(res.raw["x"]), res.centroids, res.stats))
                continue
            else:
                res = process_batch(msg[1], state)
            conn.send(("obj", res))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    conn.close()


def single_threaded() -> bool:
    """True unless other Python threads run (a GUI, a pipeline, a Tango callback thread).

    Library pools that sit idle in C (OpenBLAS, numba) do not count: forking past them is
    what every numpy program using multiprocessing does, and the workers only run numpy/numba.
    """
    return threading.active_count() == 1


class Workers:
    """Ordered processing of batches: inline (N = 1) or on N worker processes.

    Batch ``i`` goes to worker ``i % N``; each worker has two shared-memory slots, so at
    most ``2 N`` batches are in flight. Results are handed to ``sink`` in submission order,
    before their slot is reused. A batch larger than a slot travels pickled instead.
    """

    def __init__(self, params: dict, n_processes: int, sink: Callable[[BatchResult], Any],
                 slot_pixels: int):
        self.n = max(1, int(n_processes))
        #: why the pool runs inline although more processes were asked for ('' = it does not)
        self.inline_reason = ""
        if self.n > 1 and multiprocessing.current_process().daemon:
            # a daemonic process (a Dask nanny's worker, a pool child) may not have children
            self.n, self.inline_reason = 1, "daemonic process: no worker processes, batches run inline"
        self.sink = sink
        self.procs: list = []
        self.conns: list = []
        self.inflight: deque = deque()
        self.count = 0
        if self.n == 1:
            self.state = make_state(params)
            return
        # fork (fast start, shared-memory slots inherited) only when no other Python thread runs:
        # forking a threaded program (a GUI, a Tango server) can deadlock the child
        methods = multiprocessing.get_all_start_methods()
        fork = "fork" in methods and single_threaded()
        ctx = multiprocessing.get_context("fork" if fork else "forkserver" if "forkserver" in methods else "spawn")
        self.slots = [Slot(slot_pixels, 1 << 16) for _ in range(2 * self.n)] if fork else []
        if fork:
            try:  # compile / load the kernels once here: forked workers inherit them
                warm_up(params)
            except Exception:  # only an optimisation: a real failure is the workers' to report
                pass
        try:
            for i in range(self.n):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_loop, args=(child, params, self.slots),
                                name=f"tango-tpx-convert-{i}", daemon=True)
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
        except BaseException:
            self.close(terminate=True)
            raise

    def submit(self, batch: Batch) -> None:
        if self.n == 1:
            self.sink(process_batch(batch.materialize(), self.state))
            return
        i = self.count
        self.count += 1
        w = i % self.n
        s = 2 * w + (i // self.n) % 2
        while len(self.inflight) >= 2 * self.n:
            self._collect()
        n = batch.n_pixels
        if self.slots and self.slots[s].fits(n, batch):
            n_px, n_tr = self.slots[s].put(batch, n)
            self.conns[w].send(("slot", s, n_px, n_tr, batch.first_nr))
        else:
            self.conns[w].send(("obj", batch.materialize()))
        self.inflight.append((w, s))

    def _collect(self) -> None:
        w, s = self.inflight.popleft()
        try:
            msg = self.conns[w].recv()
        except (EOFError, OSError):
            code = self.procs[w].exitcode
            raise RuntimeError(f"conversion worker {w} died (exit code {code})") from None
        if msg[0] == "error":
            raise RuntimeError(f"conversion worker {w} failed:\n{msg[1]}")
        if msg[0] == "slot":
            _, n_ev, cen, stats = msg
            self.sink(BatchResult(self.slots[s].get_raw(n_ev), cen, stats))
        else:
            self.sink(msg[1])

    def collect_ready(self) -> None:
        """Hand over results that are already finished at the head of the queue."""
        while self.inflight and self.conns[self.inflight[0][0]].poll():
            self._collect()

    def drain(self) -> None:
        while self.inflight:
            self._collect()

    def close(self, terminate: bool = False) -> None:
        for c in self.conns:
            if not terminate:
                try:
                    c.send(None)
                except OSError:
                    pass
        for p in self.procs:
            if terminate:
                p.terminate()
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []
        self.inflight.clear()


class ProcessTuning:
    """While converting: the garbage collector paused and glibc keeping batch-sized memory in
    the heap (the loop makes no reference cycles; fresh ``mmap``s cost ~15 ns/hit of page
    faults); both undone on exit. SIGTERM becomes ``interrupt_exc("SIGTERM")`` in the main
    thread only (no handler is installed from another thread)."""

    def __init__(self, interrupt_exc: type[BaseException] | None = None):
        self.interrupt_exc = interrupt_exc
        self.old_handler = None

    def __enter__(self) -> "ProcessTuning":
        self.gc_enabled = gc.isenabled()
        gc.disable()
        keep_heap(True)
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
        keep_heap(False)
        if self.gc_enabled:
            gc.enable()
