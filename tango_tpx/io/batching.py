"""Trigger-aligned batches of pixels and what turns one batch into events and centroids.

The converter decodes a stream sequentially and cuts the pixels at trigger times into
:class:`Batch` es of whole events (:class:`Batcher`); each batch is turned into ``raw/*``
columns by a fresh :class:`~tango_tpx.processing.events.PacketProcessor` and into centroids
by a ``CentroidCalculator`` (:func:`process_batch`), in this process or in a worker of
:mod:`tango_tpx.io.pool`. Batch boundaries depend only on the input, the read chunk size
and ``batch_hits``; an event never spans two batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

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
    their order, to the output columns from index ``pos``; returns the index after the last."""
    for i in range(toa.size):
        if (toa[i] < cut) == lt:
            o_toa[pos] = toa[i]
            o_x[pos] = x[i]
            o_y[pos] = y[i]
            o_tot[pos] = tot[i]
            o_chip[pos] = chip[i]
            pos += 1
    return pos


_NO_CUT = np.iinfo(np.int64).max  # "every pixel is before the cut"


def gather_pieces(pieces: list, cut: int, n: int, out: dict | None = None):
    """The pixels with ``toa < cut`` of ``pieces`` (PixelHits, in order) as one PixelHits of
    ``n`` pixels: in ``out`` (column name -> array of at least ``n``) or in new arrays."""
    from tango_tpx.tpx3.hits import PixelHits

    if out is None:
        if len(pieces) == 1 and cut == _NO_CUT:
            return pieces[0]
        out = {"toa": np.empty(n, np.int64), "x": np.empty(n, np.uint16), "y": np.empty(n, np.uint16),
               "tot": np.empty(n, np.uint16), "chip": np.empty(n, np.uint8)}
    pos = 0
    for p in pieces:
        pos = _copy_split(p.toa, p.x, p.y, p.tot, p.chip, cut, True,
                          out["toa"], out["x"], out["y"], out["tot"], out["chip"], pos)
    if pos != n:
        raise RuntimeError(f"batch holds {pos} pixels, expected {n}")
    return PixelHits(out["x"][:n], out["y"][:n], out["toa"][:n], out["tot"][:n], out["chip"][:n])


@dataclass
class Batch:
    """Pixels whose ToA lies in [first trigger, next batch's first trigger) and those triggers.

    The pixels are those with ``toa < cut`` of ``pieces`` (PixelHits in arrival order,
    time-walk corrected ToA, fine units), ``n`` of them; they are gathered only where they
    go (a shared-memory slot, or new arrays): one copy. trig_time: int64 fine units of the
    TDC1 rising edges of the batch; first_nr: global number of trig_time[0].
    """

    pieces: list
    trig_time: np.ndarray
    first_nr: int
    n: int
    cut: int = _NO_CUT

    @classmethod
    def of(cls, pixels, trig_time: np.ndarray, first_nr: int) -> "Batch":
        """A batch of all of ``pixels``."""
        return cls([pixels], trig_time, first_nr, len(pixels))

    @property
    def pixels(self):
        """The batch's pixels as one PixelHits (gathered on each access)."""
        return gather_pieces(self.pieces, self.cut, self.n)

    def materialize(self) -> "Batch":
        if len(self.pieces) == 1 and self.cut == _NO_CUT:
            return self
        return Batch.of(self.pixels, self.trig_time, self.first_nr)

    @property
    def n_pixels(self) -> int:
        return self.n


@dataclass
class BatchResult:
    raw: dict            # raw/* file columns
    centroids: Any       # Centroids or None
    stats: dict          # PacketProcessor pixel statistics


PIXEL_STATS = ("pixels_in", "events_pixels", "before_first_trigger", "outside_window", "late_pixels")


