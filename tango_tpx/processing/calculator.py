"""``CentroidCalculator``: clustering + centroids with pymepix's name and parameters, in
the caller or on an ordered pool of worker threads or processes (:mod:`tango_tpx.runtime`).

With ``number_of_processes`` N > 1 a batch of events is split at trigger boundaries (an
event is never split) into up to N parts of about equal size; each part goes to a worker
and the parts' centroids are concatenated in order, so the output is identical to N = 1.
The built-in ``fast`` clustering runs on worker threads (its numba kernels release the
GIL: a part travels as views of the caller's arrays); DBSCAN runs on worker processes,
each part through a shared-memory slot.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

import numpy as np

from tango_tpx.processing.centroids import (
    DBSCAN_CHUNK_HITS,
    DBSCAN_EPS,
    DBSCAN_MIN_SAMPLES,
    DEFAULT_RADIUS,
    DEFAULT_TIME_WINDOW_NS,
    Centroids,
    _make_params,
    _run_sorted,
    _sorted_arrays,
)
from tango_tpx.runtime.pool import OrderedPool
from tango_tpx.runtime.threads import OrderedThreadPool, check_worker_kind, pick_worker_kind

#: the sorted event columns a task carries, in :func:`_run_sorted`'s order
_COLUMNS = ("trigger_nr", "x", "y", "tof", "tot")
#: slot bytes per hit of a part: the five columns in (22 B) and room for its centroids
_SLOT_BYTES_PER_HIT = 96


def split_at_triggers(trig: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Split hits sorted by trigger_nr into up to ``parts`` (start, stop) ranges of about
    equal size whose boundaries fall between triggers (an event is never split)."""
    n = trig.size
    if n == 0 or parts <= 1:
        return [(0, n)]
    bounds = [0]
    for k in range(1, parts):
        target = (n * k) // parts
        if target <= bounds[-1]:
            continue
        # move the cut forward to the start of the next trigger
        cut = int(np.searchsorted(trig, trig[target], side="left"))
        if cut <= bounds[-1]:
            cut = int(np.searchsorted(trig, trig[target], side="right"))
        if bounds[-1] < cut < n:
            bounds.append(cut)
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:]))


def _part_worker(params: dict) -> Callable:
    """A pool worker's task function: centroids of one part (sorted columns)."""
    def run(inputs: dict, meta: Any, alloc) -> tuple[dict, None]:
        return _run_sorted(tuple(inputs[k] for k in _COLUMNS), params).as_dict(), None
    return run


_PYMEPIX_ARGS = {"epsilon", "min_samples", "tot_threshold", "triggers_processed",
                 "cs_sensor_size", "cs_min_cluster_size", "cs_max_dist_tof", "cs_tot_offset",
                 "chunk_size_limit", "radius", "time_window_ns", "min_cluster_size"}


