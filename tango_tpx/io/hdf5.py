"""HDF5 output layout of tango-tpx: the one place that names every dataset, its dtype and unit.

The group and dataset names are those of pymepix (CFEL-CMI) so that user scripts written for
pymepix's ``RawFileSampler`` output keep working; the dtypes are honest and every dataset
carries its true ``unit`` attribute. See ``docs/hdf5-layout.md`` for the table.

Units inside tango-tpx are int64 fine units of 25/4096 ns (times) and uint16 counts of 25 ns
(ToT); the conversion to the file units (s for ToF and trigger times, ns for ToT and the
time stamps) happens only here, in :func:`events_columns` & co.

Datasets are 1-D, resizable, chunked (``chunk_rows`` rows per chunk) and compressed by
default with HDF5's built-in shuffle + deflate filters, readable by every HDF5 reader without
``hdf5plugin``; the chunks are compressed on a thread pool and written directly (see
:mod:`tango_tpx.io.compress`, which also lists the Blosc/LZ4/zstd choices).

The file attribute ``complete`` is written ``False`` when the file is created and set
``True`` only by a successful :meth:`Hdf5Writer.close`, after all data are on disk.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tango_tpx.io.compress import COMPRESSIONS, DEFAULT_COMPRESSION, ChunkWriter, dataset_kwargs
from tango_tpx.tpx3.units import UNIT_NS

#: Version of this layout (bump when a dataset changes name, dtype or unit).
LAYOUT_VERSION = "1.0"
#: Rows per HDF5 chunk (1 MiB for an 8-byte column).
DEFAULT_CHUNK_ROWS = 1 << 17

#: Fine units (25/4096 ns) -> s.
_UNIT_S = UNIT_NS * 1e-9
#: ToT count -> ns.
_TOT_NS = 25


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the layout: HDF5 path, numpy dtype, unit attribute, description."""

    path: str
    dtype: np.dtype
    unit: str
    description: str

    @property
    def group(self) -> str:
        return self.path.rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


def _spec(path: str, dtype, unit: str, description: str) -> DatasetSpec:
    return DatasetSpec(path, np.dtype(dtype), unit, description)


#: Group path -> description (also written as the group's ``description`` attribute).
GROUPS: dict[str, str] = {
    "raw": "time-walk corrected pixel hits inside the event window, one row per hit, sorted by ToA",
    "centroided": "clusters of hits (centroids), one row per cluster, ordered by trigger nr",
    "timing": "timing information from Timepix and facility",
    "timing/timepix": "every TDC1 rising edge (trigger) of Timepix, one row per trigger",
    "timing/trainID": "facility train IDs (European XFEL timing receiver, see tango_tpx.trainid)",
    "triggers": "triggering information from Timepix",
    "triggers/trigger1": "every TDC1 edge in stream order; negative time = falling edge",
    "triggers/trigger2": "every TDC2 edge in stream order; negative time = falling edge",
}

#: Every dataset, grouped by table (tables are appended row-aligned).
RAW: dict[str, DatasetSpec] = {
    "trigger nr": _spec("raw/trigger nr", np.int64, "", "global event number (0-based TDC1 rising edge index)"),
    "x": _spec("raw/x", np.uint16, "pixel", "column"),
    "y": _spec("raw/y", np.uint16, "pixel", "row"),
    "tof": _spec("raw/tof", np.float64, "s", "time of flight = ToA - trigger time (time-walk corrected)"),
    "tot": _spec("raw/tot", np.uint32, "ns", "time over threshold (multiple of 25 ns)"),
}
CENTROIDED: dict[str, DatasetSpec] = {
    "trigger nr": _spec("centroided/trigger nr", np.int64, "", "global event number of the cluster"),
    "x": _spec("centroided/x", np.float32, "pixel", "ToT-weighted mean column"),
    "y": _spec("centroided/y", np.float32, "pixel", "ToT-weighted mean row"),
    "tof": _spec("centroided/tof", np.float64, "s", "ToT-weighted mean time of flight (centroid time-walk corrected)"),
    "tot avg": _spec("centroided/tot avg", np.float32, "ns", "mean time over threshold in cluster"),
    "tot max": _spec("centroided/tot max", np.uint32, "ns", "maximum of time over threshold in cluster"),
    "tot sum": _spec("centroided/tot sum", np.uint32, "ns", "sum of time over threshold in cluster"),
    "clustersize": _spec("centroided/clustersize", np.uint32, "hits", "number of hits in cluster"),
}
TIMEPIX: dict[str, DatasetSpec] = {
    "trigger nr": _spec("timing/timepix/trigger nr", np.int64, "", "global event number"),
    "event trigger": _spec("timing/timepix/event trigger", np.float64, "s",
                           "trigger (TDC1 rising edge) time on the Timepix clock"),
    "timestamp": _spec("timing/timepix/timestamp", np.uint64, "ns",
                       "ns since the epoch (pymepix): the raw file header's wall clock plus 'trigger time' "
                       "(input without a header: 'trigger time')"),
    "trigger time": _spec("timing/timepix/trigger time", np.uint64, "ns",
                          "trigger time on the Timepix clock, rounded to integer ns"),
    "tdc counter": _spec("timing/timepix/tdc counter", np.uint16, "",
                         "12-bit TDC trigger counter of the edge (gaps = lost triggers)"),
}
TRAINID: dict[str, DatasetSpec] = {
    "timestamp": _spec("timing/trainID/timestamp", np.uint64, "ns", "host wall clock (time.time_ns) at reception"),
    "train id": _spec("timing/trainID/train id", np.uint64, "", "facility train ID"),
    "beam mode": _spec("timing/trainID/beam mode", np.uint32, "", "facility beam mode word"),
}
TRIGGER1: dict[str, DatasetSpec] = {
    "time": _spec("triggers/trigger1/time", np.float64, "s",
                  "TDC1 edge time on the Timepix clock; negative = falling edge"),
}
TRIGGER2: dict[str, DatasetSpec] = {
    "time": _spec("triggers/trigger2/time", np.float64, "s",
                  "TDC2 edge time on the Timepix clock; negative = falling edge"),
}

