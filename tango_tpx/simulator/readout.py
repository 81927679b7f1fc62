"""numba kernels of the hardware readout: put generated hits in SPIDR readout order (block,
chip, double column, time) and encode their pixel words; find the chunks of a .tpx3-framed
array.

Units: times int64 fine units of 25/4096 ns; ToT counts of 25 ns.
"""

from __future__ import annotations

import numba
import numpy as np

from .scene import R_PACK, R_TOA

@numba.njit(cache=True, error_model="numpy")
def _emit(H, n, limit, c0, block_u, n_chips, want_perm):
    """Select the hits among the first n columns of H with toa < limit and put them in
    hardware readout order: by (readout block, chip, double column, time); encode their words.

    Returns (perm: columns of H in stream order (empty unless want_perm), keys: composite
    stream keys (sorted), words: uint64 pixel words, chips: chip of each word, carry: columns
    with toa >= limit). The key spreads a (block, chip) group's pixels evenly over the
    block, so other words can be inserted at their time:
    key = ((group << 32 | offset in block) << 1) | 1.
    """
    toa_row = H[R_TOA]
    pr = H[R_PACK]
    bucket = np.empty(n, np.int64)
    ne = 0
    maxb = -1
    inv_b = 1.0 / block_u
    for i in range(n):
        t = toa_row[i]
        if t < limit:
            ne += 1
            dt = t - c0
            lb = 0
            if dt > 0:  # dt // block_u without an integer division
                lb = int(dt * inv_b)
                if lb * block_u > dt:
                    lb -= 1
                elif (lb + 1) * block_u <= dt:
                    lb += 1
            pk = pr[i]
            b = (lb * n_chips + (pk >> 26)) * 128 + ((pk & 0xFF) >> 1)
            bucket[i] = b
            if b > maxb:
                maxb = b
        else:
            bucket[i] = -1
    nb = (maxb // 128 + 1) * 128 if maxb >= 0 else 0
    start = np.zeros(nb + 1, np.int64)
    carry = np.empty(n - ne, np.int64)
    nc = 0
    for i in range(n):
        b = bucket[i]
        if b >= 0:
            start[b + 1] += 1
        else:
            carry[nc] = i
            nc += 1
    for b in range(nb):
        start[b + 1] += start[b]
    fill = start[:nb].copy()
    perm = np.empty(ne if want_perm else 0, np.int64)
    srt = np.empty((ne, 2), np.int64)  # (toa, x | y << 8 | tot << 16 | chip << 26), one cache line
    for i in range(n):
        b = bucket[i]
        if b >= 0:
            o = fill[b]
            fill[b] += 1
            if want_perm:
                perm[o] = i
            srt[o, 0] = toa_row[i]
            srt[o, 1] = pr[i]
    # insertion sort by time within each bucket (buckets are small, mostly in order already)
    for b in range(nb):
        lo = start[b]
        hi = start[b + 1]
        for a in range(lo + 1, hi):
            tv = srt[a, 0]
            if srt[a - 1, 0] <= tv:
                continue
            kv = srt[a, 1]
            pv = perm[a] if want_perm else 0
            c = a - 1
            while c >= lo and srt[c, 0] > tv:
                srt[c + 1, 0] = srt[c, 0]
                srt[c + 1, 1] = srt[c, 1]
                if want_perm:
                    perm[c + 1] = perm[c]
                c -= 1
            srt[c + 1, 0] = tv
            srt[c + 1, 1] = kv
            if want_perm:
                perm[c + 1] = pv
    # keys: rank within the (block, chip) group = 128 consecutive buckets
    keys = np.empty(ne, np.int64)
    for grp in range(nb // 128):
        g0 = start[grp * 128]
        g1 = start[grp * 128 + 128]
        cnt = g1 - g0
        step = block_u / cnt if cnt else 0.0
        for r in range(cnt):
            k = min(int((r + 0.5) * step), block_u - 1)  # evenly spread, increasing in r
            keys[g0 + r] = (((grp << 32) | k) << 1) | 1
    # words (the encoder's bit layout, see tango_tpx.tpx3.encode.encode_pixels)
    words = np.empty(ne, np.uint64)
    chips = np.empty(ne, np.int64)
    for o in range(ne):
        pk = srt[o, 1]
        xi = pk & 0xFF
        yi = (pk >> 8) & 0xFF
        tot = (pk >> 16) & 0x3FF
        chips[o] = pk >> 26
        m = srt[o, 0] >> 8
        k = (xi >> 1) & 15
        if k == 0:
            k = 16
        ftoa = (k - m) & 15
        cc = ((m + ftoa - k) >> 4) & 0x3FFFFFFF
        pix = ((xi & 1) << 2) | (yi & 3)
        w = (np.int64(0xB) << 60) | ((xi & 0xFE) << 52) | ((yi & 0xFC) << 45) | (pix << 44) \
            | ((cc & 0x3FFF) << 30) | (tot << 20) | (ftoa << 16) | (cc >> 14)
        words[o] = np.uint64(w)
    return perm, keys, words, chips, carry


@numba.njit(cache=True)
def _chunk_starts(framed):
    """Word index of every chunk header in a .tpx3-framed array (plus the end)."""
    n = framed.shape[0]
    starts = np.empty(n + 1, np.int64)
    m = 0
    i = 0
    while i < n:
        starts[m] = i
        m += 1
        i += 1 + np.int64((framed[i] >> np.uint64(48)) & np.uint64(0xFFFF)) // 8
    starts[m] = min(i, n)
    return starts[: m + 1]
