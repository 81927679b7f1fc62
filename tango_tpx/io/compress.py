"""HDF5 compression choices, and the default one's fast path: deflate chunks built byte plane
by byte plane and written with h5py's direct chunk write.

``deflate`` (the default) is HDF5's built-in shuffle + deflate (gzip) filter pair: every
HDF5 reader opens it (plain h5py, h5dump, MATLAB, ROOT, ...) without ``hdf5plugin``. HDF5's
own deflate runs zlib over every byte in the writing thread (~10x slower than Blosc/LZ4);
here the chunks bypass it. Each chunk of 2- or 4-byte values is byte-shuffled (a numba
kernel) into byte planes; a plane that deflate would at least halve (judged from a 4 KiB
sample: constant high bytes, small counts) is deflated at level 1 by the fastest library
available (``isal`` > ``zlib-ng`` > ``zlib``), a plane of nearly random bytes (low bytes of
coordinates, float mantissas) goes into the same zlib stream as *stored* deflate blocks, a
copy. The result is one standard zlib stream of the shuffled chunk, the bytes HDF5's shuffle
+ deflate filters decode, stored with ``write_direct_chunk``: about as small as deflating
everything, at about half its CPU, and cheaper than Blosc/LZ4
(``benchmarks/convert.py`` measures both). The chunks are compressed in the writing thread,
or on a few threads when spare CPUs exist (:func:`default_threads`).

The Blosc/LZ4/zstd choices (``blosc-lz4``, ``blosc-zstd``, ``lz4``) need ``import
hdf5plugin`` (or ``HDF5_PLUGIN_PATH``) in the reader; ``lzf`` is readable by h5py only.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

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


def dataset_kwargs(compression: str | None, dtype: Any = np.uint16, path: str = "") -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments (the filter pipeline) for a compression choice,
    a column ``dtype`` and the dataset ``path`` (every dataset of a choice gets the same
    filters today; the path is there for per-dataset choices)."""
    if compression == "deflate":
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


def _zlib_module() -> tuple[str, Any]:
    """(library name, module) of the fastest zlib-API deflate library present: ``isal`` >
    ``zlib-ng`` > ``zlib`` (each has ``compress(data, level, wbits)``, ``compressobj`` and
    ``adler32``)."""
    try:
        from isal import isal_zlib

        return "isal", isal_zlib
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        return "zlib-ng", zlib_ng
    except ImportError:
        pass
    import zlib

    return "zlib", zlib


DEFLATE_LIBRARY, _zlib = _zlib_module()

#: A byte plane is deflated only if it is expected to shrink at least this much; the others
#: go into the stream as stored blocks (a copy). Deflating a plane of nearly random bytes
#: (the low byte of a pixel coordinate, the mantissa of a mean) costs 2-5 ns/byte at level 1
#: for a few % smaller files; a plane of constant bytes costs ~0.2 ns/byte and vanishes.
PLANE_MIN_RATIO = 2.0
#: Bytes of the sample that decides a plane, taken in :data:`PLANE_SAMPLE_PIECES` pieces
#: spread over the plane (one piece from its start misjudges ~5 % of the time columns: a long
#: event's spread of times). A byte plane of shuffled values is judged by the sample's byte
#: entropy (Huffman coding reaches it; ~5 us); an unshuffled chunk, whose gain is in repeated
#: strings, by deflating the sample (~35 us, ~3 % of deflating a 1 MiB chunk).
PLANE_SAMPLE = 4096
PLANE_SAMPLE_PIECES = 4
#: zlib header of the streams: deflate, 32 KiB window, "fastest" level, no dictionary.
_ZLIB_HEAD = b"\x78\x01"
#: Deflate stored blocks hold at most this many bytes.
_STORED_MAX = 65535


def _stored_blocks(data: memoryview, final: bool, parts: list) -> None:
    """Append ``data`` to ``parts`` as deflate stored blocks (at a byte boundary: 3 header
    bits padded to a byte, LEN, ~LEN, the bytes); ``final``: the last one ends the stream."""
    n = len(data)
    for i in range(0, n, _STORED_MAX):
        piece = data[i:i + _STORED_MAX]
        last = final and i + _STORED_MAX >= n
        parts.append(struct.pack("<BHH", 1 if last else 0, len(piece), len(piece) ^ 0xFFFF))
        parts.append(piece)


