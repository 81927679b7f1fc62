"""Raw and ASI .tpx3 files of Timepix3/SPIDR words, and the 2x2 quad pixel layout.

File kinds
----------
* pymepix ``.raw`` (Raw2Disk): an optional 8-byte little-endian ``time.time_ns()`` header,
  then UDP payloads back to back (little-endian uint64 words, no packet boundaries).
  The header is detected, not assumed: a first word whose header nibble is not a packet
  type (0x4, 0x6, 0x7, 0xA, 0xB) and whose value is a plausible time_ns (years 2000..2100).
* ASI/Serval ``.tpx3``: chunks of an 8-byte header (b'TPX3', chip byte 4, mode byte 5,
  uint16 chunk size in bytes 6..7) followed by that many bytes of words. Detected by the
  magic at offset 0. :func:`iter_words` yields the chunk headers too (the decoder frames).
* a ``.raw`` recording of a .tpx3-framed (quad) stream: the pymepix header, then chunks;
  detected by the magic right after the header (framing 'tpx3', kind 'raw').

Quad layout (2x2 chips in a 516 x 516 frame, 2-pixel gaps, chips ``2 1 / 3 0``):
chip0: X = x + 258, Y = 255 - y + 258; chip1: X = 255 - x + 258, Y = y;
chip2: X = 255 - x, Y = y; chip3: X = x, Y = 255 - y + 258.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numba
import numpy as np

from .encode import TPX3_MAGIC

__all__ = [
    "FileInfo",
    "inspect_file",
    "iter_words",
    "read_words",
    "RawFileWriter",
    "Tpx3FileWriter",
    "frame_tpx3",
    "quad_map",
    "quad_to_frame",
    "frame_to_quad",
    "QUAD_SIZE",
    "CHIP_SIZE",
]

CHIP_SIZE: int = 256
QUAD_SIZE: int = 516
_QUAD_OFFSET = 258  # 256 pixels + 2-pixel gap
#: header nibbles of real packets (pixel 0xA/0xB, TDC 0x6, global time 0x4, control 0x7)
VALID_PACKET_NIBBLES = frozenset({0x4, 0x6, 0x7, 0xA, 0xB})
#: plausible pymepix header times: 2000-01-01 .. 2100-01-01 in ns since the epoch
_TIME_NS_MIN = 946_684_800 * 10**9
_TIME_NS_MAX = 4_102_444_800 * 10**9
#: largest chunk payload of a .tpx3 chunk (uint16 size, whole words)
MAX_CHUNK_BYTES = 0xFFF8


@dataclass(frozen=True)
class FileInfo:
    """What :func:`inspect_file` found.

    kind: 'raw' (pymepix) or 'tpx3' (ASI); framing: the Decoder framing to use ('raw'|'tpx3';
    'tpx3' also for a pymepix-headered recording of a quad stream);
    header_time_ns: the pymepix header time (ns since the epoch) or None;
    data_offset: bytes before the first word; n_words: whole 8-byte words after it
    (chunk headers included for .tpx3); trailing_bytes: bytes of a trailing partial word (not decoded).
    """

    path: str
    kind: str
    framing: str
    header_time_ns: int | None
    data_offset: int
    n_words: int
    trailing_bytes: int

    @property
    def size_bytes(self) -> int:
        return self.data_offset + 8 * self.n_words + self.trailing_bytes


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a directory, not a raw/.tpx3 file")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    return p


def _looks_like_header(first: int) -> bool:
    nibble = (first >> 60) & 0xF
    return nibble not in VALID_PACKET_NIBBLES and _TIME_NS_MIN <= first <= _TIME_NS_MAX


def inspect_file(path: str | os.PathLike) -> FileInfo:
    """Identify a raw/.tpx3 file: kind, framing, pymepix header, word count.

    Raises FileNotFoundError / IsADirectoryError, and ValueError for an empty file or one
    shorter than one word (the path is in every message).
    """
    p = _check_path(path)
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{p}: empty file")
    if size < 8:
        raise ValueError(f"{p}: {size} bytes, shorter than one 8-byte word")
    with open(p, "rb") as f:
        head = f.read(16)
    if head[:4] == b"TPX3":
        return FileInfo(str(p), "tpx3", "tpx3", None, 0, size // 8, size % 8)
    first = int.from_bytes(head[:8], "little")
    if _looks_like_header(first):
        payload = size - 8
        # a recording of a .tpx3-framed (quad) stream: the pymepix header, then chunks
        chunk_bytes = int.from_bytes(head[14:16], "little")
        framing = "tpx3" if head[8:12] == b"TPX3" and chunk_bytes > 0 and chunk_bytes % 8 == 0 else "raw"
        return FileInfo(str(p), "raw", framing, first, 8, payload // 8, payload % 8)
    return FileInfo(str(p), "raw", "raw", None, 0, size // 8, size % 8)


def iter_words(
    path: str | os.PathLike,
    chunk_words: int = 1 << 20,
    start_word: int = 0,
    stop_word: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream the words of a raw/.tpx3 file as uint64 arrays of at most ``chunk_words``.

    Bounded memory (one chunk at a time, read with ``readinto``), so files larger than RAM
    are fine. ``start_word``/``stop_word`` index words after the pymepix header (a .tpx3
    file's chunk-header words count as words and are yielded). A trailing partial word is
    not yielded. Each yielded array is freshly allocated (safe to keep).
    """
    if chunk_words <= 0:
        raise ValueError("chunk_words must be > 0")
    info = inspect_file(path)
    stop = info.n_words if stop_word is None else min(int(stop_word), info.n_words)
    start = max(0, int(start_word))
    with open(info.path, "rb", buffering=0) as f:
        f.seek(info.data_offset + 8 * start)
        pos = start
        while pos < stop:
            n = min(chunk_words, stop - pos)
            buf = np.empty(n, dtype="<u8")
            view = memoryview(buf).cast("B")
            got = 0
            while got < 8 * n:
                r = f.readinto(view[got:])
                if not r:
                    break
                got += r
            if got < 8 * n:  # file shrank under us: yield what is whole and stop
                buf = buf[: got // 8]
                if len(buf):
                    yield buf.astype(np.uint64, copy=False)
                return
            yield buf.astype(np.uint64, copy=False)
            pos += n


def map_words(path: str | os.PathLike) -> np.ndarray:
    """Read-only memory map of all whole words of a raw/.tpx3 file (after the pymepix header).

    Zero-copy and lazily paged by the OS, so files larger than RAM can be sliced freely
    (e.g. ``Decoder().decode(map_words(p)[i:j])``); a trailing partial word is left out.
    """
    info = inspect_file(path)
    return np.memmap(info.path, dtype="<u8", mode="r", offset=info.data_offset, shape=(info.n_words,))


def read_words(path: str | os.PathLike) -> np.ndarray:
    """All words of a (small) file in memory, see :func:`iter_words`."""
    parts = list(iter_words(path))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def _payload_bytes(data) -> memoryview:
    if isinstance(data, np.ndarray):
        arr = data
        if arr.dtype.kind in "ui" and arr.dtype.itemsize > 1 and arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)
        return memoryview(arr).cast("B")
    mv = memoryview(data)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