def process_batch(batch: Batch, state: dict, out: dict | None = None) -> BatchResult:
    """Events of one batch (a fresh PacketProcessor: the batch holds whole events) + centroids.

    ``out``: arrays to write the ``raw/*`` columns into (a shared-memory slot), at least as
    long as the batch; without it new arrays are returned.
    """
    from tango_tpx.io.hdf5 import events_columns
    from tango_tpx.processing.centroids import Centroids
    from tango_tpx.processing.events import PacketProcessor
    from tango_tpx.tpx3.codec import Decoded, WordCounts
    from tango_tpx.tpx3.hits import Triggers

    m = len(batch.trig_time)
    trig = Triggers(np.ones(m, np.uint8), np.ones(m, np.bool_), batch.trig_time,
                    (np.arange(m) & 0xFFF).astype(np.uint16), np.zeros(m, np.uint8))
    pp = PacketProcessor(event_window=state["window"])
    # the two outputs never split an event: convert and cluster them one after the other
    parts = [o.events for o in (pp.process(Decoded(batch.pixels, trig, WordCounts())), pp.flush())]
    parts = [ev for ev in parts if len(ev)]
    n = sum(len(ev) for ev in parts)
    if out is None and len(parts) > 1:
        out = {k: np.empty(n, dt) for k, dt in ((k, spec.dtype) for k, spec in _raw_specs().items())}
    cols: dict = {}
    cents = []
    pos = 0
    for ev in parts:
        if batch.first_nr:
            ev.trigger_nr += batch.first_nr
        if out is None:
            cols = events_columns(ev)
        else:
            events_columns(ev, {k: a[pos:] for k, a in out.items()})
        pos += len(ev)
        if state["calc"] is not None:
            cents.append(state["calc"].process(ev))
    if out is not None:
        cols = {k: a[:n] for k, a in out.items()}
    elif not parts:
        cols = {k: np.empty(0, spec.dtype) for k, spec in _raw_specs().items()}
    stats = {k: int(pp.stats.get(k, 0)) for k in PIXEL_STATS}
    cen = None
    if cents:
        cen = cents[0] if len(cents) == 1 else Centroids.concat(cents)
    return BatchResult(cols, cen, stats)


def _raw_specs() -> dict:
    from tango_tpx.io.hdf5 import RAW

    return RAW


def make_calculator(params: dict):
    """A one-process ``CentroidCalculator`` for the converter's ``params`` (a backend other
    than the built-in ones: :class:`~tango_tpx.processing.centroids.RegisteredCalculator`)."""
    from tango_tpx.processing.centroids import ALGORITHMS, CentroidCalculator, RegisteredCalculator

    if params.get("clustering") is not None and params["clustering"].algorithm not in ALGORITHMS:
        return RegisteredCalculator(params["clustering"], params["cent_timewalk_lut"])

    return CentroidCalculator(cent_timewalk_lut=params["cent_timewalk_lut"], number_of_processes=1,
                              clustering_args=params["clustering_args"],
                              dbscan_clustering=params["dbscan"], tot_threshold=params["tot_threshold"])


def make_state(params: dict) -> dict:
    """What :func:`process_batch` needs besides the batch: event window and calculator."""
    return {"window": params["window"],
            "calc": make_calculator(params) if params["centroiding"] else None}


_NEG = np.iinfo(np.int64).min


