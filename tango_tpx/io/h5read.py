"""Reading tango-tpx HDF5 files: a table's columns, the ``complete`` flag, a layout check
(the layout: :mod:`tango_tpx.io.h5layout`; also exported by :mod:`tango_tpx.io.hdf5`)."""

from __future__ import annotations

import os

import numpy as np

from tango_tpx.io.h5layout import DATASETS, TABLES


def read_table(path: str | os.PathLike, table: str) -> dict[str, np.ndarray]:
    """All datasets of ``table`` (a key of :data:`TABLES`) as arrays (Blosc/LZ4 files: with
    hdf5plugin installed, which is then imported)."""
    import h5py

    try:
        import hdf5plugin  # noqa: F401  registers the Blosc/LZ4 filters
    except ImportError:
        pass

    with h5py.File(path, "r") as f:
        return {k: f[s.path][()] for k, s in TABLES[table].items()}


def is_complete(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file whose ``complete`` attribute is true."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False))
    except (OSError, ValueError):
        return False


def check_layout(path: str | os.PathLike) -> list[str]:
    """Differences between the file at ``path`` and the layout (empty list = conforms)."""
    import h5py

    problems = []
    with h5py.File(path, "r") as f:
        for spec in DATASETS.values():
            if spec.path not in f:
                problems.append(f"missing {spec.path}")
                continue
            d = f[spec.path]
            if d.dtype != spec.dtype:
                problems.append(f"{spec.path}: dtype {d.dtype} != {spec.dtype}")
            if d.attrs.get("unit") != spec.unit:
                problems.append(f"{spec.path}: unit {d.attrs.get('unit')!r} != {spec.unit!r}")
        lengths: dict[str, set[int]] = {}
        for name, specs in TABLES.items():
            lengths[name] = {f[s.path].shape[0] for s in specs.values() if s.path in f}
            if len(lengths[name]) > 1:
                problems.append(f"{name}: datasets of unequal length {sorted(lengths[name])}")
        if "complete" not in f.attrs:
            problems.append("missing file attribute 'complete'")
    return problems


__all__ = ["read_table", "is_complete", "check_layout"]
