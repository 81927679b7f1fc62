"""Centroids of Timepix3 clusters (pymepix ``CentroidCalculator`` equivalent).

Input: events (:class:`tango_tpx.processing.events.Events` or any object/mapping with the
fields ``trigger_nr`` (int), ``x``, ``y`` (pixels), ``tof`` (int64 fine units of 25/4096 ns)
and ``tot`` (ToT counts of 25 ns)).

Per cluster (hits with ``tot > tot_threshold`` only):
    trigger_nr, x = sum(x*tot)/sum(tot), y likewise (float32 pixels), tof likewise (int64 fine
    units, rounded to the nearest unit, optionally time-walk corrected by the table entry of
    tot_max), tot_sum (uint32 counts), tot_avg (float32 counts), tot_max (uint16 counts),
    size (uint32 hits). Output sorted by (trigger_nr, tof).

Two clustering algorithms:
    ``'fast'`` (default) spatio-temporal connected components (:mod:`.clustering`), O(n).
    ``'dbscan'`` scikit-learn DBSCAN exactly as pymepix: features
    ``[trigger*eps*1000, x, y, tof_s * 1.7e7]``, ``eps=2.0``, ``min_samples=3``, run over
    chunks of whole triggers (pymepix's ``chunk_size_limit`` of 6500 hits); noise dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numba
import numpy as np

from tango_tpx.processing import fastcentroids
from tango_tpx.processing.clustering import (
    DEFAULT_MIN_CLUSTER_SIZE,
    DEFAULT_RADIUS,
    DEFAULT_TIME_WINDOW_NS,
    MAX_ABS_TIME,
    MAX_COORD,
    _check_coords,
    check_times,
    _frame_size,
    renumber_first_appearance,
    sort_order,
    union_pass,
)
from tango_tpx.processing.settings import ClusteringBackend, ClusteringConfig, register_clustering
from tango_tpx.processing.timewalk import lut_to_units
from tango_tpx.tpx3.hits import _SoA
from tango_tpx.tpx3.units import UNIT_NS, ns_to_units

#: pymepix scales ToF (s) by this before DBSCAN: eps=2 then spans 2/1.7e7 s = 117.6 ns.
DBSCAN_TOF_SCALE: float = 1.7e7
#: pymepix's DBSCAN defaults.
DBSCAN_EPS: float = 2.0
DBSCAN_MIN_SAMPLES: int = 3
#: pymepix runs DBSCAN on chunks of whole triggers of about this many hits.
DBSCAN_CHUNK_HITS: int = 6500
#: The built-in clustering keys (others may be registered, see :mod:`.settings`).
ALGORITHMS = ("fast", "dbscan")
#: Per-thread scratch arrays of the fast path (union-find forest, per-cluster sums).
_WORKSPACE = fastcentroids.Workspace()


@dataclass
class Centroids(_SoA):
    """Cluster centroids, sorted by (trigger_nr, tof).

    trigger_nr: int64 global event number; x, y: float32 ToT-weighted mean position, pixels;
    tof: int64 ToT-weighted mean time of flight, fine units of 25/4096 ns (time-walk corrected
    when a table is given); tot_sum: uint32 summed ToT, counts of 25 ns; tot_avg: float32 mean
    ToT, counts; tot_max: uint16 largest ToT, counts; size: uint32 number of hits.
    """

    trigger_nr: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tof: np.ndarray
    tot_sum: np.ndarray
    tot_avg: np.ndarray
    tot_max: np.ndarray
    size: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> "Centroids":
        return cls(np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, np.float32),
                   np.zeros(n, np.int64), np.zeros(n, np.uint32), np.zeros(n, np.float32),
                   np.zeros(n, np.uint16), np.zeros(n, np.uint32))


# ----------------------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------------------
#: Columns of the per-cluster sums row of :func:`_accumulate_into`: first hit time and its
#: trigger, x*ToT, y*ToT, (t - first time)*ToT, ToT sum, ToT max, hit count.
_T0, _TRIG, _SX, _SY, _ST, _TSUM, _TMAX, _SIZE = range(8)
#: Insertion moves allowed for the centroid order: at first, and added per centroid (dense ion
#: peaks need 4 moves per centroid on average, 48 for 1 % of them; past the allowance the
#: rest is sorted afterwards, about 40 ns per centroid)
_MOVES_FIRST, _MOVES_PER_CENTROID = 4096, 16
_N_SUMS: int = 8


@numba.njit(cache=True, nogil=True)
def _accumulate(ids, from_parent, n_clusters, trig, x, y, t, tot, min_size, tw_units):
    """Per-cluster ToT-weighted centroids of hits in (trig, t) order.

    ``ids``: cluster labels 0..n_clusters-1 (-1 = skip), or with ``from_parent`` the
    union-find forest of ``union_pass`` (consumed: each root is overwritten with
    ``-2 - cluster_id``; parents point to earlier hits, so a root is always met before its
    members and clusters are numbered in order of their first hit).

    Integer sums are exact; tof is averaged relative to the cluster's first hit (no int64
    overflow) and rounded half up to a fine unit, then corrected by ``tw_units`` (fine units
    per ToT bin, indexed by tot_max - 1, clamped; empty = no correction). Clusters with fewer
    than ``min_size`` hits are dropped. Every hit has tot >= 1 (tot > tot_threshold >= 0), so
    the ToT sums are never zero.

    The centroids come out in order of each cluster's first hit, each moved back past the
    ones before it with a larger (trigger_nr, tof) (stable insertion; centroid times run
    nearly in that order): while the moves stay within :data:`_MOVES_FIRST` plus
    :data:`_MOVES_PER_CENTROID` per centroid the result is sorted by (trigger_nr, tof), past
    that the rest is appended in first-hit order (and sorted after: linear time either way).
    """
    return _accumulate_into(ids, from_parent, n_clusters, trig, x, y, t, tot, min_size, tw_units,
                            np.empty((n_clusters, _N_SUMS), np.int64))


@numba.njit(cache=True, nogil=True)
def _accumulate_into(ids, from_parent, n_clusters, trig, x, y, t, tot, min_size, tw_units, sums):
    """:func:`_accumulate` with its per-cluster sums in ``sums``, an int64 array of at least
    ``n_clusters`` rows of :data:`_N_SUMS` (scratch: overwritten, need not be zero). One row
    holds all of a cluster's sums (columns ``_T0`` ... ``_SIZE``), so a hit updates one cache
    line. From a forest each row is started by its root, which comes before its members; from
    labels the rows are zeroed first."""
    k = n_clusters
    if not from_parent:
        sums[:k, :] = 0
    n_seen = 0
    kept_at = max(np.int64(min_size), np.int64(1))   # a cluster is kept once it reaches this size
    m = 0                                            # clusters kept
    for i in range(ids.size):
        p = np.int64(ids[i])
        if p < 0:
            continue
        ti = t[i]
        w = np.int64(tot[i])
        if from_parent:
            if p == i:   # a root, met before its members: its row starts here (no zeroing pass)
                c = n_seen
                n_seen += 1
                ids[i] = -2 - c
                sums[c, _T0] = ti
                sums[c, _TRIG] = trig[i]
                sums[c, _SX] = np.int64(x[i]) * w
                sums[c, _SY] = np.int64(y[i]) * w
                sums[c, _ST] = 0
                sums[c, _TSUM] = w
                sums[c, _TMAX] = w
                sums[c, _SIZE] = 1
                m += kept_at == 1
                continue
            r = p
            while ids[r] >= 0:
                r = np.int64(ids[r])
            c = -2 - np.int64(ids[r])
            ids[i] = r
        else:
            c = p
            if sums[c, _SIZE] == 0:
                sums[c, _T0] = ti
                sums[c, _TRIG] = trig[i]
        sums[c, _SX] += np.int64(x[i]) * w
        sums[c, _SY] += np.int64(y[i]) * w
        sums[c, _ST] += (ti - sums[c, _T0]) * w
        sums[c, _TSUM] += w
        sums[c, _TMAX] = max(sums[c, _TMAX], w)
        size = sums[c, _SIZE] + 1
        sums[c, _SIZE] = size
        m += size == kept_at

    o_trig = np.empty(m, np.int64)
    o_x = np.empty(m, np.float32)
    o_y = np.empty(m, np.float32)
    o_t = np.empty(m, np.int64)
    o_tsum = np.empty(m, np.uint32)
    o_tavg = np.empty(m, np.float32)
    o_tmax = np.empty(m, np.uint16)
    o_size = np.empty(m, np.uint32)
    nlut = tw_units.size
    budget = np.int64(_MOVES_FIRST)
    m = 0
    for c in range(k):
        if sums[c, _SIZE] < kept_at:
            continue
        wsum = sums[c, _TSUM]
        tr = sums[c, _TRIG]
        tof = sums[c, _T0] + (2 * sums[c, _ST] + wsum) // (2 * wsum)
        if nlut > 0:
            b = min(max(sums[c, _TMAX] - 1, 0), nlut - 1)
            tof -= tw_units[b]
        q = m
        if budget >= 0:
            budget += _MOVES_PER_CENTROID
            while q > 0 and m - q <= budget and (o_trig[q - 1] > tr or (o_trig[q - 1] == tr and o_t[q - 1] > tof)):
                q -= 1
            if m - q > budget:
                budget = -1
                q = m
            else:
                budget -= m - q
                for s in range(m, q, -1):
                    o_trig[s] = o_trig[s - 1]
                    o_x[s] = o_x[s - 1]
                    o_y[s] = o_y[s - 1]
                    o_t[s] = o_t[s - 1]
                    o_tsum[s] = o_tsum[s - 1]
                    o_tavg[s] = o_tavg[s - 1]
                    o_tmax[s] = o_tmax[s - 1]
                    o_size[s] = o_size[s - 1]
        o_trig[q] = tr
        o_x[q] = sums[c, _SX] / wsum
        o_y[q] = sums[c, _SY] / wsum
        o_t[q] = tof
        o_tsum[q] = wsum
        o_tavg[q] = wsum / sums[c, _SIZE]
        o_tmax[q] = sums[c, _TMAX]
        o_size[q] = sums[c, _SIZE]
        m += 1
    return o_trig, o_x, o_y, o_t, o_tsum, o_tavg, o_tmax, o_size


@numba.njit(cache=True, nogil=True)
def _gather(order, trig, x, y, t, tot):
    n = order.size
    a = np.empty(n, trig.dtype)
    b = np.empty(n, x.dtype)
    c = np.empty(n, y.dtype)
    d = np.empty(n, t.dtype)
    e = np.empty(n, tot.dtype)
    for i in range(n):
        j = order[i]
        a[i] = trig[j]
        b[i] = x[j]
        c[i] = y[j]
        d[i] = t[j]
        e[i] = tot[j]
    return a, b, c, d, e


def _sorted_centroids(fields) -> Centroids:
    """Centroids from kernel output, put in (trigger_nr, tof) order (stable)."""
    cen = Centroids(*fields)
    n = len(cen)
    if n > 1:
        order = sort_order(cen.trigger_nr, cen.tof)
        if order is not None:
            cen = cen.take(order)
    return cen


# ----------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------
def _field(events, name: str) -> np.ndarray:
    if isinstance(events, Mapping):
        value = events[name]
    else:
        value = getattr(events, name)
    return np.asarray(value)


def _checked_arrays(events) -> tuple[tuple[np.ndarray, ...], bool]:
    """((trigger_nr int64, x, y, tof int64, tot), already sorted by (trigger_nr, tof)) from an
    Events-like object, validated; ValueError/TypeError name the bad field."""
    try:
        trig, x, y, tof, tot = (_field(events, n) for n in ("trigger_nr", "x", "y", "tof", "tot"))
    except (KeyError, AttributeError) as exc:
        raise TypeError("events need the fields trigger_nr, x, y, tof (fine units), tot (counts)") from exc
    n = tof.size
    for name, a in (("trigger_nr", trig), ("x", x), ("y", y), ("tot", tot)):
        if a.size != n:
            raise ValueError(f"events field {name} has {a.size} values, tof has {n}")
    for name, a in (("trigger_nr", trig), ("tof", tof), ("tot", tot)):
        if a.dtype.kind not in "iu":
            raise ValueError(f"events field {name} must be integer, got dtype {a.dtype} "
                             "(tof in int64 fine units of 25/4096 ns, tot in ToT counts)")
    if (n > 1 and trig.dtype == np.int64 and tof.dtype == np.int64 and x.dtype.kind in "iu"
            and y.dtype.kind in "iu"):
        # the common case in one pass; the checks below only name what failed
        x_lo, x_hi, y_lo, y_hi, tot_lo, times_ok, ordered = fastcentroids.scan_events(trig, x, y, tof, tot, MAX_ABS_TIME)
        if tot_lo >= 0 and x_lo >= 0 and y_lo >= 0 and max(x_hi, y_hi) <= MAX_COORD and times_ok:
            return (trig, x, y, tof, tot), ordered
    if tot.size and int(tot.min()) < 0:
        raise ValueError("events field tot must be >= 0 (ToT counts)")
    _check_coords(x, y)
    check_times(tof)
    return (trig.astype(np.int64, copy=False), x, y, tof.astype(np.int64, copy=False), tot), False


def _event_arrays(events) -> tuple[np.ndarray, ...]:
    """(trigger_nr int64, x, y, tof int64, tot) from an Events-like object, validated."""
    return _checked_arrays(events)[0]


def _sorted_arrays(events):
    (trig, x, y, tof, tot), ordered = _checked_arrays(events)
    order = None if ordered else sort_order(trig, tof)
    if order is not None:
        trig, x, y, tof, tot = _gather(order, trig, x, y, tof, tot)
    return trig, x, y, tof, tot


def _tw_units(lut) -> np.ndarray:
    if lut is None:
        return np.zeros(0, np.int64)
    return lut_to_units(lut)


# ----------------------------------------------------------------------------------------
# the two algorithms on sorted arrays
# ----------------------------------------------------------------------------------------
def _fast_sorted(trig, x, y, tof, tot, *, tot_threshold, min_cluster_size, radius, window,
                 tw_units) -> Centroids:
    n = tof.size
    parent = _WORKSPACE.array("parent", n, np.int32) if n < 2**31 - 1 else None
    parent, ncl = union_pass(trig, x, y, tof, tot, int(tot_threshold), radius, window,
                             _frame_size(x), _frame_size(y), out=parent)
    sums = _WORKSPACE.array("sums", _N_SUMS * ncl, np.int64).reshape(ncl, _N_SUMS)
    return _sorted_centroids(_accumulate_into(parent, True, ncl, trig, x, y, tof, tot,
                                              int(min_cluster_size), tw_units, sums))


def dbscan_labels(trig, x, y, tof, *, eps: float = DBSCAN_EPS, min_samples: int = DBSCAN_MIN_SAMPLES,
                  chunk_hits: int = DBSCAN_CHUNK_HITS) -> np.ndarray:
    """pymepix's DBSCAN labels (-1 noise) for hits sorted by trigger_nr.

    Features ``[(trigger - first)*eps*1000, x, y, tof_s * 1.7e7]`` (tof in fine units here,
    converted to s), run on chunks of whole triggers of about ``chunk_hits`` hits. Labels are
    unique over the whole input.
    """
    from sklearn.cluster import DBSCAN

    n = tof.size
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    starts = np.flatnonzero(np.r_[True, trig[1:] != trig[:-1]])
    bounds = [0]
    acc_start = 0
    for s in starts[1:]:
        if s - acc_start >= chunk_hits:
            bounds.append(int(s))
            acc_start = s
    bounds.append(n)
    offset = 0
    scale = UNIT_NS * 1e-9 * DBSCAN_TOF_SCALE
    for a, b in zip(bounds[:-1], bounds[1:]):
        feats = np.column_stack(((trig[a:b] - trig[a]).astype(np.float64) * (eps * 1000.0),
                                 x[a:b].astype(np.float64), y[a:b].astype(np.float64),
                                 tof[a:b].astype(np.float64) * scale))
        lab = DBSCAN(eps=eps, min_samples=min_samples, metric="euclidean", n_jobs=1).fit(feats).labels_
        lab = lab.astype(np.int64)
        good = lab >= 0
        lab[good] += offset
        labels[a:b] = lab
        if good.any():
            offset = int(lab[good].max()) + 1
    return labels


def _dbscan_sorted(trig, x, y, tof, tot, *, tot_threshold, min_cluster_size, eps, min_samples,
                   chunk_hits, tw_units) -> Centroids:
    keep = tot > tot_threshold
    if not keep.all():
        trig, x, y, tof, tot = trig[keep], x[keep], y[keep], tof[keep], tot[keep]
    labels = dbscan_labels(trig, x, y, tof, eps=eps, min_samples=min_samples, chunk_hits=chunk_hits)
    labels, ncl = renumber_first_appearance(labels)
    return _sorted_centroids(_accumulate(labels, False, ncl, trig, x, y, tof, tot,
                                         int(min_cluster_size), tw_units))


def _fast_backend(arrays, config: ClusteringConfig, tw_units) -> Centroids:
    window = int(ns_to_units(config.time_window_ns))
    return _fast_sorted(*arrays, tot_threshold=config.tot_threshold, min_cluster_size=config.min_cluster_size,
                        radius=config.radius, window=window, tw_units=tw_units)


def _dbscan_backend(arrays, config: ClusteringConfig, tw_units) -> Centroids:
    return _dbscan_sorted(*arrays, tot_threshold=config.tot_threshold, min_cluster_size=config.min_cluster_size,
                          eps=config.eps, min_samples=config.min_samples, chunk_hits=config.chunk_hits,
                          tw_units=tw_units)


register_clustering("fast", ClusteringBackend(_fast_backend, DEFAULT_MIN_CLUSTER_SIZE,
                                              "connected components: radius px, time window ns"))
register_clustering("dbscan", ClusteringBackend(_dbscan_backend, 1, "pymepix's DBSCAN: eps, min_samples"))


def _run_sorted(arrays, params: dict) -> Centroids:
    config: ClusteringConfig = params["config"]
    return config.backend.run(arrays, config, params["tw_units"])


def _make_params(algorithm, tot_threshold, min_cluster_size, radius, time_window_ns,
                 cent_timewalk_lut, eps, min_samples, chunk_hits) -> dict:
    """{'config': ClusteringConfig, 'tw_units': centroid time-walk table in fine units};
    ValueError names a bad parameter."""
    config = algorithm if isinstance(algorithm, ClusteringConfig) else ClusteringConfig(
        algorithm=algorithm, radius=radius, time_window_ns=time_window_ns, min_cluster_size=min_cluster_size,
        tot_threshold=tot_threshold, eps=eps, min_samples=min_samples, chunk_hits=chunk_hits)
    return dict(config=config, tw_units=_tw_units(cent_timewalk_lut))


def calculate_centroids(events, algorithm: "str | ClusteringConfig" = "fast", tot_threshold: int = 0,
                        min_cluster_size: int | None = None, radius: int = DEFAULT_RADIUS,
                        time_window_ns: float = DEFAULT_TIME_WINDOW_NS, cent_timewalk_lut=None,
                        eps: float = DBSCAN_EPS, min_samples: int = DBSCAN_MIN_SAMPLES,
                        chunk_size_limit: int = DBSCAN_CHUNK_HITS) -> Centroids:
    """Cluster the hits of ``events`` and return their centroids, sorted by (trigger_nr, tof).

    algorithm: a key of the clustering registry (:mod:`.settings`): ``'fast'`` (connected
    components: ``radius`` pixels, ``time_window_ns`` ns) or ``'dbscan'`` (pymepix: ``eps``,
    ``min_samples`` on ``[x, y, tof_s*1.7e7]`` per trigger); or a whole
    :class:`~.settings.ClusteringConfig` (the other clustering arguments are then ignored).
    tot_threshold: keep hits with ``tot > tot_threshold`` (ToT counts).
    min_cluster_size: drop clusters with fewer hits; ``None`` = 3 for 'fast', 1 for 'dbscan'
    (pymepix keeps every DBSCAN cluster). cent_timewalk_lut: table in ns per ToT bin
    (:mod:`.timewalk`), subtracted from the centroid tof by its tot_max.
    """
    params = _make_params(algorithm, tot_threshold, min_cluster_size, radius, time_window_ns,
                          cent_timewalk_lut, eps, min_samples, chunk_size_limit)
    arrays = _sorted_arrays(events)
    if arrays[3].size == 0:
        return Centroids.empty()
    return _run_sorted(arrays, params)


class RegisteredCalculator:
    """``process(events) -> Centroids`` with one :class:`~.settings.ClusteringConfig` (any
    registered backend) and an optional centroid time-walk table (ns per ToT bin)."""

    def __init__(self, config: ClusteringConfig, cent_timewalk_lut=None) -> None:
        self.params = _make_params(config, None, None, None, None, cent_timewalk_lut, None, None, None)

    def process(self, events) -> Centroids:
        arrays = _sorted_arrays(events)
        return _run_sorted(arrays, self.params) if arrays[3].size else Centroids.empty()


def __getattr__(name: str):
    """``CentroidCalculator`` and ``split_at_triggers`` live in :mod:`.calculator` (imported
    on first use: that module imports this one)."""
    if name in ("CentroidCalculator", "split_at_triggers"):
        from tango_tpx.processing import calculator
        return getattr(calculator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
