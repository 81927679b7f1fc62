"""Event segmentation: one set of rules for the live event builder and the offline converter.

Units: times (ToA, trigger times, time of flight, windows, reorder window) are int64 fine
units of 25/4096 ns (:mod:`tango_tpx.tpx3.units`) unless a name says ``_s`` or ``_ns``.

* **time-walk**: a pixel's ToA is corrected by the table (ns per ToT bin,
  :mod:`.timewalk`) once, when it enters the :class:`Segmenter`;
* **time order**: by corrected ToA, stable (equal ToAs keep arrival order) (:mod:`.timeorder`);
* **trigger assignment**: a pixel belongs to the last trigger (TDC rising edge of the
  trigger channel) at or before its ToA; ``tof = toa - trigger_time`` (:func:`segment_events`);
* **event window**: only ``window[0] <= tof <= window[1]`` is kept, both edges inclusive;
  a window set while running applies to the triggers numbered after it: an event keeps the
  window (and the caller's tag, e.g. a settings version) it started with
  (:meth:`Segmenter.set_window`);
* **watermark and completeness**: the watermark is the newest time seen (pixels and
  triggers) minus the reorder window; an event is complete once the watermark has passed
  its window end or its successor trigger; pixels at or after the emit boundary (below it
  every event is complete, :func:`emit_boundary`) are held back;
* **late data**: a pixel arriving below a boundary already emitted is dropped and counted
  (``late_pixels``); a trigger older than the newest kept trigger too (``late_triggers``).

A :class:`Segmenter` turns the stream into :class:`Segment` s: the held-back pixels below the
boundary (in arrival order, not yet sorted) and the triggers they need. An event never spans
two segments, nor does a segment hold events of two windows, so :func:`segment_events` can
run on each segment on its own, in any process:
the live :class:`~tango_tpx.processing.events.PacketProcessor` runs it on every chunk's
segment, the converter (:mod:`tango_tpx.io.batching`) on batch-sized segments in its workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from ..tpx3.hits import PixelHits, Triggers
from ..tpx3.units import s_to_units
from .assign import _assign, _assign_packed
from .eventtables import Events, TriggerTable
from .heldmerge import merge_in_order
from .timeorder import sort_packed, time_order

#: "No limit" in fine units (an open window end; a final release).
INF = np.iinfo(np.int64).max
_NEG = np.iinfo(np.int64).min


def window_units(window: tuple[float, float]) -> tuple[int, int]:
    """Event window (min, max) ToF in s -> fine units; a max of inf (or >= 1e6 s) is :data:`INF`.
    ValueError unless ``0 <= min <= max``."""
    lo, hi = float(window[0]), float(window[1])
    if not (lo <= hi):
        raise ValueError(f"event window start {lo} s must be <= end {hi} s")
    if lo < 0:
        raise ValueError(f"event window start must be >= 0 s, got {lo}")
    hi_u = INF if not np.isfinite(hi) or hi >= 1e6 else int(s_to_units(hi))
    return int(s_to_units(lo)), hi_u


def apply_timewalk(px: PixelHits, lut: np.ndarray | None) -> PixelHits:
    """``px`` with its ToA corrected by the time-walk table ``lut`` (ns per ToT bin; None: as is)."""
    if lut is None or not len(px):
        return px
    from .timewalk import correct_pixel_toa

    return PixelHits(px.x, px.y, correct_pixel_toa(px.toa, px.tot, lut), px.tot, px.chip)


# ---- held-back pixels: pieces in arrival order, split at a boundary --------------------------
@numba.njit(cache=True, nogil=True)
def count_before(toa: np.ndarray, cut: int) -> int:
    """Number of pixels with ``toa < cut`` (fine units)."""
    n = 0
    for i in range(toa.size):
        if toa[i] < cut:
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _copy_split(toa, x, y, tot, chip, cut, lt, o_toa, o_x, o_y, o_tot, o_chip, pos):
    """Copy the pixels with ``toa < cut`` (``lt`` True) or ``toa >= cut`` (``lt`` False), in
    their order, to the output columns from index ``pos``; returns the index after the last.

    Held pixels are in near time order: the run below ``cut`` at the start is found first
    and copied (``lt``) or skipped (not ``lt``) as a block; only the rest is tested pixel
    by pixel."""
    n = toa.size
    head = 0
    while head < n and toa[head] < cut:
        head += 1
    if lt and head:
        o_toa[pos:pos + head] = toa[:head]
        o_x[pos:pos + head] = x[:head]
        o_y[pos:pos + head] = y[:head]
        o_tot[pos:pos + head] = tot[:head]
        o_chip[pos:pos + head] = chip[:head]
        pos += head
    for i in range(head, n):
        if (toa[i] < cut) == lt:
            o_toa[pos] = toa[i]
            o_x[pos] = x[i]
            o_y[pos] = y[i]
            o_tot[pos] = tot[i]
            o_chip[pos] = chip[i]
            pos += 1
    return pos


def _new_columns(n: int) -> dict[str, np.ndarray]:
    return {"toa": np.empty(n, np.int64), "x": np.empty(n, np.uint16), "y": np.empty(n, np.uint16),
            "tot": np.empty(n, np.uint16), "chip": np.empty(n, np.uint8)}


def gather_pieces(pieces: list, cut: int, n: int, out: dict | None = None) -> PixelHits:
    """The pixels with ``toa < cut`` of ``pieces`` (PixelHits, in order) as one PixelHits of
    ``n`` pixels: in ``out`` (column name -> array of at least ``n``) or in new arrays."""
    if out is None:
        if len(pieces) == 1 and cut == INF:
            return pieces[0]
        out = _new_columns(n)
    pos = 0
    for p in pieces:
        pos = _copy_split(p.toa, p.x, p.y, p.tot, p.chip, cut, True,
                          out["toa"], out["x"], out["y"], out["tot"], out["chip"], pos)
    if pos != n:
        raise RuntimeError(f"segment holds {pos} pixels, expected {n}")
    return PixelHits(out["x"][:n], out["y"][:n], out["toa"][:n], out["tot"][:n], out["chip"][:n])


@dataclass
class Segment:
    """Whole events: pixels below an emit boundary and the triggers they belong to.

    The pixels are those with ``toa < cut`` of ``pieces`` (PixelHits in arrival order,
    time-walk corrected ToA, fine units), ``n`` of them; they are gathered only where they
    go (a shared-memory slot, or new arrays): one copy. trig_time: int64 fine units of the
    trigger rising edges at or before the segment's pixels (the first may be the open
    trigger of the segment before); first_nr: global number of ``trig_time[0]``; ordered:
    the pixels are already in time order (one piece); window, tag: event window (fine
    units) of all its triggers and the caller's tag of it (:meth:`Segmenter.set_window`).
    """

    pieces: list
    trig_time: np.ndarray
    first_nr: int
    n: int
    cut: int = INF
    ordered: bool = False
    window: tuple[int, int] | None = None
    tag: Any = None

    @classmethod
    def of(cls, pixels: PixelHits, trig_time: np.ndarray, first_nr: int) -> "Segment":
        """A segment of all of ``pixels``."""
        return cls([pixels], trig_time, int(first_nr), len(pixels))

    @property
    def pixels(self) -> PixelHits:
        """The segment's pixels as one PixelHits (gathered on each access)."""
        return gather_pieces(self.pieces, self.cut, self.n)

    def materialize(self) -> "Segment":
        """The same segment with its pixels in one array set (for pickling)."""
        if len(self.pieces) == 1 and self.cut == INF:
            return self
        return Segment([self.pixels], self.trig_time, self.first_nr, self.n, INF, self.ordered, self.window, self.tag)

    @property
    def n_pixels(self) -> int:
        return self.n


