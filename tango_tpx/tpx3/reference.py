"""Plain-numpy vectorised SPIDR decoder, written the way pymepix does it.

It is the *baseline* the numba decoder is benchmarked against and an independent
implementation the tests compare with.  Time extension uses pymepix's quarter-bit rule
against the latest global-time (0x44/0x45) pair before each word (0 before the first), so it
agrees with :mod:`tango_tpx.tpx3.codec` whenever no word is more than a quarter epoch from
its anchor.  Single chip, raw framing only.
"""

from __future__ import annotations

import numpy as np

from .hits import PixelHits, Triggers


def _correct(t: np.ndarray, lt: np.ndarray) -> np.ndarray:
    """pymepix's correct_global_time: 30-bit t (25 ns) + 48-bit anchor lt -> 48-bit time."""
    d = ((lt >> 28) & 3) - ((t >> 28) & 3)
    base = np.where((d == 1) | (d == -3), lt - 0x10000000,
                    np.where((d == -1) | (d == 3), lt + 0x10000000, lt))
    return (base & 0xFFFFC0000000) | (t & 0x3FFFFFFF)


def _anchor_per_word(w: np.ndarray, hdr: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """48-bit global time in force at each word (forward-filled from 0x44/0x45 pairs)."""
    n = len(w)
    is_lsb = (hdr == 4) & (sub == 4)
    is_msb = (hdr == 4) & (sub == 5)
    idx = np.arange(n)
    last_lsb_i = np.maximum.accumulate(np.where(is_lsb, idx, -1))
    lsb = np.where(last_lsb_i >= 0, (w[np.maximum(last_lsb_i, 0)] >> 16) & 0xFFFFFFFF, 0)
    lt_at_msb = np.where(is_msb & (last_lsb_i >= 0), (((w >> 16) & 0xFFFF) << 32) | lsb, -1)
    last_msb_i = np.maximum.accumulate(np.where(lt_at_msb >= 0, idx, -1))
    return np.where(last_msb_i >= 0, lt_at_msb[np.maximum(last_msb_i, 0)], 0)


def decode_numpy(words: np.ndarray) -> tuple[PixelHits, Triggers]:
    """Decode a whole raw SPIDR stream with numpy array operations (no state, no numba)."""
    w = np.asarray(words, dtype=np.uint64).view(np.int64)
    hdr = (w >> 60) & 0xF
    sub = (w >> 56) & 0xF
    lt = _anchor_per_word(w, hdr, sub)

    pm = (hdr == 0xA) | (hdr == 0xB)
    p = w[pm]
    dcol = (p & 0x0FE0000000000000) >> 52
    spix = (p & 0x001F800000000000) >> 45
    pix = (p & 0x0000700000000000) >> 44
    x = dcol + pix // 4
    y = spix + (pix & 3)
    data = (p & 0x00000FFFFFFF0000) >> 16
    coarse = ((p & 0xFFFF) << 14) | ((data >> 14) & 0x3FFF)
    k = (x // 2) % 16
    k[k == 0] = 16
    toa = (_correct(coarse, lt[pm]) << 12) - ((data & 0xF) << 8) + (k << 8)
    pixels = PixelHits(x.astype(np.uint16), y.astype(np.uint16), toa,
                       ((data >> 4) & 0x3FF).astype(np.uint16), np.zeros(len(p), np.uint8))

    tdc1 = ((hdr == 6) | (hdr == 4)) & ((sub == 0xF) | (sub == 0xA))
    tdc2 = (hdr == 6) & ((sub == 0xE) | (sub == 0xB))
    f = (w >> 5) & 0xF
    tm = (tdc1 | tdc2) & (f >= 1) & (f <= 12)
    t = w[tm]
    fine = ((f[tm] - 1) << 9) // 12
    time = (_correct((t >> 12) & 0x3FFFFFFF, lt[tm]) << 12) + ((t & 0xE00) | (fine & 0x1FF))
    triggers = Triggers(np.where(tdc1[tm], 1, 2).astype(np.uint8),
                        np.isin(sub[tm], (0xF, 0xE)), time,
                        ((t >> 44) & 0xFFF).astype(np.uint16), np.zeros(len(t), np.uint8))
    return pixels, triggers
