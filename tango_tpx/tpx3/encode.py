"""Encoder for Timepix3/SPIDR 64-bit words: the exact inverse of the decoder.

Bit layouts follow ``docs/tpx3-spidr-format.md``. All functions
are vectorised numpy over flat arrays and return little-endian-ready ``uint64`` words.

Units: times are int64 counts of the fine unit 25/4096 ns (:mod:`tango_tpx.tpx3.units`),
global time is in 25 ns ticks, ToT is in counts of 25 ns, x/y are chip-local pixels.

Representable times
-------------------
* Pixel ToA: ``t = (T << 12) - (FToA << 8) + (k << 8)`` with the double-column phase
  ``k = (x // 2) % 16`` (0 -> 16) and FToA in 0..15. Every multiple of 256 fine units
  (1.5625 ns) >= 4096 is representable, with exactly one (T, FToA) pair per pixel.
* TDC: ``t = (T << 12) + (s << 9) + ((f - 1) << 9) // 12`` with s in 0..7 (3.125 ns) and
  f in 1..12 (~260 ps): 96 values per 25 ns tick.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PIXEL_HEADER",
    "TDC_HEADER",
    "TDC_SUB",
    "TDC_FINE_TABLE",
    "tdc_phase",
    "encode_pixels",
    "quantize_pixel_toa",
    "encode_tdc",
    "quantize_tdc_time",
    "encode_global_time",
    "encode_control",
    "tpx3_chunk_header",
    "TPX3_MAGIC",
]

#: Header nibble used for pixel words (0xA is also decoded as a pixel).
PIXEL_HEADER: int = 0xB
#: Header nibble of TDC words.
TDC_HEADER: int = 0x6
#: (channel, rising) -> sub-header nibble of a TDC word.
TDC_SUB: dict[tuple[int, bool], int] = {(1, True): 0xF, (1, False): 0xA, (2, True): 0xE, (2, False): 0xB}
#: fine TDC offset (in 25/4096 ns units) of the fine code f = 1..12, index f - 1.
TDC_FINE_TABLE: np.ndarray = np.array([((f - 1) << 9) // 12 for f in range(1, 13)], dtype=np.int64)
#: b'TPX3' read as the low 4 bytes of a little-endian uint64.
TPX3_MAGIC: int = int.from_bytes(b"TPX3", "little")

_COARSE_MASK = (1 << 30) - 1  # pixel coarse time: 14-bit ToA + 16-bit SPIDR time
_TDC_COARSE_MASK = (1 << 32) - 1  # TDC coarse field is 32 bits of 25 ns (bits 12..43)

# largest f - 1 (0..11) whose fine offset is <= r, for every r = 0..511
_TDC_FLOOR = (np.searchsorted(TDC_FINE_TABLE, np.arange(512), side="right") - 1).astype(np.int64)


def _u64(a) -> np.ndarray:
    return np.asarray(a).astype(np.uint64)


def _as_int64(name: str, a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub" and arr.size:
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} out of int64 range")
    return arr.astype(np.int64)


def tdc_phase(x) -> np.ndarray:
    """Double-column clock phase k = (x // 2) % 16 with 0 mapped to 16 (int64)."""
    k = (np.asarray(x, dtype=np.int64) // 2) % 16
    return np.where(k == 0, 16, k)


def quantize_pixel_toa(toa) -> np.ndarray:
    """Largest pixel-representable time <= ``toa`` (fine units): ``toa`` floored to a multiple of 256."""
    t = _as_int64("toa", toa)
    return t - (t & 255)


def encode_pixels(x, y, toa, tot) -> np.ndarray:
    """Encode pixel hits as SPIDR pixel words (header 0xB).

    x, y: chip-local pixel coordinates 0..255; toa: int64 fine units (25/4096 ns), a
    multiple of 256 and >= 4096 (the extended 48-bit coarse time must be >= 0; only its
    low 30 bits go into the word); tot: ToT counts of 25 ns, 0..1023.
    Raises ValueError for anything not representable.
    """
    x = _as_int64("x", x)
    y = _as_int64("y", y)
    toa = _as_int64("toa", toa)
    tot = _as_int64("tot", tot)
    x, y, toa, tot = np.broadcast_arrays(x, y, toa, tot)
    if x.size == 0:
        return np.zeros(x.shape, np.uint64)
    if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 255:
        raise ValueError("pixel x and y must be chip-local, 0..255")
    if tot.min() < 0 or tot.max() > 1023:
        raise ValueError("ToT must be 0..1023 counts of 25 ns")
    if toa.min() < 0:
        raise ValueError("pixel toa must be >= 0 (fine units of 25/4096 ns)")
    if np.any(toa & 255):
        raise ValueError("pixel toa must be a multiple of 256 fine units (1.5625 ns); use quantize_pixel_toa")
    m = toa >> 8  # units of 1.5625 ns: m = 16*T - FToA + k
    k = tdc_phase(x)
    ftoa = (k - m) % 16
    num = m + ftoa - k
    coarse = num >> 4  # exact: num is a multiple of 16
    if coarse.min() < 0:
        raise ValueError("pixel toa too small to encode (needs coarse time >= 0, i.e. toa >= 4096)")
    c30 = coarse & _COARSE_MASK
    pix = ((x & 1) << 2) | (y & 3)
    w = (
        (np.uint64(PIXEL_HEADER) << np.uint64(60))
        | (_u64(x & ~1) << np.uint64(52))
        | (_u64(y & ~3) << np.uint64(45))
        | (_u64(pix) << np.uint64(44))
        | (_u64(c30 & 0x3FFF) << np.uint64(30))
        | (_u64(tot) << np.uint64(20))
        | (_u64(ftoa) << np.uint64(16))
        | _u64(c30 >> 14)
    )
    return w


def quantize_tdc_time(time) -> np.ndarray:
    """Largest TDC-representable time <= ``time`` (int64 fine units, 25/4096 ns)."""
    t = _as_int64("time", time)
    r = t & 0xFFF
    step = r & ~0x1FF  # 3.125 ns steps (bits 9..11)
    j = _TDC_FLOOR[r & 0x1FF]
    return (t & ~0xFFF) + step + TDC_FINE_TABLE[j]


def encode_tdc(channel, rising, time, counter) -> np.ndarray:
    """Encode TDC edges as SPIDR TDC words (header 0x6).

    channel: 1 or 2; rising: bool; time: int64 fine units, >= 0 and representable
    (see :func:`quantize_tdc_time`); counter: the 12-bit trigger counter (taken modulo 4096).
    The 32-bit coarse field gets the low 32 bits of ``time >> 12`` (25 ns ticks).
    """
    channel = _as_int64("channel", channel)
    rising = np.asarray(rising).astype(bool)
    time = _as_int64("time", time)
    counter = _as_int64("counter", counter)
    channel, rising, time, counter = np.broadcast_arrays(channel, rising, time, counter)
    if channel.size == 0:
        return np.zeros(channel.shape, np.uint64)
    if not np.all((channel == 1) | (channel == 2)):
        raise ValueError("TDC channel must be 1 or 2")
    if time.min() < 0:
        raise ValueError("TDC time must be >= 0 (fine units of 25/4096 ns)")
    if np.any(quantize_tdc_time(time) != time):
        raise ValueError("TDC time not representable; use quantize_tdc_time")
    sub = np.where(channel == 1, np.where(rising, 0xF, 0xA), np.where(rising, 0xE, 0xB))
    r = time & 0xFFF
    step = r >> 9
    f = np.searchsorted(TDC_FINE_TABLE, r & 0x1FF) + 1  # exact match guaranteed above
    coarse = (time >> 12) & _TDC_COARSE_MASK
    w = (
        (np.uint64(TDC_HEADER) << np.uint64(60))
        | (_u64(sub) << np.uint64(56))
        | (_u64(counter & 0xFFF) << np.uint64(44))
        | (_u64(coarse) << np.uint64(12))
        | (_u64(step) << np.uint64(9))
        | (_u64(f) << np.uint64(5))
    )
    return w


def encode_global_time(ticks_25ns) -> tuple[np.ndarray | np.uint64, np.ndarray | np.uint64]:
    """Encode the 48-bit global time (25 ns ticks) as the (0x44 LSB, 0x45 MSB) word pair.

    As on real SPIDR captures, bits 0..15 of both words carry the 16-bit SPIDR time stamp
    ``(ticks >> 14) & 0xFFFF`` (decoders ignore them). Scalars in, scalars out.
    """
    t = _as_int64("ticks_25ns", ticks_25ns)
    if t.size and (t.min() < 0 or t.max() >= (1 << 48)):
        raise ValueError("global time must be 0 <= ticks < 2**48 (25 ns ticks)")
    spidr = _u64((t >> 14) & 0xFFFF)
    lsb = (np.uint64(0x44) << np.uint64(56)) | (_u64(t & 0xFFFFFFFF) << np.uint64(16)) | spidr
    msb = (np.uint64(0x45) << np.uint64(56)) | (_u64((t >> 32) & 0xFFFF) << np.uint64(16)) | spidr
    if lsb.ndim == 0:
        return np.uint64(lsb), np.uint64(msb)
    return lsb, msb


def encode_control(sub, ticks_25ns, value=0) -> np.ndarray:
    """A SPIDR control word ``0x71 <sub> ....`` as seen after global-time pairs in real captures.

    sub: the byte after 0x71 (e.g. 0x44/0x45); value: 16-bit payload (bits 16..31);
    bits 0..15 carry the SPIDR time stamp ``(ticks >> 14) & 0xFFFF``. Decoders count and skip it.
    """
    t = _as_int64("ticks_25ns", ticks_25ns)
    return (
        (np.uint64(0x71) << np.uint64(56))
        | (_u64(np.asarray(sub, dtype=np.int64) & 0xFF) << np.uint64(48))
        | (_u64(np.asarray(value, dtype=np.int64) & 0xFFFF) << np.uint64(16))
        | _u64((t >> 14) & 0xFFFF)
    )


def tpx3_chunk_header(chip: int, n_bytes: int, mode: int = 0) -> np.uint64:
    """ASI .tpx3 chunk header word: bytes b'TPX3', chip (byte 4), mode (byte 5), uint16 size (bytes 6..7).

    n_bytes: size of the chunk payload that follows, a multiple of 8, at most 65528.
    """
    chip, n_bytes, mode = int(chip), int(n_bytes), int(mode)
    if not 0 <= chip <= 255 or not 0 <= mode <= 255:
        raise ValueError("chip and mode must fit one byte")
    if not 0 <= n_bytes <= 0xFFFF or n_bytes % 8:
        raise ValueError("chunk size must be a multiple of 8 bytes below 65536")
    return np.uint64(TPX3_MAGIC | (chip << 32) | (mode << 40) | (n_bytes << 48))
