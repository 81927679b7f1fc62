"""Stable time order of pixel times: a linear-time radix argsort.

Times are int64 fine units of 25/4096 ns (:mod:`tango_tpx.tpx3.units`). The order is stable
(equal times keep their input order), which the event segmenter (:mod:`.segmenter`) relies on:
pixels of equal ToA keep their arrival order, whatever the chunking.
"""

from __future__ import annotations

import numba
import numpy as np

_RADIX_BITS = 12
_RADIX_MAX_PASSES = 3


@numba.njit(cache=True, nogil=True)
def _radix_order(t: np.ndarray) -> tuple[np.ndarray, bool]:
    """Stable LSD radix argsort of int64 times by 12-bit digits of ``t - min``.

    Pixel ToAs are multiples of 256 fine units (1.5625 ns): the key drops those 8 bits when
    all times allow it. Returns (order, True), or (undefined, False) when the key needs
    more than three passes (times spanning more than ~107 s).
    """
    n = t.shape[0]
    order = np.empty(n, np.int64)
    lo = t[0]
    hi = t[0]
    is_sorted = True
    low_bits = 0
    for i in range(n):
        v = t[i]
        if i > 0 and v < t[i - 1]:
            is_sorted = False
        if v < lo:
            lo = v
        if v > hi:
            hi = v
        low_bits |= v
    if is_sorted:
        for i in range(n):
            order[i] = i
        return order, True
    shift = 8 if (low_bits & 255) == 0 else 0
    span = (hi - lo) >> shift
    npass = 0
    while span > 0:
        span >>= _RADIX_BITS
        npass += 1
    if npass > _RADIX_MAX_PASSES:
        return order, False
    key = np.empty(n, np.int64)
    key2 = np.empty(n, np.int64)
    order2 = np.empty(n, np.int64)
    for i in range(n):
        key[i] = (t[i] - lo) >> shift
        order[i] = i
    mask = (1 << _RADIX_BITS) - 1
    count = np.empty(1 << _RADIX_BITS, np.int64)
    for p in range(npass):
        s = p * _RADIX_BITS
        count[:] = 0
        for i in range(n):
            count[(key[i] >> s) & mask] += 1
        total = 0
        for d in range(1 << _RADIX_BITS):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            k = key[i]
            d = (k >> s) & mask
            pos = count[d]
            count[d] = pos + 1
            key2[pos] = k
            order2[pos] = order[i]
        key, key2 = key2, key
        order, order2 = order2, order
    return order, True


def time_order(t: np.ndarray) -> np.ndarray:
    """Stable argsort of int64 times (fine units).

    Linear-time radix sort (at most three passes; ~20 % faster than a comparison sort on
    SPIDR readout order); falls back to numpy's stable sort of packed (time, index) keys
    for times spanning too long.
    """
    n = len(t)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    order, ok = _radix_order(t)
    if ok:
        return order
    lo = int(t.min())
    span = int(t.max()) - lo
    ibits = max(1, (n - 1).bit_length())
    if span.bit_length() + ibits <= 62:
        key = ((t - lo) << ibits) | np.arange(n, dtype=np.int64)
        key.sort(kind="stable")
        return key & ((1 << ibits) - 1)
    return np.argsort(t, kind="stable")


__all__ = ["time_order"]
