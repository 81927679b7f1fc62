"""Fast spatio-temporal clustering of Timepix3 hits (connected components in numba).

Definition: two hits are *connected* when they belong to the same trigger (event), their
pixels are within ``radius`` in x and in y (``radius=1``: the 8-neighbourhood plus the pixel
itself) and their times differ by at most ``time_window``. A cluster is a connected
component of that graph (transitive: a chain of hits each within the window of the next).

Algorithm (O(n), one pass): hits are visited in (trigger_nr, time) order. Flat maps over
the pixel matrix hold, per pixel, the time of its latest hit and that hit's cluster. For hit
``i`` the ``(2r+1)^2`` neighbouring cells are read; a cell qualifies when its latest hit is
of the same trigger and within ``time_window`` (one comparison: times are turned into keys
that grow monotonically over the input and jump by more than the window at each new
trigger). Only the latest hit per pixel needs checking: if it is outside the window so are
all earlier ones at that pixel, and earlier ones inside the window are already connected to
it (same pixel). Components are kept with union-find (the earliest hit is the root, path
halving), so labels come out numbered in order of each cluster's first hit.

Input order: the stream is only locally out of order, so sorting first checks whether the
hits are already in (trigger_nr, time) order (the normal case for events from the
:class:`PacketProcessor`); otherwise (trigger_nr, time) is packed into one int64 key and
put in stable order by :func:`.timeorder.time_order` (linear-time bucket or radix passes on
the key's span); a stable ``numpy.lexsort`` is the fallback when the key does not fit. Every
path is stable, so the result does not depend on which one was taken.

Units: times are int64 fine units of 25/4096 ns; ``time_window_ns`` is in ns; x, y in pixels;
ToT in counts of 25 ns.
"""

from __future__ import annotations

import numba
import numpy as np

from tango_tpx.processing.fastcentroids import fits, join_root, union_pass_packed
from tango_tpx.processing.timeorder import time_order
from tango_tpx.tpx3.units import ns_to_units

#: Default largest time gap between two touching hits of one cluster, ns. A particle's hits
#: spread a few ns, plus up to ~100 ns of time-walk for the smallest ToT.
DEFAULT_TIME_WINDOW_NS: float = 200.0
#: Default neighbourhood half-width in pixels (1 = 8-neighbourhood).
DEFAULT_RADIUS: int = 1
#: Default smallest cluster kept by the fast algorithm (pymepix's cs_min_cluster_size).
DEFAULT_MIN_CLUSTER_SIZE: int = 3
#: Largest pixel coordinate accepted (the per-pixel map is sized by the largest x and y).
MAX_COORD: int = 2047
#: Largest |time| accepted, fine units (2^61 units = 162 days; a 48-bit ToA is below 2^60).
MAX_ABS_TIME: int = 1 << 61


# ----------------------------------------------------------------------------------------
# ordering
# ----------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _time_range_ok(t: np.ndarray) -> bool:
    for i in range(t.size):
        if t[i] > MAX_ABS_TIME or t[i] < -MAX_ABS_TIME:
            return False
    return True


def check_times(t: np.ndarray) -> None:
    """ValueError for times beyond +-2^61 fine units (keeps the key arithmetic exact)."""
    if t.size and not _time_range_ok(t):
        raise ValueError(f"times must lie within +-2^61 fine units (25/4096 ns), got {t.min()}..{t.max()}")


