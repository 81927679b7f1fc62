"""The tables of the event segmenter (:mod:`.segmenter`): :class:`Events` (pixel hits assigned
to triggers) and :class:`TriggerTable` (the numbered triggers). Times are int64 fine units of
25/4096 ns (:mod:`tango_tpx.tpx3.units`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tpx3.hits import _SoA


@dataclass
class Events(_SoA):
    """Pixel hits assigned to triggers.

    trigger_nr: int64 global trigger (event) number, 0-based;
    x, y: uint16 pixels; tof: int64 time of flight, 25/4096 ns units;
    tot: uint16 ToT counts (25 ns); toa: int64 absolute ToA, 25/4096 ns units.
    Rows are sorted by toa (hence by trigger_nr).
    """

    trigger_nr: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tof: np.ndarray
    tot: np.ndarray
    toa: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> "Events":
        return cls(np.zeros(n, np.int64), np.zeros(n, np.uint16), np.zeros(n, np.uint16),
                   np.zeros(n, np.int64), np.zeros(n, np.uint16), np.zeros(n, np.int64))


@dataclass
class TriggerTable(_SoA):
    """Trigger (TDC rising edge) records: global number, time (25/4096 ns), 12-bit counter."""

    trigger_nr: np.ndarray
    time: np.ndarray
    counter: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> "TriggerTable":
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.uint16))


__all__ = ["Events", "TriggerTable"]