class CentroidCalculator:
    """Clustering + centroids with pymepix's name and parameters.

    cent_timewalk_lut: centroid time-walk table (ns per ToT bin, see :mod:`.timewalk`; pymepix's
    is scaled by 1e3, ours is not). number_of_processes: > 1 splits the events at trigger
    boundaries over a persistent ordered worker pool (:mod:`tango_tpx.runtime.pool`; safe
    from any thread, no process or shared-memory segment left after :meth:`close`) and
    concatenates the parts in order; the output is identical for any number. worker_kind:
    ``'auto'`` (threads for the ``fast`` clustering, whose kernels release the GIL;
    processes for DBSCAN), ``'threads'`` or ``'processes'``. mp_context (processes only):
    ``'fork'``, ``'spawn'`` (``'forkserver'`` is taken as ``'spawn'``) or None (fork when
    no other thread runs, else spawn). Batches below ``min_hits_per_process`` hits per
    process run in the caller. clustering_args: pymepix keys
    ``epsilon``, ``min_samples``, ``tot_threshold``, ``triggers_processed`` (process every n-th
    trigger of a batch), ``cs_min_cluster_size``, ``cs_max_dist_tof`` (s, the fast window),
    ``chunk_size_limit``; and ours ``radius``, ``time_window_ns``, ``min_cluster_size``
    (``cs_sensor_size``, ``cs_tot_offset`` are accepted and ignored). The dict is not modified.
    dbscan_clustering: pymepix's DBSCAN instead of the fast algorithm (pymepix's default is
    True, ours False). tot_threshold: keep hits with ``tot > tot_threshold`` (ToT counts).

    Use as a context manager or call :meth:`close` to stop the workers.
    """

    def __init__(self, cent_timewalk_lut=None, number_of_processes: int = 1,
                 clustering_args: dict | None = None, dbscan_clustering: bool = False,
                 tot_threshold: int | None = None, min_cluster_size: int | None = None,
                 radius: int | None = None, time_window_ns: float | None = None,
                 mp_context: str | None = None, min_hits_per_process: int = 20000,
                 worker_kind: str = "auto") -> None:
        args = dict(clustering_args or {})
        unknown = set(args) - _PYMEPIX_ARGS
        if unknown:
            raise ValueError(f"unknown clustering_args {sorted(unknown)}; known: {sorted(_PYMEPIX_ARGS)}")
        self.epsilon = float(args.get("epsilon", DBSCAN_EPS))
        self.min_samples = int(args.get("min_samples", DBSCAN_MIN_SAMPLES))
        self.tot_threshold = int(tot_threshold if tot_threshold is not None else args.get("tot_threshold", 0))
        self.triggers_processed = int(args.get("triggers_processed", 1))
        if self.triggers_processed < 1:
            raise ValueError("triggers_processed must be >= 1")
        mcs = min_cluster_size if min_cluster_size is not None else args.get(
            "min_cluster_size", args.get("cs_min_cluster_size"))
        self.min_cluster_size = None if mcs is None else int(mcs)
        self.radius = int(radius if radius is not None else args.get("radius", DEFAULT_RADIUS))
        if time_window_ns is None:
            time_window_ns = args.get("time_window_ns")
        if time_window_ns is None and "cs_max_dist_tof" in args:
            time_window_ns = float(args["cs_max_dist_tof"]) * 1e9
        self.time_window_ns = float(DEFAULT_TIME_WINDOW_NS if time_window_ns is None else time_window_ns)
        self.chunk_size_limit = int(args.get("chunk_size_limit", DBSCAN_CHUNK_HITS))
        self.dbscan_clustering = bool(dbscan_clustering)
        self.cent_timewalk_lut = cent_timewalk_lut
        self.min_hits_per_process = int(min_hits_per_process)
        if mp_context not in (None, "fork", "spawn", "forkserver"):
            raise ValueError(f"mp_context must be None, 'fork', 'spawn' or 'forkserver', got {mp_context!r}")
        self._start_method = {None: "auto", "fork": "fork"}.get(mp_context, "spawn")
        check_worker_kind(worker_kind)
        self.worker_kind = worker_kind
        self._pool: OrderedPool | OrderedThreadPool | None = None
        self._pool_key: tuple = ()
        self._parts: list[Centroids] = []
        self.number_of_processes = number_of_processes
        self._params()  # validate now, not at the first batch

    @property
    def number_of_processes(self) -> int:
        return self._number_of_processes

    @number_of_processes.setter
    def number_of_processes(self, n: int) -> None:
        if int(n) != n or n < 1:
            raise ValueError(f"number_of_processes must be an integer >= 1, got {n!r}")
        self._number_of_processes = int(n)

    @property
    def algorithm(self) -> str:
        return "dbscan" if self.dbscan_clustering else "fast"

    def _params(self) -> dict:
        return _make_params(self.algorithm, self.tot_threshold, self.min_cluster_size, self.radius,
                            self.time_window_ns, self.cent_timewalk_lut, self.epsilon,
                            self.min_samples, self.chunk_size_limit)

    @property
    def worker_kind_used(self) -> str:
        """'threads' or 'processes': what ``number_of_processes`` > 1 starts (``worker_kind``
        resolved for the clustering in use)."""
        return pick_worker_kind(self.worker_kind, self.algorithm == "fast")

    def _keep_part(self, arrays: dict, small: None) -> None:
        # from worker processes the arrays are views of a pool slot, valid during this call only
        copy = isinstance(self._pool, OrderedPool)
        self._parts.append(Centroids(**{k: np.array(a) if copy else a for k, a in arrays.items()}))

    def _get_pool(self, params: dict, part_hits: int) -> OrderedPool | OrderedThreadPool:
        """The pool for these settings, with slots for parts of ``part_hits`` hits (a new one
        when the settings, the worker count or kind, or the needed slot size changed)."""
        kind = self.worker_kind_used
        key = (self._number_of_processes, kind, pickle.dumps(params))
        need = part_hits * _SLOT_BYTES_PER_HIT + (1 << 16)
        if (self._pool is None or self._pool_key != key
                or (kind == "processes" and self._pool_slot_bytes < need)):
            self.close()
            self._pool_slot_bytes = 2 * need
            if kind == "threads":
                self._pool = OrderedThreadPool(_part_worker, params, self._number_of_processes,
                                               self._keep_part, tasks_per_thread=1, name="centroid")
            else:
                self._pool = OrderedPool(_part_worker, params, self._number_of_processes, self._keep_part,
                                         slot_bytes=self._pool_slot_bytes, slots_per_worker=1,
                                         start_method=self._start_method, name="centroid")
            self._pool_key = key
        return self._pool

    def _skip_triggers(self, arrays):
        if self.triggers_processed == 1:
            return arrays
        trig = arrays[0]
        trig_index = np.cumsum(np.r_[True, trig[1:] != trig[:-1]]) - 1
        mask = trig_index % self.triggers_processed == 0
        return tuple(a[mask] for a in arrays)

    def process(self, events) -> Centroids:
        """Centroids of one batch of events (sorted by trigger_nr, tof). ``None`` -> empty."""
        if events is None:
            return Centroids.empty()
        params = self._params()
        arrays = self._skip_triggers(_sorted_arrays(events))
        n = arrays[3].size
        if n == 0:
            return Centroids.empty()
        parts = min(self._number_of_processes, max(1, n // max(self.min_hits_per_process, 1)))
        if parts <= 1:
            return _run_sorted(arrays, params)
        ranges = split_at_triggers(arrays[0], parts)
        if len(ranges) == 1:
            return _run_sorted(arrays, params)
        pool = self._get_pool(params, max(e - s for s, e in ranges))
        self._parts = []
        try:
            for s, e in ranges:
                pool.submit(None, {k: a[s:e] for k, a in zip(_COLUMNS, arrays)})
            pool.drain()
        except BaseException:
            self.close(terminate=True)
            raise
        parts_out, self._parts = self._parts, []
        return Centroids.concat(parts_out)

    def close(self, terminate: bool = False) -> None:
        """Stop the workers (threads joined, processes ended; the next parallel batch
        starts them again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(terminate)

    def __enter__(self) -> "CentroidCalculator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


__all__ = ["CentroidCalculator", "split_at_triggers"]