#: Table name -> its datasets.
TABLES: dict[str, dict[str, DatasetSpec]] = {
    "raw": RAW,
    "centroided": CENTROIDED,
    "timing/timepix": TIMEPIX,
    "timing/trainID": TRAINID,
    "triggers/trigger1": TRIGGER1,
    "triggers/trigger2": TRIGGER2,
}
#: Every dataset spec by path.
DATASETS: dict[str, DatasetSpec] = {s.path: s for t in TABLES.values() for s in t.values()}


# --------------------------------------------------------------------------------------------
# pure conversions: tango-tpx containers (fine units, ToT counts) -> file columns
# --------------------------------------------------------------------------------------------

def events_columns(events: Any, out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``Events`` (trigger_nr, x, y, tof [fine units], tot [counts]) -> ``raw`` columns.

    tof becomes float64 s, tot uint32 ns; x and y stay uint16 pixels. With ``out`` (arrays
    of the file dtypes, at least ``len(events)`` long) the columns are written into it and
    views of the written part are returned.
    """
    if out is None:
        return {
            "trigger nr": np.asarray(events.trigger_nr, dtype=np.int64),
            "x": np.asarray(events.x, dtype=np.uint16),
            "y": np.asarray(events.y, dtype=np.uint16),
            "tof": np.asarray(events.tof, dtype=np.int64) * _UNIT_S,
            "tot": np.asarray(events.tot, dtype=np.uint32) * np.uint32(_TOT_NS),
        }
    n = len(events.x)
    cols = {k: out[k][:n] for k in RAW}
    cols["trigger nr"][:] = events.trigger_nr
    cols["x"][:] = events.x
    cols["y"][:] = events.y
    np.multiply(events.tof, _UNIT_S, out=cols["tof"])
    np.multiply(events.tot, np.uint32(_TOT_NS), out=cols["tot"], dtype=np.uint32)
    return cols


def centroids_columns(centroids: Any) -> dict[str, np.ndarray]:
    """``Centroids`` (tof fine units, tot_* counts) -> ``centroided`` columns (s, ns)."""
    tot_sum = np.asarray(centroids.tot_sum, dtype=np.uint32)
    return {
        "trigger nr": np.asarray(centroids.trigger_nr, dtype=np.int64),
        "x": np.asarray(centroids.x, dtype=np.float32),
        "y": np.asarray(centroids.y, dtype=np.float32),
        "tof": np.asarray(centroids.tof, dtype=np.int64) * _UNIT_S,
        "tot avg": np.asarray(centroids.tot_avg, dtype=np.float32) * np.float32(_TOT_NS),
        "tot max": np.asarray(centroids.tot_max, dtype=np.uint32) * np.uint32(_TOT_NS),
        "tot sum": tot_sum * np.uint32(_TOT_NS),
        "clustersize": np.asarray(centroids.size, dtype=np.uint32),
    }


def trigger_table_columns(table: Any, start_time_ns: int = 0) -> dict[str, np.ndarray]:
    """``TriggerTable`` (trigger_nr, time [fine units], counter) -> ``timing/timepix`` columns;
    ``start_time_ns``: the raw file header's wall clock (ns since the epoch), added to the
    trigger time for ``timestamp``."""
    t = np.asarray(table.time, dtype=np.int64)
    # integer ns, rounded half up, without going through float for large times
    ns = np.maximum((t * 25 + 2048) // 4096, 0).astype(np.uint64)
    return {
        "trigger nr": np.asarray(table.trigger_nr, dtype=np.int64),
        "event trigger": t * _UNIT_S,
        "timestamp": ns + np.uint64(start_time_ns),
        "trigger time": ns,
        "tdc counter": np.asarray(table.counter, dtype=np.uint16),
    }


def trigger_edge_columns(triggers: Any) -> dict[int, np.ndarray]:
    """``Triggers`` (channel, rising, time [fine units]) -> {1: trigger1 s, 2: trigger2 s}.

    Falling edges get a negative sign (pymepix convention). Order of the stream is kept.
    """
    ch = np.asarray(triggers.channel)
    t = np.asarray(triggers.time, dtype=np.int64) * _UNIT_S
    t = np.where(np.asarray(triggers.rising, dtype=bool), t, -t)
    return {1: t[ch == 1], 2: t[ch == 2]}


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# reading helpers
# --------------------------------------------------------------------------------------------

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


__all__ = [
    "LAYOUT_VERSION", "DEFAULT_CHUNK_ROWS", "COMPRESSIONS", "DatasetSpec", "GROUPS", "RAW", "CENTROIDED",
    "TIMEPIX", "TRAINID", "TRIGGER1", "TRIGGER2", "TABLES", "DATASETS", "events_columns",
    "centroids_columns", "trigger_table_columns", "trigger_edge_columns", "compression_kwargs",
    "Hdf5Writer", "append_to_file", "read_table", "is_complete", "check_layout",
]
