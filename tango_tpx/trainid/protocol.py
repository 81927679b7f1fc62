"""European XFEL train-ID frames from the USB timing receiver: wire format, parser, storage.

Wire format (115200 baud, 8N1, one frame per train, 10 Hz at European XFEL)::

    STX(0x02) | 16 hex chars train ID | 8 hex chars beam mode | 2 hex chars CRC | ETX(0x03)

28 bytes in all. Hex is ASCII, big-endian (most significant digit first); lower case is
accepted. The CRC is the XOR of the 12 bytes given by the 24 hex characters before it
(8 train-ID bytes and 4 beam-mode bytes).

Times: ``host_time_ns`` is the host wall clock (:func:`time.time_ns`, ns since the Unix
epoch) at which the read that completed the frame returned. Train IDs are plain counts
(one per 100 ms train), beam mode is a 32-bit word from the timing system.

Storage:

* HDF5 datasets under ``timing/trainID`` (:mod:`tango_tpx.io.trainid`).
* Side file next to a raw recording: ``<raw path>.trainid.csv`` (:func:`side_file_path`),
  a header line ``timestamp_ns,train_id,beam_mode`` then one decimal line per frame.
  Written incrementally by :class:`TrainIdSideFile` (flushed per batch, so a crash keeps
  what was received) or at once by :func:`write_side_file`; read by
  :func:`read_side_file`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np


STX: int = 0x02
ETX: int = 0x03
#: Hex characters between STX and ETX: 16 train ID + 8 beam mode + 2 CRC.
PAYLOAD_CHARS: int = 26
#: Bytes in a whole frame including STX and ETX.
FRAME_BYTES: int = PAYLOAD_CHARS + 2
#: Default frame rate of the European XFEL timing system (trains per second).
TRAIN_RATE_HZ: float = 10.0

_HEX_PAYLOAD = re.compile(rb"[0-9A-Fa-f]{26}")


class TransportError(OSError):
    """The receiver is gone (unplugged, port closed, I/O error): reconnect later."""


class TrainFrame(NamedTuple):
    """One decoded train-ID frame.

    host_time_ns: host wall clock, ns since the Unix epoch, when the frame was read;
    train_id: European XFEL train ID (count of 100 ms trains);
    beam_mode: 32-bit beam-mode word.
    """

    host_time_ns: int
    train_id: int
    beam_mode: int


#: numpy record type of a batch of frames (same column names as the side file).
TRAINID_DTYPE = np.dtype([("timestamp_ns", "<u8"), ("train_id", "<u8"), ("beam_mode", "<u4")])

#: Statistics kept by :class:`FrameParser` (all integer counts).
PARSER_STATS: tuple[str, ...] = (
    "frames",          # valid frames delivered
    "bytes",           # bytes fed
    "garbage_bytes",   # bytes outside any frame (before STX), dropped
    "crc_errors",      # well-formed frames whose CRC did not match, dropped
    "bad_hex",         # frames with a non-hex character in the 26 payload chars, dropped
    "missing_etx",     # frames cut by an STX before their end, or over-long (no ETX at byte 28)
    "short_frames",    # ETX before the 26 payload chars were complete
    "truncated",       # partial frames dropped by reset_partial() (reconnect)
    "repeated",        # valid frames with the same train ID as the previous one
    "out_of_order",    # valid frames with a smaller train ID than the previous one
    "missed_trains",   # sum of the gaps (train IDs skipped between consecutive frames)
)


def crc(data: bytes) -> int:
    """XOR of all bytes of ``data`` (the 12 decoded bytes of train ID + beam mode)."""
    value = 0
    for b in data:
        value ^= b
    return value


def encode_frame(train_id: int, beam_mode: int = 0, crc_value: int | None = None) -> bytes:
    """Build one 28-byte frame (upper-case hex); ``crc_value`` overrides the CRC (for tests)."""
    if not 0 <= train_id < 1 << 64:
        raise ValueError(f"train_id {train_id} does not fit in 64 bits")
    if not 0 <= beam_mode < 1 << 32:
        raise ValueError(f"beam_mode {beam_mode} does not fit in 32 bits")
    body = train_id.to_bytes(8, "big") + beam_mode.to_bytes(4, "big")
    c = crc(body) if crc_value is None else crc_value & 0xFF
    return bytes([STX]) + (body.hex().upper() + f"{c:02X}").encode("ascii") + bytes([ETX])


class FrameParser:
    """Streaming parser: bytes in any chunking -> :class:`TrainFrame` list.

    Frames split across reads, several frames per read and garbage between frames are
    handled; malformed frames are counted in :attr:`stats` and dropped, never raised.
    Resynchronisation is on the next STX (payload characters are hex, so an STX inside a
    frame always starts a new one).

    Train-ID order: a frame with the same ID as the previous delivered frame is counted
    as ``repeated`` and dropped when ``drop_repeated``; a smaller ID is counted as
    ``out_of_order`` and, unless ``drop_out_of_order``, delivered and taken as the new
    reference (so a restart of the timing system does not silence the stream); a forward
    jump adds the number of skipped IDs to ``missed_trains``.
    """

    def __init__(self, drop_repeated: bool = True, drop_out_of_order: bool = False,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.drop_repeated = drop_repeated
        self.drop_out_of_order = drop_out_of_order
        self._clock = clock
        self._frame: bytearray | None = None  # bytes after STX of the frame being assembled
        self.last_train_id: int | None = None
        self.stats: dict[str, int] = dict.fromkeys(PARSER_STATS, 0)

    def reset_partial(self) -> None:
        """Drop a partly received frame (after a reconnect); the train-ID order is kept."""
        if self._frame is not None:
            self.stats["truncated"] += 1
        self._frame = None

    def feed(self, data: bytes, host_time_ns: int | None = None) -> list[TrainFrame]:
        """Parse ``data``; return the frames completed by it, stamped ``host_time_ns``
        (default: :func:`time.time_ns` now)."""
        t = self._clock() if host_time_ns is None else int(host_time_ns)
        data = bytes(data)
        st = self.stats
        st["bytes"] += len(data)
        out: list[TrainFrame] = []
        i, n = 0, len(data)
        while i < n:
            if self._frame is None:
                j = data.find(STX, i)
                if j < 0:
                    st["garbage_bytes"] += n - i
                    return out
                st["garbage_bytes"] += j - i
                self._frame = bytearray()
                i = j + 1
                continue
            need = PAYLOAD_CHARS + 1 - len(self._frame)   # payload chars + ETX still missing
            chunk = data[i:i + need]
            k_stx = chunk.find(STX)
            k_etx = chunk.find(ETX)
            if k_stx >= 0 and (k_etx < 0 or k_stx < k_etx):
                st["missing_etx"] += 1          # a new frame starts before this one ended
                self._frame = bytearray()
                i += k_stx + 1
                continue
            if k_etx >= 0 and len(self._frame) + k_etx < PAYLOAD_CHARS:
                st["short_frames"] += 1         # ETX too early
                self._frame = None
                i += k_etx + 1
                continue
            self._frame += chunk
            i += len(chunk)
            if len(self._frame) == PAYLOAD_CHARS + 1:
                frame = bytes(self._frame)
                self._frame = None
                if frame[-1] != ETX:
                    st["missing_etx"] += 1      # over-long: byte 28 is neither ETX nor STX
                    continue
                self._complete(frame[:PAYLOAD_CHARS], t, out)
        return out

    def _complete(self, payload: bytes, t: int, out: list[TrainFrame]) -> None:
        st = self.stats
        if _HEX_PAYLOAD.fullmatch(payload) is None:
            st["bad_hex"] += 1
            return
        raw = bytes.fromhex(payload.decode("ascii"))
        if crc(raw[:12]) != raw[12]:
            st["crc_errors"] += 1
            return
        train_id = int.from_bytes(raw[:8], "big")
        beam_mode = int.from_bytes(raw[8:12], "big")
        last = self.last_train_id
        if last is not None:
            if train_id == last:
                st["repeated"] += 1
                if self.drop_repeated:
                    return
            elif train_id < last:
                st["out_of_order"] += 1
                if self.drop_out_of_order:
                    return
            elif train_id > last + 1:
                st["missed_trains"] += train_id - last - 1
        self.last_train_id = train_id
        st["frames"] += 1
        out.append(TrainFrame(t, train_id, beam_mode))


# --------------------------------------------------------------------------- arrays, log

def frames_to_array(frames: Iterable[TrainFrame] | np.ndarray) -> np.ndarray:
    """Frames (or a :data:`TRAINID_DTYPE` array) -> :data:`TRAINID_DTYPE` array."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != TRAINID_DTYPE:
            raise TypeError(f"expected dtype {TRAINID_DTYPE}, got {frames.dtype}")
        return frames
    if isinstance(frames, TrainIdLog):
        return frames.to_array()
    rows = [(int(f[0]), int(f[1]), int(f[2])) for f in frames]
    return np.array(rows, dtype=TRAINID_DTYPE) if rows else np.zeros(0, TRAINID_DTYPE)