class _ExclusiveWriter:
    """A binary file opened with mode 'xb' (FileExistsError if it exists), counting bytes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._f = open(self.path, "xb")
        self.bytes_written = 0

    def _append(self, data) -> int:
        n = self._f.write(_payload_bytes(data))
        self.bytes_written += n
        return n

    @property
    def closed(self) -> bool:
        return self._f.closed

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RawFileWriter(_ExclusiveWriter):
    """Write a pymepix-compatible .raw file: 8-byte LE time_ns header, then payload bytes.

    path: opened with mode 'xb' (FileExistsError if it exists); time_ns: header value
    (default ``time.time_ns()`` at open); header=False writes a header-less file.
    ``bytes_written`` counts payload bytes (the header's 8 bytes excluded, see ``header_bytes``).
    """

    def __init__(self, path: str | os.PathLike, time_ns: int | None = None, header: bool = True) -> None:
        super().__init__(path)
        self.header_bytes = 0
        self.time_ns: int | None = None
        if header:
            self.time_ns = int(time.time_ns() if time_ns is None else time_ns)
            self._f.write(self.time_ns.to_bytes(8, "little"))
            self.header_bytes = 8

    def write(self, data) -> int:
        """Append payload bytes (bytes, memoryview, or an ndarray written as little-endian); returns bytes written."""
        return self._append(data)


@numba.njit(cache=True)
def _frame_kernel(words, chips, max_words, mode, magic):
    n = words.shape[0]
    # count chunks
    n_chunks = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and j - i < max_words and chips[j] == chips[i]:
            j += 1
        n_chunks += 1
        i = j
    out = np.empty(n + n_chunks, np.uint64)
    o = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and j - i < max_words and chips[j] == chips[i]:
            j += 1
        size = np.uint64((j - i) * 8)
        out[o] = np.uint64(magic) | (np.uint64(chips[i]) << np.uint64(32)) | (np.uint64(mode) << np.uint64(40)) | (size << np.uint64(48))
        o += 1
        for k in range(i, j):
            out[o] = words[k]
            o += 1
        i = j
    return out


def frame_tpx3(words: np.ndarray, chip, chunk_bytes: int = 8192, mode: int = 0) -> np.ndarray:
    """Frame words into .tpx3 chunks: a header word then up to ``chunk_bytes`` of words.

    chip: one chip index (0..255) or a uint8 array per word; a new chunk starts whenever the
    chip changes or the chunk is full. Returns the framed uint64 words.
    """
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if chunk_bytes < 8 or chunk_bytes > MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be 8..{MAX_CHUNK_BYTES}")
    chips = np.broadcast_to(np.asarray(chip, dtype=np.int64), words.shape)
    if chips.size and (chips.min() < 0 or chips.max() > 255):
        raise ValueError("chip must be 0..255")
    if not 0 <= int(mode) <= 255:
        raise ValueError("mode must be 0..255")
    return _frame_kernel(words, np.ascontiguousarray(chips), chunk_bytes // 8, int(mode), TPX3_MAGIC)


class Tpx3FileWriter(_ExclusiveWriter):
    """Write an ASI .tpx3 file (mode 'xb': FileExistsError if it exists).

    ``write_chip(chip, words, chunk_bytes=8192)`` frames one chip's words into chunks;
    ``write_framed(words)`` appends already framed words. ``bytes_written`` counts all bytes.
    """

    def write_chip(self, chip: int, words: np.ndarray, chunk_bytes: int = 8192, mode: int = 0) -> int:
        """Append ``words`` of ``chip`` as chunks of at most ``chunk_bytes`` payload; returns bytes written."""
        if len(words) == 0:
            return 0
        return self.write_framed(frame_tpx3(words, int(chip), chunk_bytes, mode))

    def write_framed(self, words: np.ndarray) -> int:
        """Append words that already contain their chunk headers."""
        return self._append(np.asarray(words, dtype="<u8"))


@numba.njit(cache=True)
def quad_map(x, y, chip):
    """Chip-local (x, y) of ``chip`` (0..3) -> (X, Y) in the 516 x 516 quad frame (pixels).

    Layout ``2 1 / 3 0``; returns (-1, -1) for an invalid chip.
    """
    if chip == 0:
        return x + 258, 513 - y
    elif chip == 1:
        return 513 - x, y
    elif chip == 2:
        return 255 - x, y
    elif chip == 3:
        return x, 513 - y
    return -1, -1


@numba.njit(cache=True)
def _quad_to_frame_kernel(x, y, chip, X, Y):
    for i in range(x.shape[0]):
        a, b = quad_map(np.int64(x[i]), np.int64(y[i]), np.int64(chip[i]))
        X[i] = a
        Y[i] = b


def quad_to_frame(x, y, chip) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`quad_map`: chip-local pixels -> uint16 quad-frame pixels.

    Raises ValueError for chip not in 0..3 or x/y outside 0..255.
    """
    x, y, chip = np.broadcast_arrays(np.asarray(x), np.asarray(y), np.asarray(chip))
    x = np.ascontiguousarray(x, dtype=np.int64).ravel()
    y = np.ascontiguousarray(y, dtype=np.int64).ravel()
    chip = np.ascontiguousarray(chip, dtype=np.int64).ravel()
    if x.size:
        if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 255:
            raise ValueError("chip-local x and y must be 0..255")
        if chip.min() < 0 or chip.max() > 3:
            raise ValueError("quad chip index must be 0..3")
    X = np.empty(x.size, np.uint16)
    Y = np.empty(x.size, np.uint16)
    _quad_to_frame_kernel(x, y, chip, X, Y)
    return X, Y


def frame_to_quad(X, Y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`quad_to_frame`: quad-frame pixels -> (x uint16, y uint16, chip uint8).

    Raises ValueError for pixels in the gaps (256, 257) or outside 0..513.
    """
    X = np.asarray(X, dtype=np.int64).ravel()
    Y = np.asarray(Y, dtype=np.int64).ravel()
    if X.size:
        bad = (X < 0) | (X > 513) | (Y < 0) | (Y > 513) | (X == 256) | (X == 257) | (Y == 256) | (Y == 257)
        if bad.any():
            raise ValueError("quad-frame pixel in a gap or outside 0..513")
    right = X >= _QUAD_OFFSET
    bottom = Y >= _QUAD_OFFSET
    chip = np.where(right, np.where(bottom, 0, 1), np.where(bottom, 3, 2))
    x = np.where(chip == 0, X - 258, np.where(chip == 1, 513 - X, np.where(chip == 2, 255 - X, X)))
    y = np.where((chip == 0) | (chip == 3), 513 - Y, Y)
    return x.astype(np.uint16), y.astype(np.uint16), chip.astype(np.uint8)
