"""HDF5 compression choices, and the default one's fast path: deflate chunks compressed in
parallel threads and written with h5py's direct chunk write.

``deflate`` (the default) is HDF5's built-in shuffle + deflate (gzip) filter pair: every
HDF5 reader opens it (plain h5py, h5dump, MATLAB, ROOT, ...) without ``hdf5plugin``. HDF5's
own deflate runs zlib in the writing thread (~10x slower than Blosc/LZ4); here the chunks
bypass it: each chunk of 2- or 4-byte values is byte-shuffled (a numba kernel), and
every chunk is compressed at level 1 by the fastest deflate library available (``isal`` > ``zlib-ng`` >
``libdeflate`` > ``zlib``) on a small thread pool (these libraries release the GIL), then
stored with ``write_direct_chunk`` in dataset order. The bytes on disk are exactly what
HDF5's shuffle + deflate filters would produce (a zlib stream of the shuffled chunk), so
any reader decodes them with its built-in filters.

The Blosc/LZ4/zstd choices (``blosc-lz4``, ``blosc-zstd``, ``lz4``) need ``import
hdf5plugin`` (or ``HDF5_PLUGIN_PATH``) in the reader; ``lzf`` is readable by h5py only.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numba
import numpy as np

#: Compression choices (``tango-tpx convert --compression``).
COMPRESSIONS = ("deflate", "blosc-lz4", "blosc-zstd", "lz4", "lzf", "none")
#: The default: readable by every HDF5 reader.
DEFAULT_COMPRESSION = "deflate"
#: Choices whose files a reader opens only after ``import hdf5plugin``.
NEEDS_HDF5PLUGIN = frozenset({"blosc-lz4", "blosc-zstd", "lz4"})
#: zlib level of the deflate chunks (1: fastest; higher levels gain ~1 % here).
DEFLATE_LEVEL = 1


def shuffles(dtype: Any) -> bool:
    """Whether the deflate pipeline byte-shuffles a column of ``dtype``: 2- and 4-byte values
    only (8-byte columns here, trigger numbers and times, compress as well or better and
    2-3x faster unshuffled: measured on simulator and real captures)."""
    return np.dtype(dtype).itemsize in (2, 4)


#: Datasets the deflate choice stores unfiltered: ToT-weighted means (float mantissas of
#: noise) deflate by only ~1.2-1.4x at ~10-30 ns per row, the costliest part of the output.
DEFLATE_PLAIN = frozenset({"centroided/x", "centroided/y", "centroided/tof", "centroided/tot avg"})


def dataset_kwargs(compression: str | None, dtype: Any = np.uint16, path: str = "") -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments (the filter pipeline) for a compression choice,
    a column ``dtype`` and the dataset ``path`` (see :data:`DEFLATE_PLAIN`)."""
    if compression == "deflate":
        if path in DEFLATE_PLAIN:
            return {}
        return {"compression": "gzip", "compression_opts": DEFLATE_LEVEL, "shuffle": shuffles(dtype)}
    if compression in ("blosc-lz4", "blosc-zstd"):
        import hdf5plugin

        cname = compression.split("-", 1)[1]
        return dict(hdf5plugin.Blosc(cname=cname, clevel=1 if cname == "lz4" else 3,
                                     shuffle=hdf5plugin.Blosc.SHUFFLE))
    if compression == "lz4":
        import hdf5plugin

        return dict(hdf5plugin.LZ4())
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression in ("none", None, ""):
        return {}
    raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")


def _deflate_function() -> tuple[str, Callable[[Any], bytes]]:
    """(library name, zlib-format compress(buffer) at DEFLATE_LEVEL) of the fastest library present."""
    try:
        from isal import isal_zlib

        return "isal", lambda b: isal_zlib.compress(b, DEFLATE_LEVEL)
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        return "zlib-ng", lambda b: zlib_ng.compress(b, DEFLATE_LEVEL)
    except ImportError:
        pass
    try:
        import deflate

        return "libdeflate", lambda b: deflate.zlib_compress(b, DEFLATE_LEVEL)
    except ImportError:
        pass
    import zlib

    return "zlib", lambda b: zlib.compress(b, DEFLATE_LEVEL)


DEFLATE_LIBRARY, _compress = _deflate_function()


@numba.njit(cache=True, nogil=True)
def _shuffle2(src: np.ndarray, out: np.ndarray) -> None:
    """HDF5 byte shuffle of 2-byte values (``src``: their bytes): byte j of value i goes to
    ``out[j * n + i]``."""
    n = out.shape[0] // 2
    for i in range(n):
        out[i] = src[2 * i]
        out[n + i] = src[2 * i + 1]


@numba.njit(cache=True, nogil=True)
def _shuffle4(src: np.ndarray, out: np.ndarray) -> None:
    """HDF5 byte shuffle of 4-byte values (``src``: their bytes)."""
    n = out.shape[0] // 4
    for i in range(n):
        out[i] = src[4 * i]
        out[n + i] = src[4 * i + 1]
        out[2 * n + i] = src[4 * i + 2]
        out[3 * n + i] = src[4 * i + 3]


