"""Structure-of-arrays containers for decoded Timepix3 data.

Units (see :mod:`tango_tpx.tpx3.units`): times are int64 counts of 25/4096 ns, ToT is
uint16 counts of 25 ns, coordinates are pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


class _SoA:
    """Mixin: length, slicing, concatenation and emptiness for equal-length array fields."""

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def take(self, index) -> "_SoA":
        """New container with every field indexed by ``index`` (slice, mask or indices)."""
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def concat(cls, parts: list) -> "_SoA":
        if not parts:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PixelHits(_SoA):
    """Decoded pixel hits.

    x, y: uint16 pixels (0..255 single chip, 0..515 in the 2x2 quad frame);
    toa: int64 time of arrival, 25/4096 ns units, extended past the 30-bit rollover;
    tot: uint16 time over threshold, counts of 25 ns;
    chip: uint8 chip index (0 for a single chip).
    """

    x: np.ndarray
    y: np.ndarray
    toa: np.ndarray
    tot: np.ndarray
    chip: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> "PixelHits":
        return cls(np.zeros(n, np.uint16), np.zeros(n, np.uint16), np.zeros(n, np.int64),
                   np.zeros(n, np.uint16), np.zeros(n, np.uint8))


@dataclass
class Triggers(_SoA):
    """Decoded TDC trigger edges.

    channel: uint8, 1 (TDC1) or 2 (TDC2); rising: bool edge;
    time: int64, 25/4096 ns units, extended past the rollover;
    counter: uint16, the 12-bit TDC trigger counter of the word;
    chip: uint8 chip index the word came from.
    """

    channel: np.ndarray
    rising: np.ndarray
    time: np.ndarray
    counter: np.ndarray
    chip: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> "Triggers":
        return cls(np.zeros(n, np.uint8), np.zeros(n, np.bool_), np.zeros(n, np.int64),
                   np.zeros(n, np.uint16), np.zeros(n, np.uint8))
