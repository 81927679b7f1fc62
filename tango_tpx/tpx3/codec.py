"""Timepix3 / SPIDR word decoder (numba).

Input: little-endian ``uint64`` SPIDR words as they come off the wire or out of a file.
Output: structure-of-arrays :class:`PixelHits` and :class:`Triggers` with times as int64
counts of 25/4096 ns, extended past the 30-bit (26.84 s) rollover, plus a count of every
word category.  The layout facts live here and only here (see
``docs/tpx3-spidr-format.md``).

Time extension ("longtime")
    The 30-bit coarse counter of every pixel and TDC word is extended to 48 bits by choosing
    the epoch that puts it nearest to a running reference: the previous extended time of
    the same stream, re-anchored by every global-time (0x44 LSB + 0x45 MSB) pair.  Within
    a stream the words are only locally out of order (per double column), far less than
    the half epoch (13.4 s) this rule tolerates.  A word more than a quarter epoch (6.7 s)
    away from the reference is still assigned to the nearest epoch, and counted in
    ``ambiguous_time`` (pymepix's quarter-bit rule silently mis-assigns it).

    A stream taken up mid-way (a recording or an acquisition that starts while the detector
    runs) must not start in epoch 0: before its first pixel or TDC word the decoder looks
    ahead in the chunk for the first complete global-time pair and starts the reference
    there (SPIDR sends one a second, so the words before it are within about a second of
    it).  A caller that knows the detector time better (the previous acquisition, the
    global time seen while idle, the first pair of a file) gives it with
    :meth:`Decoder.anchor` (a provisional reference that a pair found by the look-ahead
    replaces) or :meth:`Decoder.set_longtime` (a global time).  Without any of them the
    first word defines epoch 0; a word a little earlier than that first word gets a
    (correct) negative time.  All state lives in the :class:`Decoder`, so a stream cut
    anywhere decodes the same as in one piece, provided the first chunk holds the first
    global-time pair or the decoder is anchored.

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

from .encode import TPX3_MAGIC
from .files import quad_map
from .hits import PixelHits, Triggers

# ---- word layout -------------------------------------------------------------------------
MASK30 = (1 << 30) - 1
EPOCH = 1 << 30
HALF_EPOCH = 1 << 29
QUARTER_EPOCH = 1 << 28

#: Index of every counter in the counts vector.  The first seven are exclusive categories:
#: every word lands in exactly one of them.  The others are extra flags.
COUNT_NAMES = (
    "pixels",          # hdr 0xA / 0xB
    "tdc",             # valid TDC edges (hdr 0x6 sub F/A/E/B; hdr 0x4 sub F/A)
    "tdc_invalid",     # TDC words whose fine value is 0 or > 12: skipped
    "global_lsb",      # 0x44
    "global_msb",      # 0x45
    "chunk_headers",   # .tpx3 chunk headers (framing='tpx3' only)
    "control",         # SPIDR control/status words (header 0x7, e.g. 0x71): valid, no data
    "other",           # unknown headers, unknown sub-types, quad pixels of a chip > 3
    "ambiguous_time",  # extended times more than a quarter epoch from the reference
    "framing_errors",  # data word where a .tpx3 chunk header was expected
)
EXCLUSIVE_COUNTS = COUNT_NAMES[:8]
_C = {name: i for i, name in enumerate(COUNT_NAMES)}
C_PIX, C_TDC, C_TDC_BAD, C_LSB, C_MSB, C_HDR, C_CTRL, C_OTHER, C_AMBIG, C_FRAME = range(len(COUNT_NAMES))

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
    control: int = 0
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
        """Words that are not valid SPIDR packets: invalid TDC words and unknown words."""
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


@numba.njit(cache=True, nogil=True)
def _global_time_scan(words, tpx3, lsb, have_lsb, remain, first):
    """48-bit global time (25 ns ticks) of the first (``first``) or last complete 0x44/0x45
    pair in ``words``, -1 if none.

    Pairs are matched as the decoder matches them: an MSB word takes the latest LSB word
    before it (``lsb``/``have_lsb``: one pending from earlier data).  With ``tpx3`` framing
    the chunk headers are skipped (``remain``: payload words left in the current chunk).
    """
    found = -1
    for i in range(words.shape[0]):
        w = np.int64(words[i])
        if tpx3:
            if remain == 0:
                if (w & 0xFFFFFFFF) == TPX3_MAGIC:
                    remain = ((w >> 48) & 0xFFFF) >> 3
                    continue
            else:
                remain -= 1
        top = (w >> 56) & 0xFF
        if top == 0x44:
            lsb = (w >> 16) & 0xFFFFFFFF
            have_lsb = True
        elif top == 0x45 and have_lsb:
            found = (((w >> 16) & 0xFFFF) << 32) | lsb
            if first:
                return found
    return found


def first_global_time(words: np.ndarray, framing: str = "raw") -> int:
    """48-bit global time (25 ns ticks) of the first complete 0x44/0x45 pair of a stream
    (e.g. a memory-mapped file; the scan stops there), -1 if it has none."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        words = np.ascontiguousarray(words).view(np.uint64)
    return int(_global_time_scan(words, framing == "tpx3", 0, False, 0, True))