class Batcher:
    """Cuts the decoded stream into :class:`Batch` es at trigger times.

    A batch is cut once at least ``batch_hits`` pixels are pending, at the latest trigger
    that is older than the newest time seen minus ``slack`` (the reorder window: no pixel or
    trigger older than that can still arrive); pixels before that trigger go out, the rest
    waits. So every event lies wholly inside one batch. A pixel arriving behind a cut is
    counted in ``late_pixels`` and dropped. While no cut is possible, pixels that can no
    longer belong to any event (before the first trigger, or beyond the window end of the
    open event) are dropped and counted, so memory stays bounded by one event.
    """

    def __init__(self, batch_hits: int, slack_units: int, window_units: tuple[int, int | None]):
        self.batch_hits = max(1, int(batch_hits))
        self.slack = int(slack_units)
        self.hi = window_units[1]  # None = no upper limit
        self.parts: list = []
        self.n = 0
        self.trig_time = np.zeros(0, np.int64)
        self.trig_nr = np.zeros(0, np.int64)
        self.last_cut: int | None = None
        self.newest = _NEG
        self.stats = {"late_pixels": 0, "before_first_trigger": 0, "outside_window": 0}

    def add(self, pixels, trig_time: np.ndarray, trig_nr: np.ndarray) -> None:
        if len(trig_time):
            self.trig_time = np.concatenate((self.trig_time, trig_time))
            self.trig_nr = np.concatenate((self.trig_nr, trig_nr))
            self.newest = max(self.newest, int(trig_time[-1]))
        if len(pixels):
            self.newest = max(self.newest, int(pixels.toa.max()))
            if self.last_cut is not None:
                late = pixels.toa < self.last_cut
                if late.any():
                    self.stats["late_pixels"] += int(late.sum())
                    pixels = pixels.take(~late)
            if len(pixels):
                self.parts.append(pixels)
                self.n += len(pixels)

    def _pending(self):
        if len(self.parts) > 1:
            self.parts = [type(self.parts[0]).concat(self.parts)]
        if self.parts:
            return self.parts[0]
        from tango_tpx.tpx3.hits import PixelHits

        return PixelHits.empty()

    def cut(self, final: bool = False) -> list[Batch]:
        if final:
            px = self._pending()
            self.parts, self.n = [], 0
            if not len(px) and not len(self.trig_time):
                return []
            first = int(self.trig_nr[0]) if len(self.trig_nr) else 0
            batch = Batch.of(px, self.trig_time, first)
            self.trig_time, self.trig_nr = self.trig_time[:0], self.trig_nr[:0]
            return [batch]
        if self.n < self.batch_hits:
            return []
        b = self.newest - self.slack
        k = int(np.searchsorted(self.trig_time, b, side="right")) - 1  # latest trigger <= b
        min_k = 0 if self.last_cut is None else 1
        if k < min_k:
            self._drop_dead(b, k)
            return []
        cut_t = int(self.trig_time[k])
        # pixels before the cut go out (gathered later, where they go); the rest stays
        pieces, n_out, rest = self.parts, 0, []
        for p in pieces:
            m = count_before(p.toa, cut_t)
            n_out += m
            if m < len(p):
                r = len(p) - m
                cols = {"toa": np.empty(r, np.int64), "x": np.empty(r, np.uint16), "y": np.empty(r, np.uint16),
                        "tot": np.empty(r, np.uint16), "chip": np.empty(r, np.uint8)}
                _copy_split(p.toa, p.x, p.y, p.tot, p.chip, cut_t, False,
                            cols["toa"], cols["x"], cols["y"], cols["tot"], cols["chip"], 0)
                rest.append(type(p)(cols["x"], cols["y"], cols["toa"], cols["tot"], cols["chip"]))
        batch = Batch(pieces, self.trig_time[:k], int(self.trig_nr[0]) if k else 0, n_out, cut_t)
        self.parts, self.n = rest, sum(len(r) for r in rest)
        self.trig_time, self.trig_nr = self.trig_time[k:], self.trig_nr[k:]
        self.last_cut = cut_t
        return [batch]

    def _drop_dead(self, b: int, k: int) -> None:
        """No cut possible: drop pending pixels older than ``b`` that no event can take."""
        px = self._pending()
        old = px.toa < b
        if k < 0:  # no trigger at or before b (and none before it was ever cut)
            if self.last_cut is None:
                dead, key = old, "before_first_trigger"
            else:
                return
        elif self.hi is not None:  # the open event (trigger k = 0) ends at its window's end
            dead, key = old & (px.toa - self.trig_time[0] > self.hi), "outside_window"
        else:
            return
        n = int(dead.sum())
        if n:
            self.stats[key] += n
            keep = px.take(~dead)
            self.parts, self.n = ([keep], len(keep)) if len(keep) else ([], 0)