# ---- trigger assignment and the event window ---------------------------------------------------
_NO_ORDER = np.zeros(0, np.int32)


def segment_events(segment: Segment, window: tuple[int, int]) -> tuple[Events, int, int]:
    """The events of one segment: its pixels in time order, each assigned to the last
    trigger at or before it, kept when ``window[0] <= tof <= window[1]`` (fine units).
    Returns (events sorted by toa, pixels before the first trigger, pixels outside the window)."""
    px = segment.pixels
    m = len(px)
    ev = Events(np.empty(m, np.int64), np.empty(m, np.uint16), np.empty(m, np.uint16),
                np.empty(m, np.int64), np.empty(m, np.uint16), np.empty(m, np.int64))
    if not m:
        return ev, 0, 0
    packed = None if segment.ordered else sort_packed(px.toa, px.x, px.y, px.tot)
    trig = np.ascontiguousarray(segment.trig_time, np.int64)
    if packed is not None:
        n, before, outside = _assign_packed(packed[0], packed[1], packed[2], trig, int(segment.first_nr),
                                            int(window[0]), int(window[1]), *ev.as_dict().values())
    else:
        order = _NO_ORDER if segment.ordered else time_order(px.toa)
        n, before, outside = _assign(px.toa, px.x, px.y, px.tot, order, not segment.ordered, trig,
                                     int(segment.first_nr), int(window[0]), int(window[1]), *ev.as_dict().values())
    if n != m:
        ev = ev.take(slice(0, n))
    return ev, int(before), int(outside)