def chunk_bytes(values: np.ndarray, chunk_rows: int, out: np.ndarray | None = None) -> np.ndarray:
    """``values`` (at most ``chunk_rows`` of a 1-D numeric column) padded with zeros to a
    whole chunk, byte-shuffled as HDF5's shuffle filter does when :func:`shuffles` says so:
    the bytes the deflate filter sees, in ``out`` (uint8, ``chunk_rows`` x item size) or a
    new array."""
    values = np.ascontiguousarray(values)
    size = values.dtype.itemsize
    if size not in (1, 2, 4, 8) or values.ndim != 1 or len(values) > chunk_rows:
        raise ValueError(f"cannot store {values.dtype} values of shape {values.shape} as a {chunk_rows}-row chunk")
    if out is None or out.dtype != np.uint8 or out.size != chunk_rows * size:
        out = np.empty(chunk_rows * size, np.uint8)
    src = values.view(np.uint8)
    if not shuffles(values.dtype):
        out[:src.size] = src
        out[src.size:] = 0
        return out
    if len(values) < chunk_rows:
        padded = np.zeros(chunk_rows * size, np.uint8)
        padded[:src.size] = src
        src = padded
    (_shuffle2 if size == 2 else _shuffle4)(src, out)
    return out


def deflate_chunk(values: np.ndarray, chunk_rows: int) -> bytes:
    """The stored bytes of one chunk under the deflate pipeline of :func:`dataset_kwargs`."""
    return _compress(chunk_bytes(values, chunk_rows))


def default_threads() -> int:
    """Compression threads: the CPUs this process may use, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n))


class ChunkWriter:
    """Deflate chunks on a thread pool and store them in order with ``write_direct_chunk``.

    :meth:`put` shuffles a chunk (in the calling thread: the caller's arrays may be reused
    as soon as it returns) and queues its compression; finished chunks are written, in
    the order they were put, by later :meth:`put` calls and by :meth:`drain`. At most
    ``max_pending`` chunks are queued (bounded memory: about that many chunks' bytes).
    h5py is only called from the thread that calls :meth:`put` / :meth:`drain`.
    """

    def __init__(self, threads: int | None = None, max_pending: int | None = None):
        self.threads = default_threads() if threads is None else max(0, int(threads))
        self.max_pending = max_pending or 8 * self.threads + 16
        # 0 threads: compress in the calling thread (no hand-over, no copies kept waiting)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tango-tpx-deflate") if self.threads else None
        self._pending: deque[tuple[Any, int, Future, np.ndarray]] = deque()
        # chunk buffers whose compression is done, by size: reused (no allocation and page
        # faults per chunk)
        self._free: dict[int, list[np.ndarray]] = {}
        self.bytes_in = 0
        self.bytes_out = 0

    def put(self, dset: Any, row: int, values: np.ndarray, chunk_rows: int) -> None:
        """Queue ``values`` (one chunk's rows, at most ``chunk_rows``) as the chunk that
        starts at ``row`` (a multiple of ``chunk_rows``) of ``dset``, already resized."""
        nbytes = chunk_rows * values.dtype.itemsize
        free = self._free.get(nbytes)
        buf = chunk_bytes(values, chunk_rows, free.pop() if free else None)
        self.bytes_in += buf.nbytes
        if self._pool is None:
            data = _compress(buf)
            self.bytes_out += len(data)
            dset.id.write_direct_chunk((row,), data)
            self._release(buf)
            return
        self._pending.append((dset, row, self._pool.submit(_compress, buf), buf))
        self._write_ready(block=len(self._pending) > self.max_pending)

    def _write_ready(self, block: bool) -> None:
        while self._pending and (block or self._pending[0][2].done()):
            dset, row, fut, buf = self._pending.popleft()
            data = fut.result()
            self.bytes_out += len(data)
            dset.id.write_direct_chunk((row,), data)
            self._release(buf)
            block = block and len(self._pending) > self.max_pending // 2

    def _release(self, buf: np.ndarray) -> None:
        """Keep a compressed chunk's buffer for the next chunk of its size (a few per size)."""
        free = self._free.setdefault(buf.nbytes, [])
        if len(free) < 4:
            free.append(buf)

    def drain(self) -> None:
        """Write every queued chunk (waits for their compression)."""
        while self._pending:
            self._write_ready(block=True)

    def close(self) -> None:
        """Drain and stop the threads; queued chunks are dropped if draining fails."""
        try:
            self.drain()
        finally:
            self._pending.clear()
            self._free.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)


__all__ = ["COMPRESSIONS", "DEFAULT_COMPRESSION", "NEEDS_HDF5PLUGIN", "DEFLATE_LIBRARY", "DEFLATE_PLAIN", "dataset_kwargs",
           "shuffles", "chunk_bytes", "deflate_chunk", "default_threads", "ChunkWriter"]
