"""pymepix's ``PacketProcessor``: one chunk of raw bytes -> pixels, events, timestamps, triggers.

``process(data)`` takes the bytes of a chunk of SPIDR words whose **last 8 bytes** are the
48-bit global time ("longtime", 25 ns ticks, little-endian uint64), as pymepix's live
pipeline hands them over, and returns ``(event_data, pixel_data, timestamps, triggers)``:

* ``pixel_data``: ``(x, y, toa, tot)``, toa in s on the longtime-extended clock, tot in ns;
* ``event_data``: ``(trigger nr, x, y, tof, tot)``, tof in s (None if ``handle_events`` is
  False or no event completed);
* ``timestamps``: ``(trigger nr, timestamp)`` of the TDC1 rising edges decoded in this
  chunk, timestamp uint64 ns = trigger time + ``start_time`` (ns since the epoch when
  ``start_time`` is the raw file header's wall clock);
* ``triggers``: ``[trigger1, trigger2]`` edge times in s (TDC1 rising edges; TDC2 edges,
  negative = falling), each None when the chunk has none.

Each item is None when empty. Time extension follows pymepix's live rule: every word is
put in the 26.8 s epoch nearest the chunk's longtime (global-time words inside the chunk
are not used). Events are built by :class:`tango_tpx.processing.events.PacketProcessor`:
a pixel belongs to the last trigger at or before it and an event is released once it is
complete, so :meth:`post_process` returns the last events at the end of the stream.
``event_window`` (s) and ``handle_events`` live in shared memory: a change made in any
process (e.g. the parent of a running pipeline) applies from the next chunk.

Differences from pymepix, on purpose: ``timewalk_lut`` is in ns per ToT bin (pymepix
scaled its table by 1e3); events are never split or lost at chunk edges.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing as mp
from enum import IntEnum
from typing import Any

import numpy as np

from ...tpx3.codec import Decoder
from ..events import PacketProcessor as _EventBuilder
from ..segmenter import apply_timewalk, window_units
from ..shapes import event_tuple, pixel_tuple, trigger_edges_s


class PixelOrientation(IntEnum):
    """How (column, row) map to (x, y) in the output (pymepix values)."""

    Up = 0      #: x = column, y = row
    Left = 1    #: x = row, y = 255 - column
    Down = 2    #: x = 255 - column, y = 255 - row
    Right = 3   #: x = 255 - row, y = column


def strip_global_time(words: np.ndarray) -> np.ndarray:
    """The words without global-time LSB/MSB words (header 0x4, sub-header 0x4 or 0x5)."""
    top = (words >> np.uint64(56)).astype(np.uint8)
    keep = (top != 0x44) & (top != 0x45)
    return words if keep.all() else words[keep]


def timestamps_ns(table: Any, start_time_ns: int = 0) -> np.ndarray:
    """Trigger times (``TriggerTable.time``, 25/4096 ns) -> uint64 ns, rounded half up,
    plus ``start_time_ns``; exact integer arithmetic."""
    t = np.asarray(table.time, np.int64)
    return ((t * 25 + 2048) // 4096 + int(start_time_ns)).astype(np.uint64)


class PacketProcessor:
    """See the module doc. Parameters as pymepix's: handle_events, event_window (min, max)
    ToF in s, position_offset (x, y) added after orientation, orientation
    (:class:`PixelOrientation`), start_time (ns added to the trigger timestamps),
    timewalk_lut (ns per ToT bin). Extra keyword: layout ('single' | 'quad')."""

    def __init__(self, handle_events: bool = True, event_window: tuple[float, float] = (0.0, 10000.0),
                 position_offset: tuple[int, int] = (0, 0), orientation: PixelOrientation = PixelOrientation.Up,
                 start_time: int = 0, timewalk_lut: Any = None, *, layout: str = "single") -> None:
        self._handle = mp.RawValue(ctypes.c_bool, bool(handle_events))
        self._window = mp.RawArray(ctypes.c_double, 2)
        self.event_window = event_window
        self.orientation = PixelOrientation(orientation)
        self.position_offset = (int(position_offset[0]), int(position_offset[1]))
        self.start_time = int(start_time)
        self.timewalk_lut = None if timewalk_lut is None else np.asarray(timewalk_lut, np.float64)
        self.layout = layout
        self._decoder: Decoder | None = None
        self._events: _EventBuilder | None = None

    # -- settings shared with the processes of a running pipeline ---------------------------
    @property
    def event_window(self) -> tuple[float, float]:
        """(min, max) time of flight in s, both inclusive."""
        return (float(self._window[0]), float(self._window[1]))

    @event_window.setter
    def event_window(self, window: tuple[float, float]) -> None:
        lo, hi = float(window[0]), float(window[1])
        window_units((lo, hi))           # ValueError for a bad window
        self._window[0], self._window[1] = lo, hi

    @property
    def handle_events(self) -> bool:
        """Build events (True) or only decode pixels (False)."""
        return bool(self._handle.value)

    @handle_events.setter
    def handle_events(self, value: bool) -> None:
        self._handle.value = bool(value)

    @property
    def is_default_geometry(self) -> bool:
        return self.orientation == PixelOrientation.Up and self.position_offset == (0, 0)

    # -- processing ----------------------------------------------------------------------
    def _event_builder(self) -> _EventBuilder:
        if self._events is None:
            self._events = _EventBuilder(self.event_window)   # gets time-walk corrected pixels
        elif self._events.event_window != self.event_window:
            self._events.event_window = self.event_window
        return self._events

    def _orient(self, t: tuple, xi: int) -> tuple:
        if self.is_default_geometry:
            return t
        col, row = t[xi], t[xi + 1]
        o = self.orientation
        if o == PixelOrientation.Left:
            col, row = row, 255 - col
        elif o == PixelOrientation.Down:
            col, row = 255 - col, 255 - row
        elif o == PixelOrientation.Right:
            col, row = 255 - row, col
        return t[:xi] + (col + self.position_offset[0], row + self.position_offset[1]) + t[xi + 2:]

    def _timestamps(self, table: Any) -> tuple[np.ndarray, np.ndarray] | None:
        if not len(table):
            return None
        return np.asarray(table.trigger_nr, np.int64), timestamps_ns(table, self.start_time)

    def pre_process(self) -> None:
        """pymepix hook (nothing to prepare)."""

    def process(self, data: Any) -> tuple[Any, Any, Any, Any]:
        """One chunk (bytes-like: SPIDR words + 8-byte longtime) -> see the module doc."""
        mv = memoryview(data).cast("B")
        if len(mv) < 8 or (len(mv) - 8) % 8:
            raise ValueError(f"a chunk is whole 8-byte words followed by the 8-byte longtime, "
                             f"got {len(mv)} bytes")
        longtime = int.from_bytes(mv[-8:], "little")
        words = strip_global_time(np.frombuffer(mv[:-8], "<u8"))
        if self._decoder is None:
            self._decoder = Decoder(layout=self.layout)
        self._decoder.set_longtime(longtime)
        dec = self._decoder.decode(words)
        if not len(words):
            return None, None, None, None
        px = apply_timewalk(dec.pixels, self.timewalk_lut)
        pixel_data = self._orient(pixel_tuple(px), 0) if len(px) else None
        t1, t2 = trigger_edges_s(dec.triggers)
        triggers = [t1 if len(t1) else None, t2 if len(t2) else None]
        event_data = timestamps = None
        if self.handle_events:
            out = self._event_builder().process(dataclasses.replace(dec, pixels=px))
            if len(out.events):
                event_data = self._orient(event_tuple(out.events), 1)
            timestamps = self._timestamps(out.triggers)
        return event_data, pixel_data, timestamps, triggers

    def post_process(self) -> tuple[Any, Any, Any, Any]:
        """End of stream: ``(event_data, None, None, None)`` with the events still held."""
        if self._events is None:
            return None, None, None, None
        out = self._events.flush()
        return (self._orient(event_tuple(out.events), 1) if len(out.events) else None), None, None, None


__all__ = ["PacketProcessor", "PixelOrientation", "strip_global_time", "timestamps_ns"]