# ---- the watermark and event completeness ------------------------------------------------------
def emit_boundary(newest: int, slack: int, trig_time: np.ndarray, hi: int) -> int:
    """Time (fine units) below which every event is complete.

    The watermark ``newest - slack`` is the oldest time still to come; the last trigger at
    or before it opens an event that may still collect pixels, unless the watermark has
    passed that event's window end (``trigger + hi``): then the boundary is the watermark,
    else that trigger's time.
    """
    if newest == _NEG:
        return _NEG
    b = newest - slack
    k = int(np.searchsorted(trig_time, b, side="right")) - 1
    if k >= 0 and (hi == INF or not (int(trig_time[k]) < b - hi)):
        b = int(trig_time[k])
    return b


class Segmenter:
    """The stream's sequential state: trigger numbering, held-back pixels, the watermark.

    Parameters
    ----------
    window: event window (min, max) ToF in fine units (:func:`window_units`) of the triggers
        numbered from now on (:meth:`set_window` changes it for the later ones); here its end
        says when an open event is complete, and each segment carries its triggers' window.
    slack: reorder window in fine units: how far pixels and triggers may arrive behind the
        newest data.
    timewalk_lut: time-walk table (ns per ToT bin) applied to every pixel's ToA on entry.
    trigger_channel: TDC channel whose rising edges are the triggers (1 or 2).
    min_pixels: :meth:`release` emits nothing (but on ``final``) while fewer pixels are held.
    presort: keep the held pixels in time order (each chunk sorted and merged on entry; the
        segments come out ordered: the live path, one process); otherwise they are held in
        arrival order and sorted by :func:`segment_events` (the converter, in its workers).
    stats: the dict to count in (shared with the caller); missing keys are added.

    Counts: triggers, lost_triggers (from gaps of the 12-bit TDC counter; a falling edge per
    rising one once falling edges were seen), lost_tdc_edges, late_triggers, pixels_in,
    late_pixels.
    """

    def __init__(self, window: tuple[int, int], slack: int, timewalk_lut: np.ndarray | None = None,
                 trigger_channel: int = 1, min_pixels: int = 0, presort: bool = False,
                 stats: dict | None = None):
        #: (first trigger number, window, tag) per window set, from that of the oldest held trigger
        self._windows: list[tuple[int, tuple[int, int], Any]] = [(0, (int(window[0]), int(window[1])), None)]
        self.slack = int(slack)
        self.timewalk_lut = None if timewalk_lut is None else np.asarray(timewalk_lut, np.float64)
        self.trigger_channel = int(trigger_channel)
        self.min_pixels = int(min_pixels)
        self.presort = bool(presort)
        self.stats = {} if stats is None else stats
        for k in ("pixels_in", "triggers", "lost_triggers", "lost_tdc_edges", "late_pixels", "late_triggers"):
            self.stats.setdefault(k, 0)
        self._pieces: list[PixelHits] = []           # held-back pixels, arrival order
        self._n = 0
        self._trig_time = np.zeros(0, np.int64)      # open triggers (the first may still collect)
        self._trig_nr0 = 0                            # global number of _trig_time[0]
        self._next_nr = 0
        self._emitted_to = _NEG                       # everything below this time was released
        self._newest = _NEG
        self._last_counter = {1: -1, 2: -1}
        self._falling_seen = {1: False, 2: False}

    @property
    def held_pixels(self) -> int:
        """Pixels waiting for their event to complete."""
        return self._n

    # -- the event window --------------------------------------------------------------------
    window = property(lambda self: self._windows[-1][1], lambda self, w: self.set_window(w, self.tag),
                      doc="Event window (min, max) ToF, fine units, of the triggers numbered from now on.")
    tag = property(lambda self: self._windows[-1][2], doc="The caller's tag of :attr:`window`.")

    def set_window(self, window: tuple[int, int], tag: Any = None) -> None:
        """Event window (min, max) ToF, fine units, and ``tag`` (the caller's name for it, e.g.
        a settings version) of the triggers numbered from now on. A trigger already numbered
        keeps the window it was numbered with, so an event open at the change is neither cut
        short nor extended, and never split: :meth:`release` ends a segment before the first
        trigger of a newer window, and each segment carries its window and tag."""
        entry = (self._next_nr, (int(window[0]), int(window[1])), tag)
        if self._windows[-1][0] == self._next_nr:      # no trigger numbered with the last one
            self._windows[-1] = entry
        else:
            self._windows.append(entry)

    # -- triggers ----------------------------------------------------------------------------
    def _count_lost(self, triggers: Triggers) -> None:
        for ch in (1, 2):
            m = triggers.channel == ch
            if not m.any():
                continue
            if not self._falling_seen[ch] and (m & ~triggers.rising).any():
                self._falling_seen[ch] = True
            c = triggers.counter[m].astype(np.int64)
            prev = self._last_counter[ch]
            seq = np.concatenate(([prev], c)) if prev >= 0 else c
            steps = np.diff(seq) % 4096
            lost = int(np.sum(np.where(steps > 1, steps - 1, 0)))
            self._last_counter[ch] = int(c[-1])
            self.stats["lost_tdc_edges"] += lost
            if ch == self.trigger_channel:
                per = 2 if self._falling_seen[ch] else 1
                self.stats["lost_triggers"] += (lost + per - 1) // per

    def add_triggers(self, triggers: Triggers) -> TriggerTable:
        """Number the rising edges of the trigger channel in time order (from 0 for the whole
        stream); an edge older than the newest kept trigger is dropped (``late_triggers``).
        Returns the new triggers' table."""
        if len(triggers):
            self._count_lost(triggers)
        m = (triggers.channel == self.trigger_channel) & triggers.rising
        order = np.argsort(triggers.time[m], kind="stable")
        t, cnt = triggers.time[m][order], triggers.counter[m][order]
        last = self._trig_time[-1] if len(self._trig_time) else _NEG
        late = t < last
        if late.any():
            self.stats["late_triggers"] += int(late.sum())
            t, cnt = t[~late], cnt[~late]
        n = len(t)
        table = TriggerTable(np.arange(self._next_nr, self._next_nr + n, dtype=np.int64), t, cnt)
        self._next_nr += n
        self.stats["triggers"] += n
        if n:
            self._trig_time = np.concatenate((self._trig_time, t))
            self._newest = max(self._newest, int(t[-1]))
        return table

    # -- pixels ------------------------------------------------------------------------------
    def add_pixels(self, px: PixelHits) -> None:
        """Hold ``px`` back (time-walk corrected) until its events are complete; pixels below
        a boundary already released are dropped (``late_pixels``)."""
        n = len(px)
        self.stats["pixels_in"] += n
        if not n:
            return
        px = apply_timewalk(px, self.timewalk_lut)
        if self._emitted_to != _NEG:
            late = px.toa < self._emitted_to
            if late.any():
                self.stats["late_pixels"] += int(late.sum())
                px = px.take(~late)
                if not len(px):
                    return
        if self.presort:
            merged, newest = merge_in_order(self._pieces[0] if self._pieces else PixelHits.empty(), px)
            self._newest = max(self._newest, newest)
            self._pieces = [merged]
        else:
            self._newest = max(self._newest, int(px.toa.max()))
            self._pieces.append(px)
        self._n += len(px)

    # -- release -----------------------------------------------------------------------------
    def release(self, final: bool = False) -> Segment | None:
        """The held pixels of complete events, with their triggers, as a :class:`Segment`
        (``final``: everything held: end of stream); None when nothing can be released
        (no pixel is complete, or fewer than ``min_pixels`` pixels are held). A segment
        holds the events of one window (:meth:`set_window`): after a window change call
        again until None."""
        if not final and self._n < self.min_pixels:
            return None
        while True:   # a segment ends before the first held trigger of a newer window
            _, window, tag = self._windows[0]
            k = self._windows[1][0] - self._trig_nr0 if len(self._windows) > 1 else len(self._trig_time)
            end = int(self._trig_time[k]) if k < len(self._trig_time) else INF
            b = INF if final else emit_boundary(self._newest, self.slack, self._trig_time, window[1])
            ended = b > end
            if ended:
                b = end
            elif not final and b <= self._emitted_to:
                return None
            seg = self._cut(b, window, tag)
            if seg is not None or not ended:
                return seg

    def _cut(self, b: int, window: tuple[int, int], tag: Any) -> Segment | None:
        """Release the held pixels below ``b`` (fine units) with their triggers."""
        self._emitted_to = max(self._emitted_to, b)
        tt, nr0 = self._trig_time, self._trig_nr0
        seg_trig = tt if b == INF else tt[:int(np.searchsorted(tt, b, side="left"))]
        pieces, n_out, rest, cut = self._pieces, 0, [], b
        if b == INF:
            n_out = self._n
        elif self.presort:
            if pieces:
                n_out = int(np.searchsorted(pieces[0].toa, b, side="left"))
                pieces, rest, cut = [pieces[0].take(slice(0, n_out))], [pieces[0].take(slice(n_out, None))], INF
        else:
            for p in pieces:
                m = count_before(p.toa, b)
                n_out += m
                if m < len(p):
                    rest.append(p if m == 0 else self._split_rest(p, b, len(p) - m))
        self._pieces, self._n = [r for r in rest if len(r)], sum(len(r) for r in rest)
        if len(tt) > 1 and b != INF:   # forget triggers that can no longer collect (keep the open one)
            k = int(np.searchsorted(tt, b, side="right")) - 1
            if k > 0:
                self._trig_time = tt[k:]
                self._trig_nr0 += k
        while len(self._windows) > 1 and self._windows[1][0] <= self._trig_nr0:
            del self._windows[0]
        return Segment(pieces, seg_trig, nr0, n_out, cut, self.presort, window, tag) if n_out else None

    @staticmethod
    def _split_rest(p: PixelHits, b: int, r: int) -> PixelHits:
        cols = _new_columns(r)
        _copy_split(p.toa, p.x, p.y, p.tot, p.chip, b, False,
                    cols["toa"], cols["x"], cols["y"], cols["tot"], cols["chip"], 0)
        return PixelHits(cols["x"], cols["y"], cols["toa"], cols["tot"], cols["chip"])


__all__ = ["INF", "Events", "TriggerTable", "Segment", "Segmenter", "apply_timewalk", "count_before",
           "emit_boundary", "gather_pieces", "segment_events", "time_order", "window_units"]
