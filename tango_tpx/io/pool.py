"""The converter's ordered workers: batches in, events + centroids out, in order.

A thin adapter on the runtime's ordered pools. With worker **threads**
(:class:`tango_tpx.runtime.threads.OrderedThreadPool`, the default for the built-in
``fast`` clustering, whose kernels release the GIL) a batch travels as its own arrays. With
worker **processes** (:class:`tango_tpx.runtime.pool.OrderedPool`, the default for DBSCAN
and for registered backends, whose GIL use is unknown) :class:`BatchPacking` (the only code
that knows the fields of a :class:`~tango_tpx.io.batching.Batch`) gathers a batch's pixels
and triggers straight into a shared-memory slot and rebuilds the batch in the worker; the
worker writes the ``raw/*`` columns into the same slot (39 bytes per pixel of capacity) and
sends back the centroids and statistics. N = 1 processes every batch in the calling
process. Start methods, orphan guard and process tuning are the runtime's
(:mod:`tango_tpx.runtime`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tango_tpx.io.batching import Batch, BatchResult, count_before, gather_pieces, make_state, process_batch
from tango_tpx.runtime.pool import OrderedPool, single_threaded
from tango_tpx.runtime.threads import WORKER_KINDS, OrderedThreadPool, check_worker_kind, pick_worker_kind
from tango_tpx.runtime.tuning import ProcessTuning, keep_heap

#: triggers of a batch the slot is sized for (a batch that does not fit travels pickled)
SLOT_TRIGGERS = 1 << 16


def resolve_worker_kind(kind: str, params: dict) -> str:
    """'threads' or 'processes' for ``kind`` (one of :data:`WORKER_KINDS`) and the converter's
    worker ``params``; ValueError names the choices."""
    clustering = params.get("clustering")
    nogil = not params["centroiding"] or (clustering is not None and clustering.algorithm == "fast")
    return pick_worker_kind(kind, nogil)


class BatchPacking:
    """How a :class:`Batch` travels as a pool task: pixel columns + triggers as arrays,
    ``first_nr`` as metadata; the raw columns come back as arrays, centroids and pixel
    statistics as metadata."""

    PIXELS = (("toa", np.int64), ("x", np.uint16), ("y", np.uint16), ("tot", np.uint16), ("chip", np.uint8))

    @classmethod
    def specs(cls, batch: Batch) -> list[tuple[str, Any, int]]:
        return [(k, dt, batch.n_pixels) for k, dt in cls.PIXELS] + [("trig", np.int64, len(batch.trig_time))]

    @staticmethod
    def fill(batch: Batch) -> Callable[[dict], None]:
        """Writes the batch into the task's arrays (gathered from the pending pieces: one pass)."""
        def fill(arrays: dict) -> None:
            gather_pieces(batch.pieces, batch.cut, batch.n_pixels, {k: arrays[k] for k, _ in BatchPacking.PIXELS})
            arrays["trig"][...] = batch.trig_time
        return fill

    @classmethod
    def arrays(cls, batch: Batch) -> dict:
        """The batch's columns as they are (no copy for a one-piece batch)."""
        px = batch.pixels
        return {**{k: getattr(px, k) for k, _ in cls.PIXELS}, "trig": batch.trig_time}

    @staticmethod
    def unpack(inputs: dict, first_nr: int) -> Batch:
        from tango_tpx.tpx3.hits import PixelHits

        px = PixelHits(inputs["x"], inputs["y"], inputs["toa"], inputs["tot"], inputs["chip"])
        return Batch.of(px, inputs["trig"], first_nr)

    @staticmethod
    def result(arrays: dict, small: tuple) -> BatchResult:
        return BatchResult(arrays, *small)

    @staticmethod
    def slot_bytes(slot_pixels: int) -> int:
        """Slot size for batches of up to ``slot_pixels`` pixels: inputs (15 B/px + triggers),
        raw columns out (24 B/px), alignment."""
        return slot_pixels * 39 + SLOT_TRIGGERS * 8 + 64 * 16


def _batch_worker(params: dict) -> Callable:
    """The worker's task function (built once per worker from the converter's params)."""
    state = make_state(params)

    def run(inputs: dict, first_nr: int, alloc) -> tuple[dict, tuple]:
        from tango_tpx.io.hdf5 import RAW

        batch = BatchPacking.unpack(inputs, first_nr)
        # events <= pixels: the raw columns fit in arrays of the batch's length
        out = None if alloc is None else {k: alloc(k, spec.dtype, batch.n_pixels) for k, spec in RAW.items()}
        res = process_batch(batch, state, out=out)
        return res.raw, (res.centroids, res.stats)

    return run


def warm_up(params: dict) -> None:
    """Run a tiny batch through events + clustering, so that numba's kernels are loaded (from
    its cache, ~0.2 s of CPU per process) before the workers are forked, not once in each."""
    from tango_tpx.tpx3.hits import PixelHits

    n = 8
    px = PixelHits(np.full(n, 5, np.uint16), np.arange(n, dtype=np.uint16) % 3 + 5,
                   np.arange(n, dtype=np.int64) * 4096 + 4096, np.full(n, 10, np.uint16), np.zeros(n, np.uint8))
    process_batch(Batch.of(px, np.zeros(1, np.int64), 0), make_state(params))
    count_before(px.toa, 4096 * 4)
    gather_pieces([px], 4096 * 4, 3)


class Workers:
    """Ordered processing of batches: inline (N = 1), or on N worker threads or processes
    (``kind``); results go to ``sink`` (a callable taking a :class:`BatchResult`) in
    submission order."""

    def __init__(self, params: dict, n_processes: int, sink: Callable[[BatchResult], Any],
                 slot_pixels: int, kind: str = "auto"):
        """n_processes: workers (1: inline); kind: one of :data:`WORKER_KINDS`."""
        self.sink = sink
        self.kind = resolve_worker_kind(kind, params)
        if self.kind == "threads":
            self.pool = OrderedThreadPool(_batch_worker, params, n_processes, self._deliver,
                                          warm_up=lambda: warm_up(params), name="tango-tpx-convert")
        else:
            self.pool = OrderedPool(_batch_worker, params, n_processes, self._deliver,
                                    slot_bytes=BatchPacking.slot_bytes(slot_pixels), slots_per_worker=2,
                                    warm_up=lambda: warm_up(params), name="tango-tpx-convert")
        self.n = self.pool.n
        self.inline_reason = self.pool.inline_reason

    def _deliver(self, arrays: dict, small: tuple) -> None:
        self.sink(BatchPacking.result(arrays, small))

    def submit(self, batch: Batch) -> None:
        if self.n == 1 or self.kind == "threads":   # the batch's own arrays when it is one piece
            self.pool.submit(batch.first_nr, BatchPacking.arrays(batch.materialize()))
            return
        self.pool.submit(batch.first_nr, specs=BatchPacking.specs(batch), fill=BatchPacking.fill(batch))

    def collect_ready(self) -> None:
        self.pool.collect_ready()

    def drain(self) -> None:
        self.pool.drain()

    def close(self, terminate: bool = False) -> None:
        self.pool.close(terminate)


__all__ = ["BatchPacking", "Workers", "WORKER_KINDS", "check_worker_kind", "resolve_worker_kind", "warm_up",
           "single_threaded", "ProcessTuning", "keep_heap"]