def last_global_time(words: np.ndarray) -> int:
    """48-bit global time (25 ns ticks) of the last complete 0x44/0x45 pair in a piece of a
    plain or ``.tpx3``-framed stream, -1 if none.  Words that look like a ``.tpx3`` chunk
    header are never taken for a global-time word."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        words = np.ascontiguousarray(words).view(np.uint64)
    return int(_last_pair(words))


@numba.njit(cache=True, nogil=True)
def _last_pair(words):
    msb = -1
    for i in range(words.shape[0] - 1, -1, -1):
        w = np.int64(words[i])
        if (w & 0xFFFFFFFF) == TPX3_MAGIC:
            continue
        top = (w >> 56) & 0xFF
        if top == 0x45 and msb < 0:
            msb = (w >> 16) & 0xFFFF
        elif top == 0x44 and msb >= 0:
            return (msb << 32) | ((w >> 16) & 0xFFFFFFFF)
    return -1


@numba.njit(cache=True, inline="always")
def _extend(t30: int, ref: int, have_ref: bool) -> tuple[int, int]:
    """30-bit coarse time (25 ns) -> the 48-bit time nearest ``ref``; (time, 1 if ambiguous).

    Written as a 30-bit modular difference so the loop-carried chain through ``ref`` is
    three operations.  Without a reference the word defines epoch 0.
    """
    if not have_ref:
        return t30, 0
    delta = ((t30 + HALF_EPOCH - ref) & MASK30) - HALF_EPOCH
    amb = 1 if (delta > QUARTER_EPOCH or delta < -QUARTER_EPOCH) else 0
    return ref + delta, amb


@numba.njit(cache=True, nogil=True)
def _decode(words, tpx3, quad, st, counts,
            px_x, px_y, px_toa, px_tot, px_chip,
            tr_ch, tr_rise, tr_time, tr_cnt, tr_chip):
    # state and counters live in locals inside the loop (registers), written back at the end
    ref = st[S_REF]
    have_ref = st[S_HAVE_REF] != 0
    lsb = st[S_LSB]
    have_lsb = st[S_HAVE_LSB] != 0
    chip = st[S_CHIP]
    remain = st[S_REMAIN]
    longtime = st[S_LONGTIME]
    n_tdc_bad = n_lsb = n_msb = n_hdr = n_ctrl = n_other = n_ambig = n_frame = 0
    np_ = 0
    nt = 0
    for i in range(words.shape[0]):
        w = np.int64(words[i])  # same bits; int64 keeps numba arithmetic in one type
        if tpx3:
            if remain == 0:
                if (w & 0xFFFFFFFF) == TPX3_MAGIC:
                    chip = (w >> 32) & 0xFF
                    remain = ((w >> 48) & 0xFFFF) >> 3
                    n_hdr += 1
                    continue
                n_frame += 1
            else:
                remain -= 1
        hdr = (w >> 60) & 0xF
        if hdr == 0xA or hdr == 0xB:
            t30 = ((w & 0xFFFF) << 14) | ((w >> 30) & 0x3FFF)
            t, amb = _extend(t30, ref, have_ref)
            n_ambig += amb
            ref = t
            have_ref = True
            x = ((w >> 52) & 0xFE) | ((w >> 46) & 1)
            y = ((w >> 45) & 0xFC) | ((w >> 44) & 3)
            k = (((x >> 1) + 15) & 15) + 1  # double-column phase (x // 2) % 16, 0 -> 16
            if quad:
                if chip > 3:  # corrupt chunk header: no such chip in a quad
                    n_other += 1
                    continue
                x, y = quad_map(x, y, chip)
            px_x[np_] = x
            px_y[np_] = y
            px_toa[np_] = (t << 12) - (((w >> 16) & 0xF) << 8) + (k << 8)
            px_tot[np_] = (w >> 20) & 0x3FF
            px_chip[np_] = chip
            np_ += 1
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
                lsb = (w >> 16) & 0xFFFFFFFF
                have_lsb = True
                n_lsb += 1
                continue
            if sub == 0x5:
                n_msb += 1
                if have_lsb:
                    longtime = (((w >> 16) & 0xFFFF) << 32) | lsb
                    ref = longtime
                    have_ref = True
                continue
            if sub == 0xF:
                ch = 1
                rising = True
            elif sub == 0xA:
                ch = 1
        if ch == 0:
            if hdr == 0x7:
                n_ctrl += 1
            else:
                n_other += 1
            continue
        f = (w >> 5) & 0xF
        if f < 1 or f > 12:
            n_tdc_bad += 1
            continue
        t30 = (w >> 12) & MASK30
        t, amb = _extend(t30, ref, have_ref)
        n_ambig += amb
        ref = t
        have_ref = True
        fine = ((f - 1) << 9) // 12
        tr_ch[nt] = ch
        tr_rise[nt] = rising
        tr_time[nt] = (t << 12) + ((w & 0xE00) | (fine & 0x1FF))
        tr_cnt[nt] = (w >> 44) & 0xFFF
        tr_chip[nt] = chip
        nt += 1
    st[S_REF] = ref
    st[S_HAVE_REF] = 1 if have_ref else 0
    st[S_LSB] = lsb
    st[S_HAVE_LSB] = 1 if have_lsb else 0
    st[S_CHIP] = chip
    st[S_REMAIN] = remain
    st[S_LONGTIME] = longtime
    counts[C_PIX] += np_
    counts[C_TDC] += nt
    counts[C_TDC_BAD] += n_tdc_bad
    counts[C_LSB] += n_lsb
    counts[C_MSB] += n_msb
    counts[C_HDR] += n_hdr
    counts[C_CTRL] += n_ctrl
    counts[C_OTHER] += n_other
    counts[C_AMBIG] += n_ambig
    counts[C_FRAME] += n_frame
    return np_, nt


def stream_framing(layout: str) -> str:
    """Framing of a live SPIDR stream for a chip ``layout``.

    A single chip streams plain 64-bit words (``'raw'``); a 2x2 quad streams ASI
    ``.tpx3`` chunks (a ``TPX3`` header word naming the chip, then its words).
    """
    if layout not in ("single", "quad"):
        raise ValueError(f"layout must be 'single' or 'quad', not {layout!r}")
    return "tpx3" if layout == "quad" else "raw"


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

    def anchor(self, ticks_25ns: int) -> None:
        """Start the time extension near a detector time (25 ns ticks) known from outside
        the stream, e.g. the previous acquisition's clock plus the host time since.

        Only before the first pixel or TDC word is decoded (later it is ignored: the chain
        of the stream wins); a global-time pair found by the look-ahead of the first chunk
        replaces it.  Within +-13.4 s of the truth it puts every word in the right epoch.
        """
        if self._fresh() and ticks_25ns >= 0:
            self._state[S_REF] = int(ticks_25ns)
            self._state[S_HAVE_REF] = 1

    def _fresh(self) -> bool:
        """No global time known and no pixel or TDC word decoded yet."""
        return self._state[S_LONGTIME] < 0 and self._counts[C_PIX] == 0 and self._counts[C_TDC] == 0

    def look_ahead(self, words: np.ndarray) -> int:
        """Before the first pixel or TDC word: anchor the reference on the first complete
        global-time pair in ``words`` (the next chunk to decode); returns its global time
        (25 ns ticks), -1 if none or not needed.  :meth:`decode` calls it itself."""
        if not self._fresh():
            return -1
        st = self._state
        lt = _global_time_scan(self._as_words(words), self.framing == "tpx3", st[S_LSB],
                               st[S_HAVE_LSB] != 0, st[S_REMAIN], True)
        if lt >= 0:
            st[S_REF] = lt
            st[S_HAVE_REF] = 1
        return int(lt)

    @staticmethod
    def _as_words(words: np.ndarray) -> np.ndarray:
        words = np.ascontiguousarray(words)
        return words.view(np.uint64) if words.dtype != np.uint64 else words

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
        words = self._as_words(words)
        if self._fresh():
            self.look_ahead(words)
        # every word may be a pixel or a TDC word: room for each (pages never written are
        # never touched), one pass over the words
        npix = ntdc = len(words)
        px = PixelHits(np.empty(npix, np.uint16), np.empty(npix, np.uint16), np.empty(npix, np.int64),
                       np.empty(npix, np.uint16), np.empty(npix, np.uint8))
        tr = Triggers(np.empty(ntdc, np.uint8), np.empty(ntdc, np.bool_), np.empty(ntdc, np.int64),
                      np.empty(ntdc, np.uint16), np.empty(ntdc, np.uint8))
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
    last_global_time(np.zeros(2, np.uint64))
    first_global_time(np.zeros(2, np.uint64))
