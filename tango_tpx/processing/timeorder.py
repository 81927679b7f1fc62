"""Stable time order of pixel times: a linear-time bucket + radix argsort.

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

#: buckets of at most this many keys are insertion-sorted, larger ones radix-sorted
_INSERTION_MAX = 64
_LOW_DIGIT_BITS = 8
#: mean keys per bucket of the high-digit pass
_BUCKET_KEYS = 16


@numba.njit(cache=True, nogil=True)
def _scan(t: np.ndarray) -> tuple[int, int, bool, int]:
    """(min, max, already sorted, OR of all values) of int64 times."""
    lo = t[0]
    hi = t[0]
    is_sorted = True
    low_bits = 0
    prev = t[0]
    for i in range(t.shape[0]):
        v = t[i]
        if v < prev:
            is_sorted = False
        prev = v
        if v < lo:
            lo = v
        if v > hi:
            hi = v
        low_bits |= v
    return lo, hi, is_sorted, low_bits


@numba.njit(cache=True, nogil=True)
def _bucket_order32(t: np.ndarray, lo: int, shift: int, low: int, nb: int) -> np.ndarray:
    """Stable argsort (int32) of ``k = (t - lo) >> shift`` (which must fit in 32 bits) for
    times in near order (SPIDR readout: out of order only locally).

    A counting sort by the high digit ``k >> low`` into ``nb`` buckets (near-sequential
    writes for near-ordered times), then each bucket by its ``low`` bits: an insertion
    sort (nearly no moves) for up to :data:`_INSERTION_MAX` keys, else an LSD radix sort
    by 8-bit digits (bursts: a pulsed source puts many hits in one bucket). Stable at
    every step, so equal times keep their input order.
    """
    n = t.shape[0]
    start = np.zeros(nb + 1, np.int32)
    for i in range(n):
        start[(((t[i] - lo) >> shift) >> low) + 1] += 1
    for b in range(nb):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    key = np.empty(n, np.uint32)
    order = np.empty(n, np.int32)
    for i in range(n):
        k = (t[i] - lo) >> shift
        b = k >> low
        pos = fill[b]
        fill[b] = pos + 1
        key[pos] = np.uint32(k)
        order[pos] = i
    big = 0
    for b in range(nb):
        m = start[b + 1] - start[b]
        if m > _INSERTION_MAX and m > big:
            big = m
    tk = np.empty(big, np.uint32)
    to = np.empty(big, np.int32)
    cnt = np.empty(1 << _LOW_DIGIT_BITS, np.int32)
    lmask = np.uint32((1 << low) - 1) if low < 32 else np.uint32(0xFFFFFFFF)
    dmask = np.uint32((1 << _LOW_DIGIT_BITS) - 1)
    for b in range(nb):
        s = start[b]
        e = start[b + 1]
        m = e - s
        if m < 2:
            continue
        if m <= _INSERTION_MAX:
            for i in range(s + 1, e):
                k = key[i]
                if key[i - 1] <= k:
                    continue
                o = order[i]
                j = i
                while j > s and key[j - 1] > k:
                    key[j] = key[j - 1]
                    order[j] = order[j - 1]
                    j -= 1
                key[j] = k
                order[j] = o
            continue
        sh = 0
        while sh < low:
            cnt[:] = 0
            for i in range(s, e):
                cnt[((key[i] & lmask) >> sh) & dmask] += 1
            tot = 0
            for d in range(1 << _LOW_DIGIT_BITS):
                c = cnt[d]
                cnt[d] = tot
                tot += c
            for i in range(s, e):
                d = ((key[i] & lmask) >> sh) & dmask
                p = cnt[d]
                cnt[d] = p + 1
                tk[p] = key[i]
                to[p] = order[i]
            key[s:e] = tk[:m]
            order[s:e] = to[:m]
            sh += _LOW_DIGIT_BITS
    return order



#: pixel fields packed below the 32-bit time key: x, y, ToT of 10 bits each
_FIELD_BITS = 10
_FIELD_MASK = (1 << _FIELD_BITS) - 1


@numba.njit(cache=True, nogil=True, inline="always")
def unpack_pixel(u, lo, shift):
    """(toa, x, y, tot) of one pixel packed by :func:`sort_packed`: ``toa = lo + (key << shift)``
    (25/4096 ns units), x, y px and ToT counts from their 10-bit fields."""
    p = np.int64(u & np.uint64(0xFFFFFFFF))
    return lo + (np.int64(u >> np.uint64(32)) << shift), (p >> 20) & 1023, (p >> 10) & 1023, p & 1023


@numba.njit(cache=True, nogil=True)
def _bucket_sort_packed(t, x, y, tot, lo, shift, low, nb):
    """:func:`_bucket_order32`'s stable sort of whole pixels packed in one uint64 each:
    ``key << 32 | x << 20 | y << 10 | tot`` (``key = (t - lo) >> shift``; the low ``shift``
    bits of ``t`` are zero). One 8-byte store per pixel, and the pixels come out in order:
    no gather through an order afterwards. Returns (packed pixels in time order, True), or
    (undefined, False) when a field does not fit in 10 bits."""
    n = t.shape[0]
    start = np.zeros(nb + 1, np.int32)
    fields = 0
    for i in range(n):
        start[(((t[i] - lo) >> shift) >> low) + 1] += 1
        fields |= np.int64(x[i]) | np.int64(y[i]) | np.int64(tot[i])
    packed = np.empty(n, np.uint64)
    if fields > _FIELD_MASK:
        return packed, False
    for b in range(nb):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    for i in range(n):
        k = (t[i] - lo) >> shift
        b = k >> low
        pos = fill[b]
        fill[b] = pos + 1
        packed[pos] = (np.uint64(k) << np.uint64(32)) | np.uint64((np.int64(x[i]) << 20)
                                                             | (np.int64(y[i]) << 10) | np.int64(tot[i]))
    big = 0
    for b in range(nb):
        m = start[b + 1] - start[b]
        if m > _INSERTION_MAX and m > big:
            big = m
    tmp = np.empty(big, np.uint64)
    cnt = np.empty(1 << _LOW_DIGIT_BITS, np.int32)
    dmask = np.uint64((1 << _LOW_DIGIT_BITS) - 1)
    for b in range(nb):
        s = start[b]
        e = start[b + 1]
        m = e - s
        if m < 2:
            continue
        if m <= _INSERTION_MAX:
            for i in range(s + 1, e):
                v = packed[i]
                k = v >> np.uint64(32)
                if (packed[i - 1] >> np.uint64(32)) <= k:
                    continue
                j = i
                while j > s and (packed[j - 1] >> np.uint64(32)) > k:
                    packed[j] = packed[j - 1]
                    j -= 1
                packed[j] = v
            continue
        sh = 0
        while sh < low:   # a large bucket (a burst): LSD radix by 8-bit digits of the key
            cnt[:] = 0
            for i in range(s, e):
                cnt[(packed[i] >> np.uint64(32 + sh)) & dmask] += 1
            total = 0
            for d in range(1 << _LOW_DIGIT_BITS):
                c = cnt[d]
                cnt[d] = total
                total += c
            for i in range(s, e):
                v = packed[i]
                d = (v >> np.uint64(32 + sh)) & dmask
                q = cnt[d]
                cnt[d] = q + 1
                tmp[q] = v
            packed[s:e] = tmp[:m]
            sh += _LOW_DIGIT_BITS
    return packed, True


def time_order(t: np.ndarray) -> np.ndarray:
    """Stable argsort of int64 times (fine units).

    Times spanning up to 2**32 keys (6.7 s of pixel ToAs): a bucket sort by the high bits
    of 32-bit keys, int32 indices (:func:`_bucket_order32`; linear time on SPIDR's near
    order); wider spans take up to three 12-bit LSD radix passes of 64-bit keys, and beyond
    that numpy's stable sort of packed (time, index) keys. Returns int32 indices in the
    first case, else int64.
    """
    n = len(t)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    if n < (1 << 31):
        lo, hi, is_sorted, low_bits = _scan(t)
        if is_sorted:
            return np.arange(n, dtype=np.int32)
        shift = 8 if (low_bits & 255) == 0 else 0
        width = int((hi - lo) >> shift).bit_length()
        if width <= 32:
            high = min(width, max(n // _BUCKET_KEYS, 1).bit_length())
            return _bucket_order32(t, lo, shift, width - high, 1 << high)
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


def sort_packed(toa: np.ndarray, x: np.ndarray, y: np.ndarray, tot: np.ndarray,
                bucket_keys: int = _BUCKET_KEYS) -> tuple[np.ndarray, int, int] | None:
    """The pixels in stable time order, packed (:func:`_bucket_sort_packed`): (packed,
    lo, shift) with ``toa = lo + (packed >> 32 << shift)``; None when they do not pack (a
    span over 2**32 keys, a field over 10 bits, already in order, fewer than 2 pixels):
    use :func:`time_order` then. ``bucket_keys``: mean pixels per bucket of the first pass
    (fewer: more, narrower buckets; the order is the same)."""
    n = len(toa)
    if n < 2 or n >= (1 << 31):
        return None
    lo, hi, is_sorted, low_bits = _scan(toa)
    shift = 8 if (low_bits & 255) == 0 else 0
    width = int((hi - lo) >> shift).bit_length()
    if is_sorted or width > 32:
        return None
    high = min(width, max(n // max(int(bucket_keys), 1), 1).bit_length())
    packed, ok = _bucket_sort_packed(toa, x, y, tot, lo, shift, width - high, 1 << high)
    return (packed, int(lo), shift) if ok else None


__all__ = ["sort_packed", "time_order"]
