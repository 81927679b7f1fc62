"""Kernels of the ``'fast'`` clustering's hot path (numba): one validation and sort-check
pass over the event fields, and the union-find pass over sorted hits with one packed word
per pixel.

The packed pass fills the same forest as :func:`.clustering._union_pass` (same trigger,
pixels within ``radius`` in x and y, times within ``time_window``, transitive; every parent
an earlier hit, each root its cluster's first hit), but per pixel one int64 holds the time
key of its latest hit (high bits) and that hit's cluster root (low bits, as many as the hit
count needs), so one load and one comparison test a neighbour. The time keys are ``t`` made
monotone over the input (each trigger starts ``window + 1`` after the previous trigger's
last key) and are kept below 2^(61 - root bits) (at least 2^30) by shifting the map down,
forgetting expired hits, when they pass it; so the window must stay below 2^28 fine units
(1.6 ms) and the hit count below 2^31 (:func:`fits`); larger inputs take the two-map pass.

Units: times int64 fine units of 25/4096 ns; ``window`` fine units; x, y pixels; ToT counts.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

#: Largest time window handled by the packed pass, fine units (2^28 units = 1.64 ms).
MAX_WINDOW: int = 1 << 28
#: Largest number of hits handled by the packed pass.
MAX_HITS: int = (1 << 31) - 1
_NO_HIT = np.int64(-(1 << 63))  # map entry of a pixel without a recent hit
_NO_ROOT = np.int64(1 << 62)  # above every root index


#: Scratch kept by a :class:`Workspace` between calls, bytes per thread at most.
WORKSPACE_MAX_BYTES: int = 128 << 20


class Workspace(threading.local):
    """Scratch arrays of the fast path, one set per thread, kept between calls.

    Fresh arrays cost a page fault per 4 KiB on first touch (measured: 12-22 ns of system
    time per hit, against about 50 ns of clustering); a worker that clusters chunk after
    chunk reuses these instead. Arrays beyond :data:`WORKSPACE_MAX_BYTES` in all are handed
    out but not kept.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, size: int, dtype) -> np.ndarray:
        """A scratch array of ``size`` values (contents undefined), valid until the next
        call for ``name`` on this thread."""
        have = self.arrays.get(name)
        if have is not None and have.dtype == dtype and have.size >= size:
            return have[:size]
        fresh = np.empty(max(size, 1), dtype)
        kept = sum(a.nbytes for k, a in self.arrays.items() if k != name)
        if kept + fresh.nbytes <= WORKSPACE_MAX_BYTES:
            self.arrays[name] = fresh
        else:
            self.arrays.pop(name, None)
        return fresh[:size]


def fits(n_hits: int, window: int) -> bool:
    """True when the packed pass handles ``n_hits`` hits with ``window`` fine units."""
    return n_hits <= MAX_HITS and 0 <= window <= MAX_WINDOW


@numba.njit(cache=True, nogil=True)
def scan_events(trig, x, y, t, tot, max_abs_time):
    """One pass over the event fields (n >= 1): (smallest x, largest x, smallest y, largest y,
    smallest tot, every time within +-``max_abs_time``, sorted by (trig, t))."""
    n = t.size
    x_lo = np.int64(x[0])
    x_hi = x_lo
    y_lo = np.int64(y[0])
    y_hi = y_lo
    tot_lo = np.int64(tot[0])
    times_ok = True
    ordered = True
    for i in range(n):
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        x_lo = min(x_lo, xi)
        x_hi = max(x_hi, xi)
        y_lo = min(y_lo, yi)
        y_hi = max(y_hi, yi)
        tot_lo = min(tot_lo, np.int64(tot[i]))
        ti = t[i]
        times_ok &= (ti <= max_abs_time) & (ti >= -max_abs_time)
        if i > 0:
            ordered &= (trig[i] > trig[i - 1]) | ((trig[i] == trig[i - 1]) & (ti >= t[i - 1]))
    return x_lo, x_hi, y_lo, y_hi, tot_lo, times_ok, ordered


@numba.njit(cache=True, nogil=True, inline="always")
def join_root(parent, r, root, i):
    """Hit ``i`` (cluster so far: ``root``, which is ``i`` while it has joined nothing) meets
    a neighbour of the cluster holding hit ``r``: find that cluster's root (path halving;
    usually ``r`` is still one) and join. The earlier root absorbs the later one, so each
    root stays its cluster's first hit. Returns (root of hit ``i``, roots merged away: 0 or 1)."""
    r = np.int64(r)
    while parent[r] != r:
        parent[r] = parent[parent[r]]
        r = np.int64(parent[r])
    if r == root:
        return root, 0
    if root == i:  # first neighbour: join its cluster
        return r, 0
    if r < root:  # bridge: the earlier root absorbs the later one
        parent[root] = r
        return r, 1
    parent[r] = root
    return root, 1


@numba.njit(cache=True, nogil=True)
def union_pass_packed(trig, x, y, t, tot, tot_threshold, radius, window, width, height, parent):
    """:func:`.clustering._union_pass` with one packed map word per pixel (see the module
    doc); fills ``parent`` (int32) identically and returns n_clusters."""
    n = t.size
    span = 2 * radius + 1
    pw = width + 2 * radius
    pix = np.full((height + 2 * radius) * pw, _NO_HIT, np.int64)
    offs = np.empty(span * span, np.int64)
    q = 0
    for dy in range(span):
        for dx in range(span):
            offs[q] = dy * pw + dx
            q += 1
    centre = radius * pw + radius
    root_bits = 1
    while (np.int64(1) << root_bits) < n:
        root_bits += 1
    root_mask = (np.int64(1) << root_bits) - 1
    key_limit = np.int64(1) << (61 - root_bits)
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
        if k > key_limit:
            # shift every stored key down by k - window - 1, forget the expired ones
            shift = k - window - 1
            for a in range(pix.size):
                e = pix[a]
                if (e >> root_bits) >= k - window:
                    pix[a] = e - (shift << root_bits)
                else:
                    pix[a] = _NO_HIT
            base -= shift
            k -= shift
        prev_key = k
        if tot[i] <= tot_threshold:
            parent[i] = -1
            continue
        lim = (k - window) << root_bits
        p0 = np.int64(y[i]) * pw + np.int64(x[i])
        root = np.int64(i)
        merge = True   # visit every cell in order and merge the clusters that meet here
        if radius == 1:
            # the 3x3 neighbourhood unrolled; the smallest and largest stored root of the
            # qualifying cells are taken with selects, so the common cases (no neighbour, or
            # all neighbours of one cluster) cost no data-dependent branch per cell
            r_lo = _NO_ROOT
            r_hi = np.int64(-1)
            for dy in range(3):
                row = p0 + dy * pw
                for dx in range(3):
                    e = pix[row + dx]
                    ok = e >= lim
                    r_lo = min(r_lo, (e & root_mask) if ok else _NO_ROOT)
                    r_hi = max(r_hi, (e & root_mask) if ok else np.int64(-1))
            merge = r_lo < r_hi
            if r_hi >= 0 and r_lo == r_hi:
                root, _ = join_root(parent, r_lo, root, i)
        if merge:
            for q in range(offs.size):
                e = pix[p0 + offs[q]]
                if e >= lim:
                    root, merged = join_root(parent, e & root_mask, root, i)
                    n_roots -= merged
        parent[i] = root
        if root == i:
            n_roots += 1
        pix[p0 + centre] = (k << root_bits) | root
    return n_roots