@numba.njit(cache=True, nogil=True)
def _is_sorted(trig: np.ndarray, t: np.ndarray) -> bool:
    """True when (trig, t) is lexicographically non-decreasing."""
    for i in range(1, t.size):
        if trig[i] < trig[i - 1] or (trig[i] == trig[i - 1] and t[i] < t[i - 1]):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _combined_key(trig: np.ndarray, t: np.ndarray):
    """One int64 key ordering like (trig, t): ``(trig - min) << b | (t - min)``.

    Returns (key, ok); ok is False when the ranges need more than 62 bits.
    """
    n = t.size
    key = np.empty(n, np.int64)
    tr_lo = np.int64(trig[0])
    tr_hi = tr_lo
    t_lo = np.int64(t[0])
    t_hi = t_lo
    for i in range(n):
        a = np.int64(trig[i])
        b = np.int64(t[i])
        tr_lo = min(tr_lo, a)
        tr_hi = max(tr_hi, a)
        t_lo = min(t_lo, b)
        t_hi = max(t_hi, b)
    # differences as unsigned-safe checks: refuse spans that could overflow
    if t_lo < -(1 << 61) or t_hi > (1 << 61) or tr_lo < -(1 << 61) or tr_hi > (1 << 61):
        return key, False
    t_span = t_hi - t_lo
    tr_span = tr_hi - tr_lo
    bits = 0
    while bits < 63 and (np.int64(1) << bits) <= t_span:
        bits += 1
    tr_bits = 0
    while tr_bits < 63 and (np.int64(1) << tr_bits) <= tr_span:
        tr_bits += 1
    if bits + tr_bits > 62:
        return key, False
    for i in range(n):
        key[i] = ((np.int64(trig[i]) - tr_lo) << bits) | (np.int64(t[i]) - t_lo)
    return key, True


