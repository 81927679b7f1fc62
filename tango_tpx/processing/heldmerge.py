"""Merging a new chunk of pixels into the held pixels, in time order: the kernels of the
:class:`~tango_tpx.processing.segmenter.Segmenter`'s ``presort`` mode (the live path).

Times are int64 fine units of 25/4096 ns. The held pixels are in time order; the new ones
are sorted (stably) and merged in, held first on equal times, so pixels of equal ToA keep
their arrival order whatever the chunking. When the new pixels pack (one chip, x, y, ToT
of 10 bits, a span of at most 2**32 keys: :func:`~.timeorder.sort_packed`) they are sorted
as packed words and merged from those in one sequential pass; otherwise through an index
order (:func:`~.timeorder.time_order`) and a gather.
"""

from __future__ import annotations

import numba
import numpy as np

from ..tpx3.hits import PixelHits
from .timeorder import sort_packed, time_order, unpack_pixel

#: mean pixels per bucket of the packed sort's first pass: a live chunk is short (tens of ms)
#: and bunched around triggers, so narrow buckets keep most of its pixels out of the
#: radix pass of crowded buckets (1.2x faster than 16 on simulated pulsed data)
LIVE_BUCKET_KEYS = 4


@numba.njit(cache=True, nogil=True)
def _merge_gather(hx, hy, ht, htot, hc, nx, ny, nt, ntot, nc, order, ox, oy, ot, otot, oc):
    """Merge held pixels (in time order) with new pixels taken in ``order`` (time order
    through it) into the output columns; stable (held first on equal times)."""
    nh = ht.shape[0]
    nn = order.shape[0]
    i = 0
    j = 0
    for k in range(nh + nn):
        if j < nn and (i >= nh or nt[order[j]] < ht[i]):
            s = order[j]
            ox[k], oy[k], ot[k], otot[k], oc[k] = nx[s], ny[s], nt[s], ntot[s], nc[s]
            j += 1
        else:
            ox[k], oy[k], ot[k], otot[k], oc[k] = hx[i], hy[i], ht[i], htot[i], hc[i]
            i += 1


@numba.njit(cache=True, nogil=True)
def _uniform(a: np.ndarray) -> bool:
    """All elements of ``a`` (at least one) equal."""
    v = a[0]
    for i in range(1, a.shape[0]):
        if a[i] != v:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _merge_packed(hx, hy, ht, htot, hc, packed, lo, shift, chip, ox, oy, ot, otot, oc):
    """:func:`_merge_gather` for new pixels sorted and packed by
    :func:`~.timeorder.sort_packed` (``toa = lo + (p >> 32 << shift)``; x, y, ToT of 10 bits
    each), all of chip ``chip``."""
    nh = ht.shape[0]
    nn = packed.shape[0]
    i = 0
    j = 0
    k = 0
    while j < nn:
        t, px, py, ptot = unpack_pixel(packed[j], lo, shift)
        while i < nh and ht[i] <= t:       # held first on equal times
            ox[k], oy[k], ot[k], otot[k], oc[k] = hx[i], hy[i], ht[i], htot[i], hc[i]
            i += 1
            k += 1
        ox[k] = px
        oy[k] = py
        ot[k] = t
        otot[k] = ptot
        oc[k] = chip
        j += 1
        k += 1
    while i < nh:
        ox[k], oy[k], ot[k], otot[k], oc[k] = hx[i], hy[i], ht[i], htot[i], hc[i]
        i += 1
        k += 1


def merge_in_order(held: PixelHits, px: PixelHits) -> tuple[PixelHits, int]:
    """``held`` (in time order) and ``px`` (at least one pixel, any order) merged into new
    arrays in stable time order (held first on equal ToAs). Returns (the merged pixels,
    the newest ToA of ``px``, fine units)."""
    n = len(held) + len(px)
    ox, oy, ot = np.empty(n, np.uint16), np.empty(n, np.uint16), np.empty(n, np.int64)
    otot, oc = np.empty(n, np.uint16), np.empty(n, np.uint8)
    packed = sort_packed(px.toa, px.x, px.y, px.tot, LIVE_BUCKET_KEYS) if _uniform(px.chip) else None
    if packed is not None:
        p, lo, shift = packed
        _merge_packed(held.x, held.y, held.toa, held.tot, held.chip, p, lo, shift, px.chip[0],
                      ox, oy, ot, otot, oc)
        newest = lo + (int(p[-1] >> np.uint64(32)) << shift)
    else:
        order = time_order(px.toa)
        _merge_gather(held.x, held.y, held.toa, held.tot, held.chip, px.x, px.y, px.toa, px.tot, px.chip,
                      order, ox, oy, ot, otot, oc)
        newest = int(px.toa[order[-1]])
    return PixelHits(ox, oy, ot, otot, oc), int(newest)


__all__ = ["merge_in_order"]
