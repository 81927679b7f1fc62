"""Time-walk look-up tables (LUT) for Timepix3 pixels and centroids.

A low-ToT pixel crosses its discriminator threshold later than a high-ToT one hit by the same
particle ("time-walk", up to ~100 ns for the smallest signals). The correction is a table
indexed by ToT:

    ``lut[i]`` = correction in **ns** for ToT bin ``i``, i.e. for ``ToT = i + 1`` counts
    (``ToT_ns = (i + 1) * 25 ns``). Corrected time = measured time - ``lut[ToT - 1]``.

So a table of length ``L`` covers ToT counts ``1 .. L`` (ToT is a 10-bit counter: at most
1023 bins). ToT counts outside the table are **clamped**: ToT 0 uses bin 0 (ToT 1) and
ToT > L uses the last bin (the walk has flattened out there).

Unit note: pymepix multiplies its centroid table by ``1e3`` before subtracting it from a
time of flight in seconds (a unit slip, the table is effectively in ms there). Our table is in
ns, stored as a float64 ``.npy`` file, and all times it corrects are int64 fine units of
25/4096 ns (:mod:`tango_tpx.tpx3.units`): the ns values are rounded to the nearest fine unit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tango_tpx.tpx3.units import ns_to_units

#: ToT is a 10-bit counter: a table longer than this has bins that can never be used.
MAX_LUT_BINS: int = 1023


def validate_timewalk_lut(lut: np.ndarray | list | tuple) -> np.ndarray:
    """Check a time-walk table and return it as a 1-D float64 array in ns.

    Raises ``ValueError`` for a table that is not 1-D, is empty, longer than
    :data:`MAX_LUT_BINS` bins, or holds NaN/inf values.
    """
    arr = np.asarray(lut)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"time-walk table must be numeric (ns per ToT bin), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"time-walk table must be 1-D (one ns value per ToT bin), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("time-walk table is empty")
    if arr.size > MAX_LUT_BINS:
        raise ValueError(f"time-walk table has {arr.size} bins; ToT is 10 bits, at most {MAX_LUT_BINS}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"time-walk table holds {int(bad.sum())} NaN/inf values (first at bin {int(np.argmax(bad))})")
    return arr


def load_timewalk_lut(path: str | os.PathLike) -> np.ndarray:
    """Load a time-walk table from a ``.npy`` file.

    Returns a 1-D float64 array, element ``i`` = correction in ns for ToT = ``(i + 1) * 25 ns``.
    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` if it is not a
    valid table (wrong shape, NaN, not a numeric ``.npy`` array).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"time-walk table not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a numpy .npy time-walk table ({exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected one array in a .npy file, got {type(arr).__name__}")
    try:
        return validate_timewalk_lut(arr)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def save_timewalk_lut(path: str | os.PathLike, lut: np.ndarray) -> None:
    """Write a table (ns per ToT bin, see module docstring) as a float64 ``.npy`` file."""
    np.save(Path(path), validate_timewalk_lut(lut), allow_pickle=False)


def lut_to_units(lut: np.ndarray) -> np.ndarray:
    """Table in ns -> int64 table in fine units (25/4096 ns), rounded to the nearest unit."""
    return ns_to_units(validate_timewalk_lut(lut))


def _lut_index(tot: np.ndarray, n_bins: int) -> np.ndarray:
    """ToT counts -> table index ``tot - 1``, clamped to ``0 .. n_bins - 1``."""
    idx = np.asarray(tot).astype(np.int64) - 1
    return np.clip(idx, 0, n_bins - 1)


def correct_pixel_toa(toa: np.ndarray, tot: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Time-walk corrected pixel times: ``toa - lut[tot - 1]``.

    toa: int64 fine units (25/4096 ns); tot: ToT counts (25 ns); lut: ns per ToT bin
    (``lut[i]`` for ToT = i + 1). ToT 0 or beyond the table is clamped to the first/last bin.
    Returns a new int64 array in fine units.
    """
    units = lut_to_units(lut)
    toa = np.asarray(toa, dtype=np.int64)
    return toa - units[_lut_index(tot, units.size)]


def correct_centroid_tof(tof: np.ndarray, tot_max: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Time-walk corrected centroid times of flight: ``tof - lut[tot_max - 1]``.

    tof: int64 fine units (25/4096 ns); tot_max: the cluster's largest ToT in counts (25 ns),
    as pymepix indexes its centroid table; lut in ns per ToT bin. Out-of-table ToT is clamped.
    Returns a new int64 array in fine units.
    """
    return correct_pixel_toa(tof, tot_max, lut)
