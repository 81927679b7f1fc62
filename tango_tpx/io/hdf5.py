"""HDF5 writer of tango-tpx: appends results to a file of the pymepix-compatible layout.

The layout (every dataset, its dtype and unit, and the conversions to file units) is
:mod:`tango_tpx.io.h5layout`, the reading helpers are :mod:`tango_tpx.io.h5read`; this module
exports their names too.

Datasets are 1-D, resizable, chunked (``chunk_rows`` rows per chunk) and compressed by
default with HDF5's built-in shuffle + deflate filters, readable by every HDF5 reader without
``hdf5plugin``; the chunks are built byte plane by byte plane and written directly (see
:mod:`tango_tpx.io.compress`, which also lists the Blosc/LZ4/zstd choices).

The file attribute ``complete`` is written ``False`` when the file is created and set
``True`` only by a successful :meth:`Hdf5Writer.close`, after all data are on disk.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tango_tpx.io.compress import COMPRESSIONS, DEFAULT_COMPRESSION, ChunkWriter, dataset_kwargs
from tango_tpx.io.h5layout import (  # noqa: F401  the layout's names are this module's too
    CENTROIDED,
    DATASETS,
    GROUPS,
    LAYOUT_VERSION,
    RAW,
    TABLES,
    TIMEPIX,
    TRAINID,
    TRIGGER1,
    TRIGGER2,
    DatasetSpec,
    centroids_columns,
    events_columns,
    trigger_edge_columns,
    trigger_table_columns,
)
from tango_tpx.io.h5read import check_layout, is_complete, read_table  # noqa: F401

#: Rows per HDF5 chunk (1 MiB for an 8-byte column).
DEFAULT_CHUNK_ROWS = 1 << 17


def compression_kwargs(compression: str, dtype: Any = np.uint16, path: str = "") -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for one of :data:`COMPRESSIONS`, a column dtype
    and the dataset path."""
    return dataset_kwargs(compression, dtype, path)


def _attr_value(value: Any) -> Any:
    """Map a Python value to an HDF5 attribute: None -> '', Path -> str, dict -> JSON text,
    a sequence of numbers -> numeric array, any other sequence -> JSON text."""
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return np.asarray(value, dtype=np.float64 if any(isinstance(v, float) for v in value) else np.int64)
        return json.dumps(list(value), default=str)
    return value


class _Table:
    """Row-aligned buffered appender for the datasets of one group.

    Rows are collected in memory and written in whole chunks (``chunk_rows``), so HDF5 sees
    few, large, chunk-aligned writes. Memory: ``chunk_rows`` rows per column.
    """

    def __init__(self, h5file, specs: Mapping[str, DatasetSpec], chunk_rows: int, compression: str,
                 chunk_writer: ChunkWriter | None = None):
        self.specs = dict(specs)
        self.chunk_writer = chunk_writer  # deflate chunks compressed off this thread
        self.chunk_rows = chunk_rows
        self.dsets = {}
        for key, spec in self.specs.items():
            d = h5file.create_dataset(spec.path, shape=(0,), maxshape=(None,), dtype=spec.dtype,
                                      chunks=(chunk_rows,), **compression_kwargs(compression, spec.dtype, spec.path))
            d.attrs["unit"] = spec.unit
            d.attrs["description"] = spec.description
            self.dsets[key] = d
        # datasets whose chunks the chunk writer compresses (deflate); the others HDF5 writes
        self.direct = {k for k, d in self.dsets.items() if chunk_writer is not None and d.compression == "gzip"}
        self.buf = {k: np.empty(chunk_rows, s.dtype) for k, s in self.specs.items()}
        self.fill = 0
        self.rows = 0  # rows written to the file

    def append(self, cols: Mapping[str, np.ndarray]) -> None:
        missing = set(self.specs) - set(cols)
        if missing:
            raise KeyError(f"missing columns {sorted(missing)}")
        n = len(cols[next(iter(self.specs))])
        for k in self.specs:
            if len(cols[k]) != n:
                raise ValueError(f"column {k!r} has {len(cols[k])} rows, expected {n}")
        pos = 0
        while pos < n:
            if self.fill == 0 and n - pos >= self.chunk_rows:
                m = (n - pos) // self.chunk_rows * self.chunk_rows
                self._write({k: cols[k][pos:pos + m] for k in self.specs})
                pos += m
                continue
            m = min(self.chunk_rows - self.fill, n - pos)
            for k in self.specs:
                self.buf[k][self.fill:self.fill + m] = cols[k][pos:pos + m]
            self.fill += m
            pos += m
            if self.fill == self.chunk_rows:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            self._write({k: b[:self.fill] for k, b in self.buf.items()})
            self.fill = 0

    def _write(self, cols: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(cols.values())))
        start = self.rows
        cr = self.chunk_rows
        for k, d in self.dsets.items():
            d.resize((start + n,))
            a = np.asarray(cols[k], dtype=self.specs[k].dtype)
            if k in self.direct and start % cr == 0:
                for pos in range(0, n, cr):
                    self.chunk_writer.put(d, start + pos, a[pos:pos + cr], cr)
            else:  # not chunk-aligned (after a mid-stream flush): HDF5 filters it
                if k in self.direct:
                    self.chunk_writer.drain()  # the chunk it rewrites may still be queued
                d[start:start + n] = a
        self.rows = start + n

    @property
    def total_rows(self) -> int:
        return self.rows + self.fill