def array_to_frames(arr: np.ndarray) -> list[TrainFrame]:
    """:data:`TRAINID_DTYPE` array -> list of :class:`TrainFrame`."""
    return [TrainFrame(int(a), int(b), int(c))
            for a, b, c in zip(arr["timestamp_ns"], arr["train_id"], arr["beam_mode"])]


class TrainIdLog:
    """Thread-safe growing log of frames: columns timestamp_ns (uint64 ns since the Unix
    epoch, host clock), train_id (uint64), beam_mode (uint32).

    ``append`` takes a list of :class:`TrainFrame` (it can be passed directly as the
    callback of :class:`~tango_tpx.trainid.receiver.TrainIdReader` / ``USBTrainID``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[np.ndarray] = []
        self._n = 0

    def append(self, frames: Iterable[TrainFrame] | np.ndarray) -> None:
        arr = frames_to_array(frames)
        if len(arr):
            with self._lock:
                self._parts.append(arr.copy())
                self._n += len(arr)

    __call__ = append

    def __len__(self) -> int:
        return self._n

    def to_array(self) -> np.ndarray:
        """All frames as one :data:`TRAINID_DTYPE` array (a copy)."""
        with self._lock:
            if len(self._parts) > 1:
                self._parts = [np.concatenate(self._parts)]
            return self._parts[0].copy() if self._parts else np.zeros(0, TRAINID_DTYPE)

    @property
    def timestamp_ns(self) -> np.ndarray:
        return self.to_array()["timestamp_ns"]

    @property
    def train_id(self) -> np.ndarray:
        return self.to_array()["train_id"]

    @property
    def beam_mode(self) -> np.ndarray:
        return self.to_array()["beam_mode"]

    def clear(self) -> np.ndarray:
        """Empty the log; return what it held."""
        arr = self.to_array()
        with self._lock:
            self._parts, self._n = [], 0
        return arr


# --------------------------------------------------------------------------- side file

SIDE_FILE_SUFFIX = ".trainid.csv"
SIDE_FILE_HEADER = "timestamp_ns,train_id,beam_mode"


def side_file_path(raw_path: str | os.PathLike) -> Path:
    """``recording.raw`` -> ``recording.raw.trainid.csv`` (same folder)."""
    p = Path(raw_path)
    return p.with_name(p.name + SIDE_FILE_SUFFIX)


class TrainIdSideFile:
    """Incremental writer of the side file of a raw recording (see the module doc).

    Refuses an existing file (``FileExistsError``), like the raw writer. Each
    :meth:`append` writes and flushes its lines. Usable as a context manager and as a
    frame callback.
    """

    def __init__(self, raw_path: str | os.PathLike) -> None:
        self.path = side_file_path(raw_path)
        self._f = open(self.path, "x", encoding="ascii", newline="\n")
        self._f.write(SIDE_FILE_HEADER + "\n")
        self._f.flush()
        self._lock = threading.Lock()
        self.n_frames = 0

    def append(self, frames: Iterable[TrainFrame] | np.ndarray) -> None:
        arr = frames_to_array(frames)
        if not len(arr):
            return
        text = "".join(f"{int(a)},{int(b)},{int(c)}\n"
                       for a, b, c in zip(arr["timestamp_ns"], arr["train_id"], arr["beam_mode"]))
        with self._lock:
            if self._f.closed:
                raise ValueError(f"side file {self.path} is closed")
            self._f.write(text)
            self._f.flush()
            self.n_frames += len(arr)

    __call__ = append

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()

    def __enter__(self) -> "TrainIdSideFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_side_file(raw_path: str | os.PathLike,
                    frames: Iterable[TrainFrame] | np.ndarray | TrainIdLog) -> Path:
    """Write all ``frames`` to ``<raw_path>.trainid.csv``; return its path."""
    with TrainIdSideFile(raw_path) as sf:
        sf.append(frames)
    return sf.path


def _starts_with_side_header(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(len(SIDE_FILE_HEADER)).decode("ascii", "replace") == SIDE_FILE_HEADER
    except OSError:
        return False


def read_side_file(path: str | os.PathLike) -> np.ndarray:
    """Read a side file (any existing file in the side-file format, or the raw path it
    belongs to) into a :data:`TRAINID_DTYPE` array. Raises ``ValueError`` on a malformed file."""
    p = Path(path)
    if not p.name.endswith(SIDE_FILE_SUFFIX) and not _starts_with_side_header(p):
        p = side_file_path(p)  # the raw recording the side file belongs to
    with open(p, encoding="ascii") as f:
        header = f.readline().strip()
        if header != SIDE_FILE_HEADER:
            raise ValueError(f"{p}: not a train-ID side file (header {header!r})")
        rows = []
        for lineno, line in enumerate(f, start=2):
            line = line.strip()
            if not line:
                continue
            parts = line.split(",")
            if len(parts) != 3:
                raise ValueError(f"{p}:{lineno}: expected 3 columns, got {line!r}")
            try:
                rows.append(tuple(int(v) for v in parts))
            except ValueError as exc:
                raise ValueError(f"{p}:{lineno}: {exc}") from None
    return np.array(rows, dtype=TRAINID_DTYPE) if rows else np.zeros(0, TRAINID_DTYPE)
