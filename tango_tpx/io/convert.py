"""Offline conversion: pymepix .raw / ASI .tpx3 file -> HDF5 (raw events, centroids, triggers).

Data flow (one pass, streaming)::

    calling process                                         worker processes (N >= 2)
    iter_words -> Decoder -+-> TDC edges ------------------> triggers/trigger{1,2}/time
                           +-> PacketProcessor (triggers) -> timing/timepix/*
                           +-> pixels -> _Batcher: trigger-aligned batches
                                          --(shared memory)--> PacketProcessor (events)
                                                               + CentroidCalculator
                              raw/*, centroided/*  <--(shared memory, in order)--

Decoding is sequential (time extension state) and cheap; it runs in the calling process,
which also numbers the triggers (a PacketProcessor fed only the TDC edges, so lost-trigger
counting sees the whole stream) and cuts the pixel stream at trigger times into batches of
whole events (at least ``batch_hits`` pixels, cut only once the reorder window has passed
the cut, so no pixel of an earlier event can still arrive). Each batch is turned into
events by a fresh :class:`~tango_tpx.processing.events.PacketProcessor` and into centroids
by a ``CentroidCalculator``, on ``number_of_processes`` worker processes (1 = in the calling
process); pixels go to the workers and ``raw/*`` columns come back through shared memory
(anonymous mmap slots), results are written in submission order. Batch boundaries depend
only on the input, ``chunk_words`` and ``batch_hits``, never on the number of processes, and
an event never spans two batches: the output is identical for any ``number_of_processes``
(and equal to one sequential PacketProcessor over the whole stream).

Memory bound (independent of the file size), with the defaults (``chunk_words`` = 1 Mi
words, ``batch_hits`` = 512 Ki): calling process ~0.4 GB (one chunk of words and its decoded
hits, the pending pixels: at least ``batch_hits``, one chunk, the 5 ms reorder window and
the open event; HDF5 chunk buffers ~5 MB; the shared slots it fills, 2 N x (``batch_hits``
+ ``chunk_words``) x 39 B = 61 MB each); each worker ~0.35 GB (its two slots and one batch
through the PacketProcessor and the clustering). Measured on a 1 GB file with N = 2: see
``benchmarks/convert.py`` (peak RSS). Only an event larger than a batch (rare triggers with
an unlimited window) makes it grow, by that event; with a finite window, pixels beyond the
open event's window are dropped as they come.

Costs (``benchmarks/convert.py``, 1 GB simulated, N = 2, 2 cores): ~124 ns of CPU per hit
over all processes, ~40 of them in the calling process (decode ~5, HDF5 Blosc/LZ4 writing
~20, batching one copy ~3), the rest in the workers (events ~30, clustering + centroids
~40). The batch pixels are copied once, from the decoded chunks straight into the slot; the
kernels are loaded before the workers are forked; while converting, the garbage collector
is paused and glibc keeps batch-sized memory in the heap (``_keep_heap``: fresh ``mmap``s
cost ~15 ns/hit of page faults), both restored afterwards.

Safety: the output is written to ``OUTPUT.partial`` with the file attribute
``complete = False``; only after everything is written is ``complete`` set and the file
renamed to ``OUTPUT`` (atomically, replacing an existing output only with ``force``).
Ctrl-C / SIGTERM close the partial file as readable with ``complete = False`` (and
``interrupted`` naming the reason); a SIGKILL leaves at most ``OUTPUT.partial``. Worker
processes die with their parent (``PR_SET_PDEATHSIG`` plus a watchdog thread).
"""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numba
import numpy as np

from tango_tpx.io.hdf5 import Hdf5Writer
from tango_tpx.tpx3.files import FileInfo, inspect_file, iter_words, map_words

#: Words read and decoded per step (8 MiB).
DEFAULT_CHUNK_WORDS = 1 << 20
#: Smallest batch (pixels) handed to a worker; batches are cut at trigger times.  Twice
#: the size of the first version: ~8 % more hits/s end to end, fewer hand-offs.
DEFAULT_BATCH_HITS = 1 << 19
#: The converter keeps every hit after its trigger (pymepix's event_window, s).
DEFAULT_EVENT_WINDOW = (0.0, math.inf)
PARTIAL_SUFFIX = ".partial"


