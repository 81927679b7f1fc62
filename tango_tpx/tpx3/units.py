"""Time units used everywhere in tango-tpx.

All times are ``int64`` counts of the *fine unit* ``25/4096 ns`` (about 6.1 ps) until
they are written out. The Timepix3 coarse clock is 25 ns = 4096 fine units, the pixel
fine ToA step is 1.5625 ns = 256 fine units and the TDC fine step is 3.125 ns / 12.
ToT is kept as 10-bit counts of 25 ns.
"""

from __future__ import annotations

import numpy as np

#: Coarse clock period in ns (ToA, ToT, SPIDR global time).
TICK_NS: float = 25.0
#: Fine units per coarse tick.
FINE_PER_TICK: int = 4096
#: One fine unit in ns (25/4096 ns = 6.103515625 ps, exact in binary floating point).
UNIT_NS: float = TICK_NS / FINE_PER_TICK
#: The pixel/TDC coarse counter is 30 bits of 25 ns: it rolls over every 26.84 s.
COARSE_BITS: int = 30
EPOCH_TICKS: int = 1 << COARSE_BITS


def units_to_ns(t: np.ndarray | int) -> np.ndarray | float:
    """Fine units (int64) -> float64 ns."""
    return np.asarray(t, dtype=np.float64) * UNIT_NS


def units_to_s(t: np.ndarray | int) -> np.ndarray | float:
    """Fine units (int64) -> float64 s."""
    return np.asarray(t, dtype=np.float64) * (UNIT_NS * 1e-9)


def ns_to_units(t_ns: np.ndarray | float) -> np.ndarray:
    """float ns -> nearest int64 fine units."""
    return np.rint(np.asarray(t_ns, dtype=np.float64) / UNIT_NS).astype(np.int64)


def s_to_units(t_s: np.ndarray | float) -> np.ndarray:
    """float s -> nearest int64 fine units."""
    return np.rint(np.asarray(t_s, dtype=np.float64) / (UNIT_NS * 1e-9)).astype(np.int64)


def tot_to_ns(tot: np.ndarray) -> np.ndarray:
    """ToT counts (25 ns) -> uint32 ns."""
    return np.asarray(tot, dtype=np.uint32) * np.uint32(25)
