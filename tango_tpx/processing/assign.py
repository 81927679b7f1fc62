"""Trigger assignment and the event window: the kernels of
:func:`~tango_tpx.processing.segmenter.segment_events`.

A pixel belongs to the last trigger at or before its ToA; ``tof = toa - trigger time``;
it is kept when ``lo <= tof <= hi``. Times are int64 fine units of 25/4096 ns. The pixels
are walked in time order, either through an index order (:func:`_assign`) or already
sorted and packed (:func:`_assign_packed`, from :func:`~.timeorder.sort_packed`).
"""

from __future__ import annotations

import numba

from .timeorder import unpack_pixel


@numba.njit(cache=True, nogil=True)
def _assign(toa, x, y, tot, order, use_order, trig, nr0, lo, hi, o_nr, o_x, o_y, o_tof, o_tot, o_toa):
    """Walk the pixels in time ``order`` (``use_order`` False: they are in time order) and
    the sorted trigger times together; write the in-window events. Returns (events written,
    pixels before the first trigger, pixels outside the window)."""
    nt = trig.shape[0]
    j = -1
    n = 0
    before = 0
    outside = 0
    for k in range(toa.shape[0]):
        i = order[k] if use_order else k
        t = toa[i]
        while j + 1 < nt and trig[j + 1] <= t:
            j += 1
        if j < 0:
            before += 1
            continue
        tof = t - trig[j]
        if tof < lo or tof > hi:
            outside += 1
            continue
        o_nr[n] = nr0 + j
        o_x[n] = x[i]
        o_y[n] = y[i]
        o_tof[n] = tof
        o_tot[n] = tot[i]
        o_toa[n] = t
        n += 1
    return n, before, outside


@numba.njit(cache=True, nogil=True)
def _assign_packed(packed, lo_t, shift, trig, nr0, lo, hi, o_nr, o_x, o_y, o_tof, o_tot, o_toa):
    """:func:`_assign` for pixels in time order packed by
    :func:`~.timeorder.sort_packed` (``toa = lo_t + (p >> 32 << shift)``, x, y, ToT 10 bits)."""
    nt = trig.shape[0]
    j = -1
    n = 0
    before = 0
    outside = 0
    for k in range(packed.shape[0]):
        t, px, py, ptot = unpack_pixel(packed[k], lo_t, shift)
        while j + 1 < nt and trig[j + 1] <= t:
            j += 1
        if j < 0:
            before += 1
            continue
        tof = t - trig[j]
        if tof < lo or tof > hi:
            outside += 1
            continue
        o_nr[n] = nr0 + j
        o_x[n] = px
        o_y[n] = py
        o_tof[n] = tof
        o_tot[n] = ptot
        o_toa[n] = t
        n += 1
    return n, before, outside


__all__ = ["_assign", "_assign_packed"]