class ConversionError(RuntimeError):
    """The input could not be converted (nothing usable in it, or a bad parameter)."""


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a conversion; the partial file is left marked incomplete."""


@dataclass
class ConvertResult:
    """Summary of one conversion (all counts are rows / hits / words)."""

    input: str
    output: str
    complete: bool = False
    words: int = 0                 # words decoded (chunk headers included)
    hits: int = 0                  # pixel hits decoded
    events: int = 0                # rows of raw/* (hits inside the event window)
    triggers: int = 0              # rows of timing/timepix/* (TDC1 rising edges)
    trigger_edges: int = 0         # rows of triggers/trigger1 + trigger2
    centroids: int = 0             # rows of centroided/*
    train_ids: int = 0             # rows of timing/trainID/* (from the train-ID side file)
    skipped_words: int = 0         # invalid TDC + control/unknown words (counted, skipped)
    trailing_bytes: int = 0        # bytes of a trailing partial word (not decoded)
    seconds: float = 0.0
    word_counts: dict = field(default_factory=dict)
    processing: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def hits_per_s(self) -> float:
        """Decoded pixel hits per second of wall time."""
        return self.hits / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ConvertStatus:
    """Progress snapshot handed to ``status_callback`` after every chunk."""

    fraction: float
    words: int
    hits: int
    events: int
    centroids: int
    elapsed_s: float


# --------------------------------------------------------------------------------------------
# trigger-aligned batches and the workers that turn them into events + centroids
# --------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _count_before(toa: np.ndarray, cut: int) -> int:
    """Number of pixels with ``toa < cut`` (fine units)."""
    n = 0
    for i in range(toa.size):
        if toa[i] < cut:
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _copy_split(toa, x, y, tot, chip, cut, lt, o_toa, o_x, o_y, o_tot, o_chip, pos):
    """Copy the pixels with ``toa < cut`` (``lt`` True) or ``toa >= cut`` (``lt`` False), in
    their order, to the output columns from index ``pos``; returns the index after the last."""
    for i in range(toa.size):
        if (toa[i] < cut) == lt:
            o_toa[pos] = toa[i]
            o_x[pos] = x[i]
            o_y[pos] = y[i]
            o_tot[pos] = tot[i]
            o_chip[pos] = chip[i]
            pos += 1
    return pos


_NO_CUT = np.iinfo(np.int64).max  # "every pixel is before the cut"


def _gather_pieces(pieces: list, cut: int, n: int, out: dict | None = None):
    """The pixels with ``toa < cut`` of ``pieces`` (PixelHits, in order) as one PixelHits of
    ``n`` pixels: in ``out`` (column name -> array of at least ``n``) or in new arrays."""
    from tango_tpx.tpx3.hits import PixelHits

    if out is None:
        if len(pieces) == 1 and cut == _NO_CUT:
            return pieces[0]
        out = {"toa": np.empty(n, np.int64), "x": np.empty(n, np.uint16), "y": np.empty(n, np.uint16),
               "tot": np.empty(n, np.uint16), "chip": np.empty(n, np.uint8)}
    pos = 0
    for p in pieces:
        pos = _copy_split(p.toa, p.x, p.y, p.tot, p.chip, cut, True,
                          out["toa"], out["x"], out["y"], out["tot"], out["chip"], pos)
    if pos != n:
        raise RuntimeError(f"batch holds {pos} pixels, expected {n}")
    return PixelHits(out["x"][:n], out["y"][:n], out["toa"][:n], out["tot"][:n], out["chip"][:n])


@dataclass
class _Batch:
    """Pixels whose ToA lies in [first trigger, next batch's first trigger) and those triggers.

    The pixels are those with ``toa < cut`` of ``pieces`` (PixelHits in arrival order,
    time-walk corrected ToA, fine units), ``n`` of them; they are gathered only where they
    go (a shared-memory slot, or new arrays): one copy. trig_time: int64 fine units of the
    TDC1 rising edges of the batch; first_nr: global number of trig_time[0].
    """

    pieces: list
    trig_time: np.ndarray
    first_nr: int
    n: int
    cut: int = _NO_CUT

    @classmethod
    def of(cls, pixels, trig_time: np.ndarray, first_nr: int) -> "_Batch":
        """A batch of all of ``pixels``."""
        return cls([pixels], trig_time, first_nr, len(pixels))

    @property
    def pixels(self):
        """The batch's pixels as one PixelHits (gathered on each access)."""
        return _gather_pieces(self.pieces, self.cut, self.n)

    def materialize(self) -> "_Batch":
        if len(self.pieces) == 1 and self.cut == _NO_CUT:
            return self
        return _Batch.of(self.pixels, self.trig_time, self.first_nr)

    @property
    def n_pixels(self) -> int:
        return self.n


@dataclass
class _BatchResult:
    raw: dict            # raw/* file columns
    centroids: Any       # Centroids or None
    stats: dict          # PacketProcessor pixel statistics


_PIXEL_STATS = ("pixels_in", "events_pixels", "before_first_trigger", "outside_window", "late_pixels")


def _process_batch(batch: _Batch, state: dict, out: dict | None = None) -> _BatchResult:
    """Events of one batch (a fresh PacketProcessor: the batch holds whole events) + centroids.

    ``out``: arrays to write the ``raw/*`` columns into (a shared-memory slot), at least as
    long as the batch; without it new arrays are returned.
    """
    from tango_tpx.io.hdf5 import events_columns
    from tango_tpx.processing.centroids import Centroids
    from tango_tpx.processing.events import PacketProcessor
    from tango_tpx.tpx3.codec import Decoded, WordCounts
    from tango_tpx.tpx3.hits import Triggers

    m = len(batch.trig_time)
    trig = Triggers(np.ones(m, np.uint8), np.ones(m, np.bool_), batch.trig_time,
                    (np.arange(m) & 0xFFF).astype(np.uint16), np.zeros(m, np.uint8))
    pp = PacketProcessor(event_window=state["window"])
    # the two outputs never split an event: convert and cluster them one after the other
    parts = [o.events for o in (pp.process(Decoded(batch.pixels, trig, WordCounts())), pp.flush())]
    parts = [ev for ev in parts if len(ev)]
    n = sum(len(ev) for ev in parts)
    if out is None and len(parts) > 1:
        out = {k: np.empty(n, dt) for k, dt in ((k, spec.dtype) for k, spec in _raw_specs().items())}
    cols: dict = {}
    cents = []
    pos = 0
    for ev in parts:
        if batch.first_nr:
            ev.trigger_nr += batch.first_nr
        if out is None:
            cols = events_columns(ev)
        else:
            events_columns(ev, {k: a[pos:] for k, a in out.items()})
        pos += len(ev)
        if state["calc"] is not None:
            cents.append(state["calc"].process(ev))
    if out is not None:
        cols = {k: a[:n] for k, a in out.items()}
    elif not parts:
        cols = {k: np.empty(0, spec.dtype) for k, spec in _raw_specs().items()}
    stats = {k: int(pp.stats.get(k, 0)) for k in _PIXEL_STATS}
    cen = None
    if cents:
        cen = cents[0] if len(cents) == 1 else Centroids.concat(cents)
    return _BatchResult(cols, cen, stats)


def _raw_specs() -> dict:
    from tango_tpx.io.hdf5 import RAW

    return RAW


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


def _keep_heap(keep: bool = True) -> None:
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


def _make_calculator(params: dict):
    from tango_tpx.processing.centroids import CentroidCalculator

    return CentroidCalculator(cent_timewalk_lut=params["cent_timewalk_lut"], number_of_processes=1,
                              clustering_args=params["clustering_args"],
                              dbscan_clustering=params["dbscan"], tot_threshold=params["tot_threshold"])


def _warm_up(params: dict) -> None:
    """Run a tiny batch through events + clustering, so that numba's kernels are loaded (from
    its cache, ~0.2 s of CPU per process) before the workers are forked, not once in each."""
    from tango_tpx.tpx3.hits import PixelHits

    n = 8
    px = PixelHits(np.full(n, 5, np.uint16), np.arange(n, dtype=np.uint16) % 3 + 5,
                   np.arange(n, dtype=np.int64) * 4096 + 4096, np.full(n, 10, np.uint16), np.zeros(n, np.uint8))
    batch = _Batch.of(px, np.zeros(1, np.int64), 0)
    _process_batch(batch, _make_state(params))
    slot = _Slot(n, 1)
    slot.put(_Batch([px], batch.trig_time, 0, _count_before(px.toa, 4096 * 4), 4096 * 4), 3)


def _make_state(params: dict) -> dict:
    return {"window": params["window"],
            "calc": _make_calculator(params) if params["centroiding"] else None}


#: Shared-memory slot layout: (name, dtype, capacity kind). 8-byte columns first (alignment).
_SLOT_FIELDS = (
    ("in:toa", np.int64, "px"), ("in:trig", np.int64, "tr"),
    ("out:trigger nr", np.int64, "px"), ("out:tof", np.float64, "px"), ("out:tot", np.uint32, "px"),
    ("in:x", np.uint16, "px"), ("in:y", np.uint16, "px"), ("in:tot", np.uint16, "px"),
    ("out:x", np.uint16, "px"), ("out:y", np.uint16, "px"), ("in:chip", np.uint8, "px"),
)


class _Slot:
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

    def fits(self, n_pixels: int, batch: _Batch) -> bool:
        return n_pixels <= self.cap_px and len(batch.trig_time) <= self.cap_tr

    def put(self, batch: _Batch, n: int) -> tuple[int, int]:
        """Copy the batch in, gathered straight from the pending pieces (one pass)."""
        v = self.views
        _gather_pieces(batch.pieces, batch.cut, n, {k[3:]: v[k] for k in ("in:toa", "in:x", "in:y", "in:tot", "in:chip")})
        v["in:trig"][:len(batch.trig_time)] = batch.trig_time
        return n, len(batch.trig_time)

    def get_batch(self, n_px: int, n_tr: int, first_nr: int) -> _Batch:
        from tango_tpx.tpx3.hits import PixelHits

        v = self.views
        px = PixelHits(v["in:x"][:n_px], v["in:y"][:n_px], v["in:toa"][:n_px], v["in:tot"][:n_px], v["in:chip"][:n_px])
        return _Batch.of(px, v["in:trig"][:n_tr], first_nr)

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
    _keep_heap()
    state = _make_state(params)
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
                res = _process_batch(slot.get_batch(n_px, n_tr, first_nr), state, out=slot.raw_views())
                conn.send(("slot", len(res.raw["x"]), res.centroids, res.stats))
                continue
            else:
                res = _process_batch(msg[1], state)
            conn.send(("obj", res))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    conn.close()


def _single_threaded() -> bool:
    """True unless other Python threads run (a GUI, a pipeline, a Tango callback thread).

    Library pools that sit idle in C (OpenBLAS, numba) do not count: forking past them is
    what every numpy program using multiprocessing does, and the workers only run numpy/numba.
    """
    return threading.active_count() == 1


class _Workers:
    """Ordered processing of batches: inline (N = 1) or on N worker processes.

    Batch ``i`` goes to worker ``i % N``; each worker has two shared-memory slots, so at
    most ``2 N`` batches are in flight. Results are handed to ``sink`` in submission order,
    before their slot is reused. A batch larger than a slot travels pickled instead.
    """

    def __init__(self, params: dict, n_processes: int, sink: Callable[[_BatchResult], Any],
                 slot_pixels: int):
        self.n = max(1, int(n_processes))
        self.sink = sink
        self.procs: list = []
        self.conns: list = []
        self.inflight: deque = deque()
        self.count = 0
        if self.n == 1:
            self.state = _make_state(params)
            return
        # fork (fast start, shared-memory slots inherited) only when no other Python thread runs:
        # forking a threaded program (a GUI, a Tango server) can deadlock the child
        methods = multiprocessing.get_all_start_methods()
        fork = "fork" in methods and _single_threaded()
        ctx = multiprocessing.get_context("fork" if fork else "forkserver" if "forkserver" in methods else "spawn")
        self.slots = [_Slot(slot_pixels, 1 << 16) for _ in range(2 * self.n)] if fork else []
        if fork:
            try:  # compile / load the kernels once here: forked workers inherit them
                _warm_up(params)
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

    def submit(self, batch: _Batch) -> None:
        if self.n == 1:
            self.sink(_process_batch(batch.materialize(), self.state))
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
            self.sink(_BatchResult(self.slots[s].get_raw(n_ev), cen, stats))
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


_NEG = np.iinfo(np.int64).min


class _Batcher:
    """Cuts the decoded stream into :class:`_Batch` es at trigger times.

    A batch is cut once at least ``batch_hits`` pixels are pending, at the latest trigger
    that is older than the newest time seen minus ``slack`` (the reorder window: no pixel or
    trigger older than that can still arrive); pixels before that trigger go out, the rest
    waits. So every event lies wholly inside one batch. A pixel arriving behind a cut is
    counted in ``late_pixels`` and dropped. While no cut is possible, pixels that can no
    longer belong to any event (before the first trigger, or beyond the window end of the
    open event) are dropped and counted, so memory stays bounded by one event.
    """

    def __init__(self, batch_hits: int, slack_units: int, window_units: tuple[int, int | None]):
        from tango_tpx.tpx3.hits import PixelHits

        self._empty = PixelHits.empty
        self.batch_hits = max(1, int(batch_hits))
        self.slack = int(slack_units)
        self.hi = window_units[1]  # None = no upper limit
        self.parts: list = []
        self.n = 0
        self.trig_time = np.zeros(0, np.int64)
        self.trig_nr = np.zeros(0, np.int64)
        self.last_cut: int | None = None
        self.newest = _NEG
        self.stats = {"late_pixels": 0, "before_first_trigger": 0, "outside_window": 0}

    def add(self, pixels, trig_time: np.ndarray, trig_nr: np.ndarray) -> None:
        if len(trig_time):
            self.trig_time = np.concatenate((self.trig_time, trig_time))
            self.trig_nr = np.concatenate((self.trig_nr, trig_nr))
            self.newest = max(self.newest, int(trig_time[-1]))
        if len(pixels):
            self.newest = max(self.newest, int(pixels.toa.max()))
            if self.last_cut is not None:
                late = pixels.toa < self.last_cut
                if late.any():
                    self.stats["late_pixels"] += int(late.sum())
                    pixels = pixels.take(~late)
            if len(pixels):
                self.parts.append(pixels)
                self.n += len(pixels)

    def _pending(self):
        if len(self.parts) > 1:
            self.parts = [type(self.parts[0]).concat(self.parts)]
        return self.parts[0] if self.parts else self._empty()

    def cut(self, final: bool = False) -> list[_Batch]:
        if final:
            px = self._pending()
            self.parts, self.n = [], 0
            if not len(px) and not len(self.trig_time):
                return []
            first = int(self.trig_nr[0]) if len(self.trig_nr) else 0
            batch = _Batch.of(px, self.trig_time, first)
            self.trig_time, self.trig_nr = self.trig_time[:0], self.trig_nr[:0]
            return [batch]
        if self.n < self.batch_hits:
            return []
        b = self.newest - self.slack
        k = int(np.searchsorted(self.trig_time, b, side="right")) - 1  # latest trigger <= b
        min_k = 0 if self.last_cut is None else 1
        if k < min_k:
            self._drop_dead(b, k)
            return []
        cut_t = int(self.trig_time[k])
        # pixels before the cut go out (gathered later, where they go); the rest stays
        pieces, n_out, rest = self.parts, 0, []
        for p in pieces:
            m = _count_before(p.toa, cut_t)
            n_out += m
            if m < len(p):
                r = len(p) - m
                cols = {"toa": np.empty(r, np.int64), "x": np.empty(r, np.uint16), "y": np.empty(r, np.uint16),
                        "tot": np.empty(r, np.uint16), "chip": np.empty(r, np.uint8)}
                _copy_split(p.toa, p.x, p.y, p.tot, p.chip, cut_t, False,
                            cols["toa"], cols["x"], cols["y"], cols["tot"], cols["chip"], 0)
                rest.append(type(p)(cols["x"], cols["y"], cols["toa"], cols["tot"], cols["chip"]))
        batch = _Batch(pieces, self.trig_time[:k], int(self.trig_nr[0]) if k else 0, n_out, cut_t)
        self.parts, self.n = rest, sum(len(r) for r in rest)
        self.trig_time, self.trig_nr = self.trig_time[k:], self.trig_nr[k:]
        self.last_cut = cut_t
        return [batch]

    def _drop_dead(self, b: int, k: int) -> None:
        """No cut possible: drop pending pixels older than ``b`` that no event can take."""
        px = self._pending()
        old = px.toa < b
        if k < 0:  # no trigger at or before b (and none before it was ever cut)
            if self.last_cut is None:
                dead, key = old, "before_first_trigger"
            else:
                return
        elif self.hi is not None:  # the open event (trigger k = 0) ends at its window's end
            dead, key = old & (px.toa - self.trig_time[0] > self.hi), "outside_window"
        else:
            return
        n = int(dead.sum())
        if n:
            self.stats[key] += n
            keep = px.take(~dead)
            self.parts, self.n = ([keep], len(keep)) if len(keep) else ([], 0)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def detect_layout(info: FileInfo, probe_words: int = 1 << 20) -> str:
    """'quad' for a .tpx3 file whose first chunks name a chip other than 0, else 'single'."""
    if info.framing != "tpx3":
        return "single"
    from tango_tpx.tpx3.encode import TPX3_MAGIC

    for words in iter_words(info.path, chunk_words=probe_words, stop_word=probe_words):
        heads = words[(words & np.uint64(0xFFFFFFFF)) == np.uint64(TPX3_MAGIC)]
        chips = (heads >> np.uint64(32)) & np.uint64(0xFF)
        return "quad" if chips.size and int(chips.max()) > 0 else "single"
    return "single"


def partial_path(output: str | os.PathLike) -> Path:
    """Where a conversion to ``output`` writes until it is complete."""
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def _load_lut(path: str | os.PathLike | None) -> np.ndarray | None:
    if path is None or path == "":
        return None
    from tango_tpx.processing.timewalk import load_timewalk_lut

    return load_timewalk_lut(path)


def _load_train_ids(input_path: Path, trainid_file) -> tuple[np.ndarray | None, str, list[str]]:
    """Train IDs to write to ``timing/trainID``: (TRAINID_DTYPE array or None, source path, warnings).

    ``trainid_file`` None: the live pipeline's side file ``<input>.trainid.csv`` when it
    exists (a malformed one is skipped with a warning); a path: that file, which must exist
    and be well formed (``FileNotFoundError`` / :class:`ConversionError`); ``False``: none.
    """
    from tango_tpx.trainid.protocol import SIDE_FILE_SUFFIX, read_side_file, side_file_path

    if trainid_file is False:
        return None, "", []
    explicit = trainid_file is not None and trainid_file != ""
    path = Path(trainid_file) if explicit else side_file_path(input_path)
    if not path.exists():
        if explicit:
            raise FileNotFoundError(f"{path}: train-ID file not found")
        return None, "", []
    if path.is_dir():
        raise IsADirectoryError(f"{path}: train-ID file is a directory")
    if not path.name.endswith(SIDE_FILE_SUFFIX):
        # read_side_file treats any other name as the raw file the side file belongs to
        raise ConversionError(f"{path}: a train-ID side file must be named *{SIDE_FILE_SUFFIX}")
    try:
        arr = read_side_file(path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        if explicit:
            raise ConversionError(f"{path}: unreadable train-ID file: {exc}") from None
        return None, "", [f"train-ID side file {path} skipped: {exc}"]
    return arr, str(path.resolve()), []


def _check_window(event_window) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in event_window)
    except (TypeError, ValueError):
        raise ConversionError(f"event window must be two numbers (s), got {event_window!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or hi < lo:
        raise ConversionError(f"event window must satisfy 0 <= min <= max (s), got ({lo}, {hi})")
    return lo, hi


class _Restore:
    """Undo the conversion's process tuning on exit: garbage collector, malloc settings."""

    def __init__(self, gc_enabled: bool):
        self.gc_enabled = gc_enabled

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _keep_heap(False)
        if self.gc_enabled:
            gc.enable()


class _TermToInterrupt:
    """Turn SIGTERM into :class:`ConversionInterrupted` while converting (main thread only)."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise ConversionInterrupted("SIGTERM")

            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


# --------------------------------------------------------------------------------------------
# the conversion
# --------------------------------------------------------------------------------------------
def convert_file(input: str | os.PathLike, output: str | os.PathLike, *,
                 number_of_processes: int = 1,
                 centroiding: bool = True,
                 dbscan: bool = False,
                 event_window: tuple[float, float] = DEFAULT_EVENT_WINDOW,
                 timewalk_file: str | os.PathLike | None = None,
                 cent_timewalk_file: str | os.PathLike | None = None,
                 clustering_args: dict | None = None,
                 tot_threshold: int = 0,
                 layout: str = "auto",
                 force: bool = False,
                 compression: str = "blosc-lz4",
                 chunk_words: int = DEFAULT_CHUNK_WORDS,
                 batch_hits: int = DEFAULT_BATCH_HITS,
                 trainid_file: str | os.PathLike | bool | None = None,
                 progress_callback: Callable[[float], Any] | None = None,
                 status_callback: Callable[[ConvertStatus], Any] | None = None,
                 ) -> ConvertResult:
    """Convert one raw/.tpx3 file to HDF5 (layout: :mod:`tango_tpx.io.hdf5`).

    input: pymepix .raw (with or without the 8-byte header) or ASI .tpx3 (single or quad).
    output: the .h5 path; ``FileExistsError`` if it exists and ``force`` is false.
    number_of_processes: worker processes for events + clustering (1 = all in this process);
        the output is identical for any number.
    centroiding: False leaves ``centroided/*`` empty. dbscan: pymepix's DBSCAN instead of the
    fast connected-components clustering. event_window: (min, max) ToF in s, inclusive;
    default (0, inf) keeps every hit after its trigger. timewalk_file / cent_timewalk_file:
    ``.npy`` tables in ns per ToT bin (:mod:`tango_tpx.processing.timewalk`).
    clustering_args: pymepix ``clustering_args`` keys (see ``CentroidCalculator``).
    tot_threshold: keep hits with ToT > threshold for clustering (ToT counts).
    layout: 'auto' (quad for multi-chip .tpx3), 'single' or 'quad'.
    trainid_file: train IDs for ``timing/trainID`` (host time stamps ns, train id, beam mode):
        None = the side file ``<input>.trainid.csv`` written by the live pipeline, if present
        (a malformed one is skipped with a warning); a path = that ``*.trainid.csv`` file
        (must exist and be well formed); False = none. Recorded in the file attributes
        ``trainid_file`` (absolute path or '') and ``trainid_rows``.
    progress_callback(fraction 0..1) after every chunk; status_callback(ConvertStatus) too.

    Raises FileNotFoundError / IsADirectoryError / ValueError for an unreadable input,
    ConversionError when nothing in it could be converted (no output is left then),
    ConversionInterrupted (a KeyboardInterrupt) on Ctrl-C / SIGTERM.
    """
    t0 = time.perf_counter()
    in_path = Path(input)
    out_path = Path(output)
    info = inspect_file(in_path)   # clear errors: missing, directory, empty, < 1 word
    window = _check_window(event_window)
    if int(number_of_processes) != number_of_processes or number_of_processes < 1:
        raise ConversionError(f"number_of_processes must be an integer >= 1, got {number_of_processes!r}")
    if chunk_words < 1 or batch_hits < 1:
        raise ConversionError("chunk_words and batch_hits must be >= 1")
    if out_path.exists() and out_path.is_dir():
        raise IsADirectoryError(f"{out_path}: output is a directory")
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: output exists (use force / --force to replace it)")
    if not out_path.parent.exists():
        raise FileNotFoundError(f"{out_path.parent}: output directory does not exist")
    if out_path.exists() and os.path.samefile(out_path, in_path):
        raise ConversionError("output is the input file")
    if layout == "auto":
        layout = detect_layout(info)
    if layout not in ("single", "quad"):
        raise ConversionError(f"layout must be 'auto', 'single' or 'quad', not {layout!r}")
    tw_lut = _load_lut(timewalk_file)
    cent_lut = _load_lut(cent_timewalk_file)
    train_ids, trainid_src, trainid_warnings = _load_train_ids(in_path, trainid_file)

    from tango_tpx.processing import events as events_mod
    from tango_tpx.tpx3.codec import Decoded, Decoder, first_global_time
    from tango_tpx.tpx3.hits import PixelHits

    params = dict(cent_timewalk_lut=cent_lut, clustering_args=dict(clustering_args or {}),
                  dbscan=bool(dbscan), tot_threshold=int(tot_threshold), window=window,
                  centroiding=bool(centroiding))
    if centroiding:
        _make_calculator(params)  # validate the clustering parameters before any work
    decoder = Decoder(framing=info.framing, layout=layout)
    # a recording taken up mid-stream: the words before its first global-time pair belong
    # to that pair's epoch, not to epoch 0 (a file without any pair decodes from epoch 0)
    decoder.anchor(first_global_time(map_words(info.path), info.framing))
    # triggers are numbered (and lost ones counted) here, in stream order
    trig_pp = events_mod.PacketProcessor(event_window=window)
    slack = int(round(events_mod.DEFAULT_REORDER_WINDOW_NS * 4096 / 25))
    hi_units = None if not math.isfinite(window[1]) else int(round(window[1] * 1e9 * 4096 / 25))
    if tw_lut is not None:
        from tango_tpx.processing.timewalk import correct_pixel_toa

    result = ConvertResult(input=str(in_path.resolve()), output=str(out_path.resolve()),
                           trailing_bytes=info.trailing_bytes)
    result.warnings.extend(trainid_warnings)
    if info.trailing_bytes:
        result.warnings.append(f"{info.trailing_bytes} trailing bytes after the last whole word were skipped")
    attrs = {
        "source_file": str(in_path.resolve()),
        "source_kind": info.kind,
        "source_framing": info.framing,
        "source_header_time_ns": -1 if info.header_time_ns is None else int(info.header_time_ns),
        "source_bytes": int(info.size_bytes),
        "source_words": int(info.n_words),
        "layout": layout,
        "event_window": [float(window[0]), float(window[1])],
        "event_window_unit": "s",
        "centroiding": bool(centroiding),
        "clustering_algorithm": ("dbscan" if dbscan else "fast") if centroiding else "none",
        "clustering_args": dict(clustering_args or {}),
        "tot_threshold": int(tot_threshold),
        "timewalk_file": "" if timewalk_file is None else str(Path(timewalk_file).resolve()),
        "cent_timewalk_file": "" if cent_timewalk_file is None else str(Path(cent_timewalk_file).resolve()),
        "timewalk_unit": "ns per ToT bin (lut[i] for ToT = (i + 1) * 25 ns)",
        "number_of_processes": int(number_of_processes),
        "chunk_words": int(chunk_words),
        "trainid_file": trainid_src,
        "trainid_rows": 0 if train_ids is None else int(len(train_ids)),
    }

    partial = partial_path(out_path)
    workers = None
    writer = None
    # the loop makes no reference cycles; the collector would only rescan the caller's
    # (numba's) many objects again and again: pause it, and keep batch memory in the heap
    gc_was_enabled = gc.isenabled()
    gc.disable()
    _keep_heap()
    with _TermToInterrupt(), _Restore(gc_was_enabled):
        try:
            pixel_stats = dict.fromkeys(_PIXEL_STATS, 0)

            def write(res: _BatchResult) -> None:
                writer.append_columns("raw", res.raw)
                result.events += len(res.raw["x"])
                if res.centroids is not None and len(res.centroids):
                    writer.append_centroids(res.centroids)
                    result.centroids += len(res.centroids)
                for k, v in res.stats.items():
                    pixel_stats[k] += v

            # workers first (forked before the HDF5 file is open)
            workers = _Workers(params, number_of_processes, write, slot_pixels=batch_hits + chunk_words)
            writer = Hdf5Writer(partial, attrs, overwrite=True, compression=compression)
            if train_ids is not None and len(train_ids):
                writer.append_train_ids(train_ids)
                result.train_ids = int(len(train_ids))
            batcher = _Batcher(batch_hits, slack, (0, hi_units))
            words_done = 0
            n_total = max(info.n_words, 1)

            for words in iter_words(info.path, chunk_words=chunk_words):
                decoded = decoder.decode(words)
                words_done += len(words)
                px, tr = decoded.pixels, decoded.triggers
                result.hits += len(px)
                result.trigger_edges += len(tr)
                writer.append_triggers(tr)
                table = trig_pp.process(Decoded(PixelHits.empty(), tr, decoded.counts)).triggers
                writer.append_trigger_table(table, start_time_ns=info.header_time_ns or 0)
                result.triggers += len(table)
                if tw_lut is not None and len(px):
                    px = PixelHits(px.x, px.y, correct_pixel_toa(px.toa, px.tot, tw_lut), px.tot, px.chip)
                batcher.add(px, table.time, table.trigger_nr)
                for batch in batcher.cut():
                    workers.submit(batch)
                workers.collect_ready()
                fraction = words_done / n_total
                if progress_callback is not None:
                    progress_callback(fraction)
                if status_callback is not None:
                    status_callback(ConvertStatus(fraction, words_done, result.hits, result.events,
                                                  result.centroids, time.perf_counter() - t0))
            for batch in batcher.cut(final=True):
                workers.submit(batch)
            workers.drain()
            workers.close()
            workers = None

            counts = decoder.counts
            result.words = counts.words
            result.word_counts = counts.as_dict()
            result.skipped_words = counts.malformed
            proc = {k: int(v) for k, v in trig_pp.stats.items() if k not in _PIXEL_STATS}
            proc.update(pixel_stats)
            proc["pixels_in"] = result.hits
            for k, v in batcher.stats.items():
                proc[k] += v
            result.processing = proc
            if result.skipped_words:
                result.warnings.append(f"{result.skipped_words} invalid/unknown words counted and skipped")
            if result.hits == 0 and result.trigger_edges == 0:
                raise ConversionError(f"{in_path}: no pixel hits and no trigger words found "
                                      f"({result.words} words: {result.word_counts}); nothing to convert")
            if result.triggers == 0:
                result.warnings.append("no TDC1 rising edges (triggers): no events")
            result.seconds = time.perf_counter() - t0
            writer.set_attrs(word_counts=result.word_counts, processing_stats=result.processing,
                             trailing_bytes=int(info.trailing_bytes), elapsed_s=float(result.seconds),
                             hits_decoded=int(result.hits), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            writer.close(complete=True)
            os.replace(partial, out_path)
            result.complete = True
        except BaseException as exc:
            if isinstance(exc, ConversionInterrupted):
                reason = str(exc)
            elif isinstance(exc, KeyboardInterrupt):
                reason = "Ctrl-C (SIGINT)"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            if workers is not None:
                workers.close(terminate=True)
            if writer is not None and not writer.closed:
                try:
                    writer.set_attrs(interrupted=reason)
                except Exception:
                    pass
                writer.abort()
            if isinstance(exc, ConversionError) or not isinstance(exc, KeyboardInterrupt):
                # nothing usable / a failure: leave no output at all
                try:
                    partial.unlink()
                except FileNotFoundError:
                    pass
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, ConversionInterrupted):
                raise ConversionInterrupted(reason) from exc
            raise
    result.seconds = time.perf_counter() - t0
    return result


def result_dict(result: ConvertResult) -> dict:
    """ConvertResult as a plain dict (for JSON), with hits_per_s."""
    d = asdict(result)
    d["hits_per_s"] = result.hits_per_s
    return d


__all__ = ["convert_file", "ConvertResult", "ConvertStatus", "ConversionError", "ConversionInterrupted",
           "detect_layout", "partial_path", "result_dict", "DEFAULT_CHUNK_WORDS", "DEFAULT_BATCH_HITS",
           "DEFAULT_EVENT_WINDOW"]