def sort_order(trigger_nr: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """Stable permutation that sorts hits by (trigger_nr, t), or ``None`` if already sorted.

    trigger_nr: integer event numbers; t: int64 times (fine units). A sortedness check
    first (the normal case: events come time-sorted); then one combined int64 key in stable
    order (:func:`.timeorder.time_order`: bucket or LSD radix passes, numpy's stable sort
    beyond their range); a stable ``numpy.lexsort`` when the key would not fit in 62 bits.
    """
    trigger_nr = np.asarray(trigger_nr)
    t = np.asarray(t)
    if t.size < 2 or _is_sorted(trigger_nr, t):
        return None
    key, ok = _combined_key(trigger_nr, t)
    if ok:
        return time_order(key)
    return np.lexsort((t, trigger_nr))


# ----------------------------------------------------------------------------------------
# labelling
# ----------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


_NO_HIT = -(1 << 62)  # "time key" of a pixel without a recent hit


def union_pass(trig: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray, tot: np.ndarray,
               tot_threshold: int, radius: int, window: int, width: int, height: int,
               out: np.ndarray | None = None):
    """Union-find pass over hits sorted by (trig, t); see :func:`_union_pass`.

    Returns (parent, n_clusters); parent is int32 when the hit indices fit (less memory
    traffic), else int64; ``out``, when given, is filled instead of a new array (same size
    and dtype). Windows up to 2^28 fine units take the same pass with one packed map word
    per pixel (:func:`.fastcentroids.union_pass_packed`, identical output).
    """
    parent = np.empty(t.size, np.int32 if t.size < 2**31 - 1 else np.int64) if out is None else out
    args = (trig, x, y, t, tot, int(tot_threshold), int(radius), int(window), int(width), int(height), parent)
    n_roots = union_pass_packed(*args) if fits(t.size, int(window)) else _union_pass(*args)
    return parent, n_roots


@numba.njit(cache=True, nogil=True)
def _union_pass(trig, x, y, t, tot, tot_threshold, radius, window, width, height, parent):
    """Union-find pass over hits sorted by (trig, t), filling ``parent``.

    Returns n_clusters; ``parent[i]`` is -1 for hits left out
    (``tot <= tot_threshold``, ToT counts), otherwise a forest in which every parent is an
    earlier hit and each cluster's root is its first hit. ``window`` in fine units
    (25/4096 ns), ``radius`` in pixels, x < width, y < height.

    Two flat maps over the (padded) pixel matrix hold, per pixel, the time key and the
    cluster root of its latest hit. The time key is ``t`` made monotone over the whole
    input: each trigger's keys start ``window + 1`` after the previous trigger's last key, so
    one comparison ``key >= key_i - window`` means "same trigger and within the window"
    and no hit array is touched for neighbours that do not qualify. A hit joins the root
    stored at its neighbours (usually still a root: no pointer chasing) and merges roots
    when it bridges two clusters.
    """
    n = t.size
    span = 2 * radius + 1
    pw = width + 2 * radius
    keys = np.full((height + 2 * radius) * pw, _NO_HIT, np.int64)
    roots = np.zeros((height + 2 * radius) * pw, parent.dtype)
    offs = np.empty(span * span, np.int64)
    q = 0
    for dy in range(span):
        for dx in range(span):
            offs[q] = dy * pw + dx
            q += 1
    centre = radius * pw + radius
    n_roots = 0
    base = np.int64(0)  # key = base + t within the current trigger
    if n > 0:
        base = -t[0]
    prev_key = np.int64(0)
    for i in range(n):
        ti = t[i]
        if i > 0 and trig[i] != trig[i - 1]:
            base = prev_key + window + 1 - ti
        k = base + ti
        prev_key = k
        if k > (1 << 61):
            # keep keys far from overflow: shift every key down, forget expired ones
            shift = k - window - 1
            for a in range(keys.size):
                keys[a] = keys[a] - shift if keys[a] > k - window - 1 else _NO_HIT
            base -= shift
            k -= shift
            prev_key = k
        if tot[i] <= tot_threshold:
            parent[i] = -1
            continue
        lim = k - window
        p0 = np.int64(y[i]) * pw + np.int64(x[i])
        root = np.int64(i)
        for q in range(offs.size):
            a = p0 + offs[q]
            if keys[a] >= lim:
                root, merged = join_root(parent, roots[a], root, i)
                n_roots -= merged
        parent[i] = root
        if root == i:
            n_roots += 1
        keys[p0 + centre] = k
        roots[p0 + centre] = root
    return n_roots


@numba.njit(cache=True, nogil=True)
def labels_from_parent(parent: np.ndarray):
    """Cluster labels 0.. (in order of each cluster's first hit, -1 = left out) from the
    forest of :func:`union_pass`. Returns (labels int64, n_clusters)."""
    n = parent.size
    labels = np.empty(n, np.int64)
    n_clusters = 0
    for i in range(n):
        if parent[i] < 0:
            labels[i] = -1
            continue
        r = _find(parent, i)
        if r == i:
            labels[i] = n_clusters
            n_clusters += 1
        else:
            labels[i] = labels[r]
    return labels, n_clusters


def label_sorted(trig: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray, tot: np.ndarray,
                 tot_threshold: int, radius: int, window: int, width: int, height: int):
    """Connected-component labels of hits already sorted by (trig, t).

    Hits with ``tot <= tot_threshold`` (ToT counts) are left out (label -1). ``window`` is
    in fine units (25/4096 ns), ``radius`` in pixels; x < width, y < height.
    Returns (labels int64, n_clusters); labels are 0.. in order of each cluster's first hit.
    """
    parent, _ = union_pass(trig, x, y, t, tot, tot_threshold, radius, window, width, height)
    return labels_from_parent(parent)


@numba.njit(cache=True, nogil=True)
def drop_small_clusters(labels: np.ndarray, n_clusters: int, min_size: int):
    """Relabel so that clusters with fewer than ``min_size`` hits become -1.

    Keeps the remaining labels consecutive and in their original order.
    Returns (labels int64, n_clusters).
    """
    size = np.zeros(n_clusters, np.int64)
    for i in range(labels.size):
        if labels[i] >= 0:
            size[labels[i]] += 1
    new = np.empty(n_clusters, np.int64)
    k = 0
    for c in range(n_clusters):
        if size[c] >= min_size:
            new[c] = k
            k += 1
        else:
            new[c] = -1
    out = np.empty(labels.size, np.int64)
    for i in range(labels.size):
        out[i] = new[labels[i]] if labels[i] >= 0 else -1
    return out, k


@numba.njit(cache=True, nogil=True)
def renumber_first_appearance(labels: np.ndarray):
    """Renumber non-negative labels 0.. in order of first appearance (-1 stays -1).

    Returns (labels int64, n_clusters).
    """
    top = -1
    for i in range(labels.size):
        if labels[i] > top:
            top = labels[i]
    mapping = np.full(top + 1, -1, np.int64)
    out = np.empty(labels.size, np.int64)
    k = 0
    for i in range(labels.size):
        lab = labels[i]
        if lab < 0:
            out[i] = -1
        else:
            if mapping[lab] < 0:
                mapping[lab] = k
                k += 1
            out[i] = mapping[lab]
    return out, k


def _frame_size(a: np.ndarray) -> int:
    return int(a.max()) + 1 if a.size else 1


def cluster_hits(trigger_nr: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                 tot: np.ndarray | None = None, *, radius: int = DEFAULT_RADIUS,
                 time_window_ns: float = DEFAULT_TIME_WINDOW_NS, tot_threshold: int = 0,
                 min_cluster_size: int = 1) -> np.ndarray:
    """Cluster labels (int64, input order) of hits by spatio-temporal connected components.

    trigger_nr: event numbers (hits of different events never connect); x, y: pixels;
    t: int64 times in fine units (25/4096 ns: ToA or ToF, only differences matter);
    tot: ToT counts (25 ns), hits with ``tot <= tot_threshold`` get label -1 (ignored when
    ``tot`` is None). ``radius`` pixels (1 = 8-neighbourhood), ``time_window_ns`` ns.
    Clusters with fewer than ``min_cluster_size`` hits get label -1. Labels are 0.. in order
    of each cluster's first hit in (trigger_nr, t) order.
    """
    trigger_nr = np.asarray(trigger_nr)
    x = np.asarray(x)
    y = np.asarray(y)
    t = np.asarray(t, dtype=np.int64)
    n = t.size
    if not (trigger_nr.size == x.size == y.size == n):
        raise ValueError("trigger_nr, x, y and t must have the same length")
    if tot is None:
        tot = np.ones(n, np.uint16)
        tot_threshold = 0
    tot = np.asarray(tot)
    if tot.size != n:
        raise ValueError("tot must have the same length as t")
    radius, window = _check_params(radius, time_window_ns, tot_threshold, min_cluster_size)
    if n == 0:
        return np.empty(0, np.int64)
    _check_coords(x, y)
    check_times(t)
    order = sort_order(trigger_nr, t)
    if order is not None:
        trigger_nr, x, y, t, tot = trigger_nr[order], x[order], y[order], t[order], tot[order]
    labels, ncl = label_sorted(trigger_nr, x, y, t, tot, int(tot_threshold), radius, window,
                               _frame_size(x), _frame_size(y))
    if min_cluster_size > 1:
        labels, ncl = drop_small_clusters(labels, ncl, int(min_cluster_size))
    if order is not None:
        out = np.empty_like(labels)
        out[order] = labels
        labels = out
    return labels


def _check_params(radius, time_window_ns, tot_threshold, min_cluster_size) -> tuple[int, int]:
    """Validate clustering parameters; returns (radius px, window in fine units)."""
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer number of pixels, got {radius!r}")
    if not np.isfinite(time_window_ns) or not 0 <= time_window_ns <= 1e10:
        raise ValueError(f"time_window_ns must be a number in 0..1e10 ns, got {time_window_ns!r}")
    if int(tot_threshold) != tot_threshold or tot_threshold < 0:
        raise ValueError(f"tot_threshold must be an integer >= 0 (ToT counts), got {tot_threshold!r}")
    if int(min_cluster_size) != min_cluster_size or min_cluster_size < 1:
        raise ValueError(f"min_cluster_size must be an integer >= 1, got {min_cluster_size!r}")
    return int(radius), int(ns_to_units(time_window_ns))


def _check_coords(x: np.ndarray, y: np.ndarray) -> None:
    """Reject negative or absurd pixel coordinates (the label map is sized by them)."""
    for name, a in (("x", x), ("y", y)):
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integer pixel coordinates, got dtype {a.dtype}")
        if a.size and (int(a.min()) < 0 or int(a.max()) > MAX_COORD):
            raise ValueError(f"{name} pixel coordinates must lie in 0..{MAX_COORD}")
