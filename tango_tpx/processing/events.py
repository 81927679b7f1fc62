"""Events and time of flight: :class:`PacketProcessor` (pymepix name).

A pixel belongs to the last TDC1 rising edge (trigger) at or before its ToA; its time of
flight is ``tof = toa - trigger_time``; only ``window[0] <= tof <= window[1]`` is kept
(both edges inclusive). Trigger numbers count TDC1 rising edges from 0 for the whole
acquisition, independent of chunking and of how many workers process the output.

Chunk boundaries: pixels arrive only locally time-ordered (per double column; up to
~0.45 ms late in the real captures), and a chunk may end in the middle of an event. The
processor therefore holds back everything at or after an *emit boundary*:

* the watermark is the latest time seen (pixels and triggers) minus ``reorder_window``;
* an event is complete once the watermark has passed both its trigger's successor or its
  window end, whichever comes first;
* pixels of complete events are emitted, the rest are held for the next call.

So an event is never split across two outputs and nothing is lost at a chunk edge. A new
event window (:meth:`PacketProcessor.set_event_window`) applies to the triggers that come
after it; an event keeps the window it started with, and each output part holds the events
of one window and its tag (e.g. the settings version that made them). A
pixel that arrives later than ``reorder_window`` behind already emitted data is counted
in ``stats['late_pixels']`` and dropped. The rules live in :mod:`.segmenter`, shared with
the offline converter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tpx3.codec import Decoded
from ..tpx3.units import ns_to_units
from .segmenter import Events, Segmenter, TriggerTable, segment_events, time_order, window_units

#: Default event window (s), as pymepix's PacketProcessor.
DEFAULT_EVENT_WINDOW = (0.0, 1e-3)
#: Default reorder tolerance (ns): 10x the worst lateness seen in the real captures.
DEFAULT_REORDER_WINDOW_NS = 5_000_000.0

#: The validation of event windows (s), as its earlier private name.
_window_units = window_units


@dataclass
class EventOutput:
    """What one :meth:`PacketProcessor.process` call releases: ``events`` (all of them, in
    time order), the new ``triggers`` and ``parts``: the same events as (tag, Events) per
    event window, in order (the tags given to :meth:`PacketProcessor.set_event_window`)."""

    events: Events
    triggers: TriggerTable
    parts: list[tuple[Any, Events]] = field(default_factory=list)

    @classmethod
    def of(cls, parts: list[tuple[Any, Events]], triggers: TriggerTable) -> "EventOutput":
        """The output of ``parts`` (tag, Events) in time order and the new ``triggers``."""
        if len(parts) == 1:
            return cls(parts[0][1], triggers, parts)
        return cls(Events.concat([e for _, e in parts]) if parts else Events.empty(), triggers, parts)


class PacketProcessor:
    """Assign decoded pixels to triggers, across chunks, losing nothing at chunk edges.

    Parameters
    ----------
    event_window: (min, max) time of flight in s (inclusive); ``max`` may be ``inf``.
    timewalk_lut: optional per-pixel time-walk table (ns per 25 ns ToT bin, see
        :mod:`tango_tpx.processing.timewalk`), applied to the ToA before assignment.
    reorder_window_ns: how far (ns) pixels may arrive behind the newest data.
    trigger_channel: TDC channel whose rising edges define events (1 or 2).
    """

    def __init__(self, event_window: tuple[float, float] = DEFAULT_EVENT_WINDOW,
                 timewalk_lut: np.ndarray | None = None,
                 reorder_window_ns: float = DEFAULT_REORDER_WINDOW_NS,
                 trigger_channel: int = 1):
        self.stats = {"pixels_in": 0, "events_pixels": 0, "triggers": 0, "lost_triggers": 0,
                      "lost_tdc_edges": 0, "late_pixels": 0, "late_triggers": 0,
                      "before_first_trigger": 0, "outside_window": 0}
        self._seg = Segmenter(window_units(event_window), int(ns_to_units(reorder_window_ns)),
                              timewalk_lut, trigger_channel, presort=True, stats=self.stats)
        self.event_window = event_window

    # -- configuration ------------------------------------------------------------------
    @property
    def event_window(self) -> tuple[float, float]:
        """(min, max) ToF in s of the triggers to come; may be changed between chunks
        (:meth:`set_event_window`, keeping the tag)."""
        return self._window_s

    @event_window.setter
    def event_window(self, window: tuple[float, float]) -> None:
        self.set_event_window(window, self._seg.tag)

    def set_event_window(self, window: tuple[float, float], tag: Any = None) -> None:
        """Event window (min, max) ToF in s and its ``tag`` (any value, e.g. the settings
        version) for the triggers that come from now on: an event whose trigger came
        before keeps its window, so a change never splits an event between two outputs;
        the events come out in parts of one window (:attr:`EventOutput.parts`) with its tag."""
        self._seg.set_window(window_units(window), tag)
        self._window_s = (float(window[0]), float(window[1]))

    @property
    def timewalk_lut(self) -> np.ndarray | None:
        """The time-walk table (ns per ToT bin) applied to pixel ToAs, or None."""
        return self._seg.timewalk_lut

    @timewalk_lut.setter
    def timewalk_lut(self, lut: np.ndarray | None) -> None:
        self._seg.timewalk_lut = None if lut is None else np.asarray(lut, np.float64)

    @property
    def trigger_channel(self) -> int:
        """TDC channel whose rising edges define events (1 or 2)."""
        return self._seg.trigger_channel

    # -- processing ---------------------------------------------------------------------
    def _release(self, final: bool) -> list[tuple[Any, Events]]:
        parts = []
        while (seg := self._seg.release(final)) is not None:    # one segment per event window
            ev, before, outside = segment_events(seg, seg.window)
            self.stats["before_first_trigger"] += before
            self.stats["outside_window"] += outside
            self.stats["events_pixels"] += len(ev)
            parts.append((seg.tag, ev))
        return parts

    def process(self, decoded: Decoded) -> EventOutput:
        """Add one decoded chunk; returns the events that became complete and new triggers."""
        triggers = self._seg.add_triggers(decoded.triggers)
        self._seg.add_pixels(decoded.pixels)
        return EventOutput.of(self._release(final=False), triggers)

    def flush(self) -> EventOutput:
        """End of stream: release everything still held."""
        return EventOutput.of(self._release(final=True), TriggerTable.empty())

    @property
    def held_pixels(self) -> int:
        """Pixels waiting for their event to complete."""
        return self._seg.held_pixels


__all__ = ["DEFAULT_EVENT_WINDOW", "DEFAULT_REORDER_WINDOW_NS", "EventOutput", "Events", "PacketProcessor",
           "TriggerTable", "time_order"]
