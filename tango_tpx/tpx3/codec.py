"""Timepix3 / SPIDR word decoder (numba).

Input: little-endian ``uint64`` SPIDR words as they come off the wire or out of a file.
Output: structure-of-arrays :class:`PixelHits` and :class:`Triggers` with times as int64
counts of 25/4096 ns, extended past the 30-bit (26.84 s) rollover, plus a count of every
word category.  The layout facts live here and only here (see
``shared/docs/tpx3-spidr-format.md``).

Time extension ("longtime")
    The 30-bit coarse counter of every pixel and TDC word is extended to 48 bits by choosing
    the epoch that puts it nearest to a running reference: the previous extended time of
    the same stream, re-anchored by every global-time (0x44 LSB + 0x45 MSB) pair.  Within
    a stream the words are only locally out of order (per double column), far less than
    the half epoch (13.4 s) this rule tolerates.  A word more than a quarter epoch (6.7 s)
    away from the reference is still assigned to the nearest epoch, and counted in
    ``ambiguous_time`` (pymepix's quarter-bit rule silently mis-assigns it).  Until the
    first global-time pair (or a ``longtime`` given by the caller) the first word defines
    epoch 0.  All state lives in the :class:`Decoder`, so a stream cut anywhere decodes the
    same as in one piece.

Framing
    ``framing='raw'``: a plain SPIDR stream (pymepix raw files, UDP).  ``framing='tpx3'``:
    ASI/Serval chunks (8-byte header ``b'TPX3'``, chip byte, mode byte, uint16 payload size
    in bytes, then the payload words) whose chip index is applied to the following words;
    a word found where a chunk header should be is decoded with the current chip and
    counted in ``framing_errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numba
import numpy as np

from .hits import PixelHits, Triggers

# ---- word layout -------------------------------------------------------------------------
TPX3_MAGIC = 0x33585054  # b'TPX3' read as a little-endian uint32
MASK30 = (1 << 30) - 1
EPOCH = 1 << 30
HALF_EPOCH = 1 << 29
QUARTER_EPOCH = 1 << 28
QUAD_SIZE = 516  # 2x2 chips of 256 pixels with 2-pixel gaps (as in tpx3HitParser)

#: Index of every counter in the counts vector.  The first seven are exclusive categories:
#: every word lands in exactly one of them.  The others are extra flags.
COUNT_NAMES = (
    "pixels",          # hdr 0xA / 0xB
    "tdc",             # valid TDC edges (hdr 0x6 sub F/A/E/B; hdr 0x4 sub F/A)
    "tdc_invalid",     # TDC words whose fine value is 0 or > 12: skipped
    "global_lsb",      # 0x44
    "global_msb",      # 0x45
    "chunk_headers",   # .tpx3 chunk headers (framing='tpx3' only)
    "other",           # control words (0x71..), unknown headers: counted and skipped
    "ambiguous_time",  # extended times more than a quarter epoch from the reference
    "framing_errors",  # data word where a .tpx3 chunk header was expected
)
EXCLUSIVE_COUNTS = COUNT_NAMES[:7]
_C = {name: i for i, name in enumerate(COUNT_NAMES)}
C_PIX, C_TDC, C_TDC_BAD, C_LSB, C_MSB, C_HDR, C_OTHER, C_AMBIG, C_FRAME = range(len(COUNT_NAMES))

# state vector
S_REF, S_HAVE_REF, S_LSB, S_HAVE_LSB, S_CHIP, S_REMAIN, S_LONGTIME = range(7)
N_STATE = 7


@dataclass
class WordCounts:
    """How many words of each kind were seen (cumulative in :attr:`Decoder.counts`)."""

    pixels: int = 0
    tdc: int = 0
    tdc_invalid: int = 0
    global_lsb: int = 0
    global_msb: int = 0
    chunk_headers: int = 0
    other: int = 0
    ambiguous_time: int = 0
    framing_errors: int = 0

    @classmethod
    def from_array(cls, a: np.ndarray) -> "WordCounts":
        return cls(*(int(v) for v in a))

    @property
    def words(self) -> int:
        """Total number of words (sum of the exclusive categories)."""
        return sum(getattr(self, n) for n in EXCLUSIVE_COUNTS)

    @property
    def malformed(self) -> int:
        """Words that carried no usable data: invalid TDC words and unknown/control words."""
        return self.tdc_invalid + self.other

    def __add__(self, other: "WordCounts") -> "WordCounts":
        return WordCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Decoded:
    """Result of decoding one chunk of words."""

    pixels: PixelHits
    triggers: Triggers
    counts: WordCounts
    #: 48-bit global time (25 ns ticks) of the last 0x44/0x45 pair seen so far, -1 if none.
    longtime: int = -1


# ---- scalar helpers (numba) ---------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def quad_map(x: int, y: int, chip: int) -> tuple[int, int]:
    """Chip-local pixel -> 516x516 quad frame (chips ``2 1 / 3 0``, 2-pixel gaps)."""
    if chip == 0:
        return x + 258, 255 - y + 258
    if chip == 1:
        return 255 - x + 258, y
    if chip == 2:
        return 255 - x, y
    return x, 255 - y + 258


@numba.njit(cache=True, inline="always")
def _extend(t30: int, st: np.ndarray, counts: np.ndarray) -> int:
    """Extend a 30-bit coarse time (25 ns) to 48 bits; updates the reference in ``st``."""
    if st[S_HAVE_REF] == 0:
        st[S_REF] = t30
        st[S_HAVE_REF] = 1
        return t30
    ref = st[S_REF]
    t = (ref & ~MASK30) | t30
    d = t - ref
    if d > HALF_EPOCH:
        t -= EPOCH
    elif d < -HALF_EPOCH:
        t += EPOCH
    if t < 0:
        t += EPOCH
    d = t - ref
    if d > QUARTER_EPOCH or d < -QUARTER_EPOCH:
        counts[C_AMBIG] += 1
    st[S_REF] = t
    return t


@numba.njit(cache=True)
def _upper_bounds(words: np.ndarray) -> tuple[int, int]:
    """Upper bounds of the number of pixel and TDC words (by header nibble only)."""
    npix = 0
    ntdc = 0
    for i in range(words.shape[0]):
        hdr = words[i] >> np.uint64(60)
        if hdr == 0xA or hdr == 0xB:
            npix += 1
        elif hdr == 0x6 or hdr == 0x4:
            ntdc += 1
    return npix, ntdc


@numba.njit(cache=True)
def _decode(words, tpx3, quad, st, counts,
            px_x, px_y, px_toa, px_tot, px_chip,
            tr_ch, tr_rise, tr_time, tr_cnt, tr_chip):
    np_ = 0
    nt = 0
    for i in range(words.shape[0]):
        w = np.int64(words[i])  # same bits; int64 keeps numba arithmetic in one type
        if tpx3:
            if st[S_REMAIN] == 0:
                if (w & 0xFFFFFFFF) == TPX3_MAGIC:
                    st[S_CHIP] = (w >> 32) & 0xFF
                    st[S_REMAIN] = ((w >> 48) & 0xFFFF) >> 3
                    counts[C_HDR] += 1
                    continue
                counts[C_FRAME] += 1
            else:
                st[S_REMAIN] -= 1
        hdr = (w >> 60) & 0xF
        if hdr == 0xA or hdr == 0xB:
            dcol = (w & 0x0FE0000000000000) >> 52
            spix = (w & 0x001F800000000000) >> 45
            pix = (w & 0x0000700000000000) >> 44
            x = dcol + (pix >> 2)
            y = spix + (pix & 3)
            data = (w & 0x00000FFFFFFF0000) >> 16
            coarse = ((w & 0xFFFF) << 14) | ((data >> 14) & 0x3FFF)
            ftoa = data & 0xF
            k = (x >> 1) & 15
            if k == 0:
                k = 16
            t = _extend(coarse, st, counts)
            chip = st[S_CHIP]
            if quad:
                x, y = quad_map(x, y, chip)
            px_x[np_] = x
            px_y[np_] = y
            px_toa[np_] = (t << 12) - (ftoa << 8) + (k << 8)
            px_tot[np_] = (data >> 4) & 0x3FF
            px_chip[np_] = chip
            np_ += 1
            counts[C_PIX] += 1
            continue
        sub = (w >> 56) & 0xF
        ch = 0
        rising = False
        if hdr == 0x6:
            if sub == 0xF:
                ch = 1
                rising = True
            elif sub == 0xA:
                ch = 1
            elif sub == 0xE:
                ch = 2
                rising = True
            elif sub == 0xB:
                ch = 2
        elif hdr == 0x4:
            if sub == 0x4:
                st[S_LSB] = (w >> 16) & 0xFFFFFFFF
                st[S_HAVE_LSB] = 1
                counts[C_LSB] += 1
                continue
            if sub == 0x5:
                counts[C_MSB] += 1
                if st[S_HAVE_LSB] != 0:
                    lt = (((w >> 16) & 0xFFFF) << 32) | st[S_LSB]
                    st[S_LONGTIME] = lt
                    st[S_REF] = lt
                    st[S_HAVE_REF] = 1
                continue
            if sub == 0xF:
                ch = 1
                rising = True
            elif sub == 0xA:
                ch = 1
        if ch == 0:
            counts[C_OTHER] += 1
            continue
        f = (w >> 5) & 0xF
        if f < 1 or f > 12:
            counts[C_TDC_BAD] += 1
            continue
        t = _extend((w >> 12) & MASK30, st, counts)
        fine = ((f - 1) << 9) // 12
        tr_ch[nt] = ch
        tr_rise[nt] = rising
        tr_time[nt] = (t << 12) + ((w & 0xE00) | (fine & 0x1FF))
        tr_cnt[nt] = (w >> 44) & 0xFFF
        tr_chip[nt] = st[S_CHIP]
        nt += 1
        counts[C_TDC] += 1
    return np_, nt


class Decoder:
    """Stateful SPIDR word decoder; feed it consecutive chunks of one stream.

    Parameters
    ----------
    framing: ``'raw'`` for SPIDR/pymepix streams, ``'tpx3'`` for ASI .tpx3 chunked data.
    layout: ``'single'`` (x, y 0..255) or ``'quad'`` (chips mapped into the 516x516 frame).
    longtime: optional 48-bit global time (25 ns ticks) to anchor the time extension before
        the first 0x44/0x45 pair, e.g. read from the SPIDR timer.
    """

    def __init__(self, framing: str = "raw", layout: str = "single", longtime: int | None = None):
        if framing not in ("raw", "tpx3"):
            raise ValueError(f"framing must be 'raw' or 'tpx3', not {framing!r}")
        if layout not in ("single", "quad"):
            raise ValueError(f"layout must be 'single' or 'quad', not {layout!r}")
        self.framing = framing
        self.layout = layout
        self._state = np.zeros(N_STATE, np.int64)
        self._state[S_LONGTIME] = -1
        self._counts = np.zeros(len(COUNT_NAMES), np.int64)
        if longtime is not None:
            self.set_longtime(longtime)

    def set_longtime(self, longtime: int) -> None:
        """Re-anchor the time extension on a 48-bit global time (25 ns ticks)."""
        self._state[S_REF] = int(longtime)
        self._state[S_HAVE_REF] = 1
        self._state[S_LONGTIME] = int(longtime)

    @property
    def longtime(self) -> int:
        """Last 48-bit global time (25 ns ticks) from the stream or :meth:`set_longtime`; -1 if none."""
        return int(self._state[S_LONGTIME])

    @property
    def counts(self) -> WordCounts:
        """Cumulative word counts since construction."""
        return WordCounts.from_array(self._counts)

    def decode(self, words: np.ndarray) -> Decoded:
        """Decode one chunk (any length, cut anywhere); returns this chunk's hits and counts."""
        words = np.ascontiguousarray(words).view(np.uint64) if words.dtype != np.uint64 else np.ascontiguousarray(words)
        npix, ntdc = _upper_bounds(words)
        px = PixelHits.empty(npix)
        tr = Triggers.empty(ntdc)
        counts = np.zeros(len(COUNT_NAMES), np.int64)
        n_p, n_t = _decode(words, self.framing == "tpx3", self.layout == "quad", self._state, counts,
                           px.x, px.y, px.toa, px.tot, px.chip,
                           tr.channel, tr.rising, tr.time, tr.counter, tr.chip)
        self._counts += counts
        if n_p != npix:
            px = px.take(slice(0, n_p))
        if n_t != ntdc:
            tr = tr.take(slice(0, n_t))
        return Decoded(px, tr, WordCounts.from_array(counts), self.longtime)


def decode_words(words: np.ndarray, framing: str = "raw", layout: str = "single",
                 longtime: int | None = None) -> Decoded:
    """Decode a whole stream in one call (a fresh :class:`Decoder`)."""
    return Decoder(framing, layout, longtime).decode(words)


def warm_up() -> None:
    """Compile the numba kernels (cached on disk) outside any timed region."""
    for framing in ("raw", "tpx3"):
        for layout in ("single", "quad"):
            Decoder(framing, layout).decode(np.zeros(4, np.uint64))