class Hdf5Writer:
    """Append tango-tpx results to an HDF5 file in the pymepix-compatible layout.

    ``Hdf5Writer(path, attrs)`` creates the file (``FileExistsError`` if it exists and
    ``overwrite`` is false) with every group and dataset of the layout (empty, so readers
    always find them), the file attributes ``attrs`` (``None`` stored as ``''``, dicts as
    JSON) and ``complete = False``. Append with :meth:`append_events`,
    :meth:`append_centroids`, :meth:`append_trigger_table`, :meth:`append_triggers`,
    :meth:`append_train_ids`; :meth:`close` writes the buffers, the counts and finally
    ``complete = True``. Leaving a ``with`` block by an exception closes with
    ``complete = False``.

    Memory: ``chunk_rows`` rows per dataset are buffered (about 4.5 MB at the default).
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False, compression: str = DEFAULT_COMPRESSION,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, threads: int | None = None):
        import h5py

        self.path = Path(path)
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        compression_kwargs(compression)  # an unknown choice fails here, before the file exists
        # deflate: chunks compressed on ``threads`` threads and written directly
        self._chunks = ChunkWriter(threads) if compression == "deflate" else None
        # no chunk cache: the tables write whole chunks, which then go straight through the
        # filter to the file instead of being copied into (and evicted from) the cache
        # (measured: -15 % CPU, -35 % wall for Blosc/LZ4); only the last, partial chunk of a
        # table (at flush/close) is read back and rewritten
        self._file = h5py.File(self.path, "w" if overwrite else "w-", rdcc_nbytes=0)
        try:
            f = self._file
            f.attrs["complete"] = False
            f.attrs["layout_version"] = LAYOUT_VERSION
            f.attrs["software"] = "tango-tpx"
            f.attrs["software_version"] = _software_version()
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.attrs["compression"] = compression or "none"
            for name, desc in GROUPS.items():
                g = f.require_group(name)
                g.attrs["description"] = desc
            self._tables = {name: _Table(f, specs, chunk_rows, compression, self._chunks) for name, specs in TABLES.items()}
            for name in ("raw", "centroided", "timing/timepix"):
                f[name].attrs["nr events"] = 0
            self.set_attrs(**dict(attrs or {}))
        except BaseException:
            self._file.close()
            if self._chunks is not None:
                self._chunks.close()
            raise
        self._events_seen = {"raw": _DistinctCounter(), "centroided": _DistinctCounter()}
        self.closed = False

    # -- attributes ------------------------------------------------------------------------
    def set_attrs(self, **attrs: Any) -> None:
        """Set (or replace) file-level attributes; ``complete`` is reserved for :meth:`close`."""
        for key, value in attrs.items():
            if key == "complete":
                raise ValueError("the 'complete' attribute is set by close() only")
            self._file.attrs[key] = _attr_value(value)

    # -- appending -------------------------------------------------------------------------
    def append_events(self, events: Any) -> None:
        """Append ``Events`` (one row per hit) to ``raw/*``."""
        if len(events.x):
            self._events_seen["raw"].update(events.trigger_nr)
            self._tables["raw"].append(events_columns(events))

    def append_centroids(self, centroids: Any) -> None:
        """Append ``Centroids`` (one row per cluster) to ``centroided/*``."""
        if len(centroids.x):
            self._events_seen["centroided"].update(centroids.trigger_nr)
            self._tables["centroided"].append(centroids_columns(centroids))

    def append_trigger_table(self, table: Any, start_time_ns: int = 0) -> None:
        """Append a ``TriggerTable`` (one row per TDC1 rising edge) to ``timing/timepix/*``;
        ``start_time_ns``: the raw file header's wall clock, ns since the epoch."""
        if len(table.time):
            self._tables["timing/timepix"].append(trigger_table_columns(table, start_time_ns))

    def append_triggers(self, triggers: Any) -> None:
        """Append decoded ``Triggers`` edges to ``triggers/trigger1/time`` and ``trigger2/time``."""
        if len(triggers.time):
            for ch, t in trigger_edge_columns(triggers).items():
                if len(t):
                    self._tables[f"triggers/trigger{ch}"].append({"time": t})

    def append_columns(self, table: str, columns: Mapping[str, np.ndarray]) -> None:
        """Append already converted file columns (keys as in :data:`TABLES`) to ``table``."""
        if table in self._events_seen:
            self._events_seen[table].update(columns["trigger nr"])
        self._tables[table].append(columns)

    def append_train_ids(self, timestamp_ns: np.ndarray, train_id: np.ndarray | None = None,
                         beam_mode: np.ndarray | None = None) -> None:
        """Append train IDs: host time stamps [ns since the epoch, uint64], IDs, beam mode words
        (default 0). ``timestamp_ns`` may also be a structured array with the fields
        ``timestamp_ns``, ``train_id``, ``beam_mode`` (``tango_tpx.trainid.TRAINID_DTYPE``)."""
        arr = np.asarray(timestamp_ns)
        if arr.dtype.names:
            timestamp_ns, train_id, beam_mode = arr["timestamp_ns"], arr["train_id"], arr["beam_mode"]
        if train_id is None:
            raise TypeError("train_id is required unless a structured train-ID array is given")
        train_id = np.asarray(train_id, dtype=np.uint64)
        if beam_mode is None:
            beam_mode = np.zeros(len(train_id), np.uint32)
        self._tables["timing/trainID"].append({
            "timestamp": np.asarray(timestamp_ns, dtype=np.uint64),
            "train id": train_id,
            "beam mode": np.asarray(beam_mode, dtype=np.uint32),
        })

    def rows(self, table: str) -> int:
        """Rows appended so far to ``table`` (buffered ones included)."""
        return self._tables[table].total_rows

    # -- flushing and closing --------------------------------------------------------------
    def flush(self) -> None:
        """Write the buffered rows and flush HDF5 (the file stays ``complete = False``)."""
        for t in self._tables.values():
            t.flush()
        if self._chunks is not None:
            self._chunks.drain()
        self._update_counts()
        self._file.flush()

    def _update_counts(self) -> None:
        self._file["raw"].attrs["nr events"] = self._events_seen["raw"].count
        self._file["centroided"].attrs["nr events"] = self._events_seen["centroided"].count
        self._file["timing/timepix"].attrs["nr events"] = self._tables["timing/timepix"].total_rows

    def close(self, complete: bool = True) -> None:
        """Write everything; set ``complete`` (last, after a flush) and close the file."""
        if self.closed:
            return
        try:
            self.flush()
            if complete:
                self._file.attrs["complete"] = True
                self._file.flush()
        finally:
            if self._chunks is not None:
                self._chunks.close()
            self._file.close()
            self.closed = True

    def abort(self) -> None:
        """Close without marking the file complete (buffered rows are still written if possible)."""
        if self.closed:
            return
        try:
            self.flush()
        except Exception:
            pass
        finally:
            if self._chunks is not None:
                try:
                    self._chunks.close()
                except Exception:
                    pass
            self._file.close()
            self.closed = True

    def __enter__(self) -> "Hdf5Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(True)
        else:
            self.abort()


def append_to_file(path: str | os.PathLike, tables: Mapping[str, Mapping[str, np.ndarray]],
                   attrs: Mapping[str, Any] | None = None, compression: str = DEFAULT_COMPRESSION,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Append file columns (``{table: {dataset key: array}}``, file units) to ``path``.

    Creates the file and any missing group/dataset of the layout first. ``complete`` is
    cleared while writing and set again when this batch is on disk (pymepix-style
    one-call-per-batch saving, see ``RawFileSampler.saveToHDF5``).
    """
    import h5py

    compression_kwargs(compression)  # an unknown choice fails before the file is touched
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
        f.attrs.setdefault("layout_version", LAYOUT_VERSION)
        f.attrs.setdefault("software", "tango-tpx")
        f.attrs.setdefault("software_version", _software_version())
        for name, desc in GROUPS.items():
            g = f.require_group(name)
            if "description" not in g.attrs:
                g.attrs["description"] = desc
        for spec in DATASETS.values():
            if spec.path not in f:
                d = f.create_dataset(spec.path, shape=(0,), maxshape=(None,), dtype=spec.dtype,
                                     chunks=(chunk_rows,), **compression_kwargs(compression, spec.dtype, spec.path))
                d.attrs["unit"] = spec.unit
                d.attrs["description"] = spec.description
        for table, cols in tables.items():
            specs = TABLES[table]
            missing = set(specs) - set(cols)
            if missing:
                raise KeyError(f"{table}: missing columns {sorted(missing)}")
            n = {len(np.asarray(cols[k])) for k in specs}
            if len(n) != 1:
                raise ValueError(f"{table}: columns of unequal length {sorted(n)}")
            for k, spec in specs.items():
                d = f[spec.path]
                a = np.asarray(cols[k]).astype(spec.dtype, copy=False)
                start = d.shape[0]
                d.resize((start + len(a),))
                d[start:] = a
        for key, value in dict(attrs or {}).items():
            f.attrs[key] = _attr_value(value)
        f.flush()
        f.attrs["complete"] = True


class _DistinctCounter:
    """Counts distinct values of a stream of non-decreasing integer arrays (trigger numbers)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: int | None = None

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values)
        if not len(v):
            return
        changes = int(np.count_nonzero(v[1:] != v[:-1]))
        self.count += changes + (0 if self.last is not None and int(v[0]) == self.last else 1)
        self.last = int(v[-1])


def _software_version() -> str:
    try:
        from importlib.metadata import version

        return version("tango-tpx")
    except Exception:
        return "unknown"


__all__ = [
    "LAYOUT_VERSION", "DEFAULT_CHUNK_ROWS", "COMPRESSIONS", "DatasetSpec", "GROUPS", "RAW", "CENTROIDED",
    "TIMEPIX", "TRAINID", "TRIGGER1", "TRIGGER2", "TABLES", "DATASETS", "events_columns",
    "centroids_columns", "trigger_table_columns", "trigger_edge_columns", "compression_kwargs",
    "Hdf5Writer", "append_to_file", "read_table", "is_complete", "check_layout",
]