def _piece_starts(n: int, pieces: int, piece: int) -> list[int]:
    """Offsets of ``pieces`` pieces of ``piece`` bytes spread evenly over ``n`` bytes."""
    return [(n - piece) * k // (pieces - 1) for k in range(pieces)]


@numba.njit(cache=True, nogil=True)
def _sample_entropy(plane: np.ndarray, pieces: int, piece: int) -> float:
    """Byte entropy (bits per byte, 0..8) of ``pieces`` pieces of ``piece`` bytes spread over
    ``plane`` (uint8; all of it when shorter)."""
    hist = np.zeros(256, np.int64)
    n = plane.shape[0]
    if n <= pieces * piece:
        for i in range(n):
            hist[plane[i]] += 1
        total = n
    else:
        for k in range(pieces):
            a = (n - piece) * k // (pieces - 1)
            for i in range(a, a + piece):
                hist[plane[i]] += 1
        total = pieces * piece
    h = 0.0
    for c in hist:
        if c:
            p = c / total
            h -= p * np.log2(p)
    return h


def deflate_bytes(buf: np.ndarray | bytes, planes: int = 1) -> bytes:
    """One zlib stream of ``buf`` (what HDF5's deflate filter stores and any zlib inflates).

    ``buf`` is split into ``planes`` equal byte planes (the item size of a byte-shuffled
    chunk, else 1). A plane is deflated at :data:`DEFLATE_LEVEL` when a
    :data:`PLANE_SAMPLE`-byte sample of it says it shrinks by :data:`PLANE_MIN_RATIO` or
    more, otherwise it is stored uncompressed inside the stream; neighbouring planes with the
    same choice form one segment. Deflated segments are raw deflate streams of a fresh compressor
    (no reference before their start), closed by a sync flush except the last one.
    """
    mv = memoryview(buf).cast("B")
    n = len(mv)
    if n == 0:
        return _zlib.compress(b"", DEFLATE_LEVEL)
    if planes < 1 or n % planes:
        planes = 1
    step = n // planes
    piece = PLANE_SAMPLE // PLANE_SAMPLE_PIECES
    if planes > 1:
        arr = np.frombuffer(mv, np.uint8)
        deflated = [_sample_entropy(arr[j * step:(j + 1) * step], PLANE_SAMPLE_PIECES, piece) * PLANE_MIN_RATIO <= 8.0
                    for j in range(planes)]
    else:
        if n <= PLANE_SAMPLE:
            sample = mv
        else:
            sample = b"".join(mv[a:a + piece] for a in _piece_starts(n, PLANE_SAMPLE_PIECES, piece))
        deflated = [len(_zlib.compress(sample, DEFLATE_LEVEL, -15)) * PLANE_MIN_RATIO <= len(sample)]
    if all(deflated):  # one segment: the library's own zlib stream (its Adler-32 comes free)
        return _zlib.compress(mv, DEFLATE_LEVEL)
    parts: list = [_ZLIB_HEAD]
    j = 0
    while j < planes:
        k = j + 1
        while k < planes and deflated[k] == deflated[j]:
            k += 1
        seg, last = mv[j * step:k * step], k == planes
        if not deflated[j]:
            _stored_blocks(seg, last, parts)
        elif last:
            parts.append(_zlib.compress(seg, DEFLATE_LEVEL, -15))
        else:
            c = _zlib.compressobj(DEFLATE_LEVEL, _zlib.DEFLATED, -15)
            parts.append(c.compress(seg))
            parts.append(c.flush(_zlib.Z_SYNC_FLUSH))
        j = k
    parts.append(struct.pack(">I", _zlib.adler32(mv) & 0xFFFFFFFF))
    return b"".join(parts)


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
    return deflate_bytes(chunk_bytes(values, chunk_rows), _planes(values.dtype))


def _planes(dtype: Any) -> int:
    """Byte planes of a chunk of ``dtype`` values as the deflate pipeline stores it."""
    size = np.dtype(dtype).itemsize
    return size if shuffles(dtype) else 1


def default_threads(busy_processes: int = 0) -> int:
    """Compression threads: the CPUs this process may use less ``busy_processes`` (the
    processes that already keep CPUs busy, e.g. a converter's workers), at most 4; 0 means
    compress in the writing thread. On CPUs that are all busy, a thread only adds its
    hand-over cost (measured: +10 ns of CPU per hit, ~25 % of the writer's CPU)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(0, min(4, n - max(0, int(busy_processes))))


class ChunkWriter:
    """Deflate chunks (:func:`deflate_bytes`) on a thread pool, or in the calling thread
    (``threads=0``), and store them in order with ``write_direct_chunk``.

    :meth:`put` shuffles a chunk (in the calling thread: the caller's arrays may be reused
    as soon as it returns) and queues its compression; finished chunks are written, in
    the order they were put, by later :meth:`put` calls and by :meth:`drain`. At most
    ``max_pending`` chunks are queued (bounded memory: about that many chunks' bytes).
    h5py is only called from the thread that calls :meth:`put` / :meth:`drain`.
    """

    def __init__(self, threads: int | None = None, max_pending: int | None = None):
        self.threads = max(1, default_threads()) if threads is None else max(0, int(threads))
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
        planes = _planes(values.dtype)
        whole = len(values) == chunk_rows and values.flags.c_contiguous
        if self._pool is None and planes == 1 and whole:
            # a whole unshuffled chunk compressed in this thread: straight from the caller's array
            self.bytes_in += nbytes
            data = deflate_bytes(values, 1)
            self.bytes_out += len(data)
            dset.id.write_direct_chunk((row,), data)
            return
        free = self._free.get(nbytes)
        buf = chunk_bytes(values, chunk_rows, free.pop() if free else None)
        self.bytes_in += buf.nbytes
        if self._pool is None:
            data = deflate_bytes(buf, planes)
            self.bytes_out += len(data)
            dset.id.write_direct_chunk((row,), data)
            self._release(buf)
            return
        self._pending.append((dset, row, self._pool.submit(deflate_bytes, buf, planes), buf))
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


__all__ = ["COMPRESSIONS", "DEFAULT_COMPRESSION", "NEEDS_HDF5PLUGIN", "DEFLATE_LIBRARY", "PLANE_MIN_RATIO",
           "dataset_kwargs", "shuffles", "chunk_bytes", "deflate_bytes", "deflate_chunk", "default_threads",
           "ChunkWriter"]
