"""Train IDs (European XFEL) of the :class:`~.controller.AcquisitionController`.

:meth:`TrainIdLink.set_train_id_source` runs a :class:`~tango_tpx.trainid.TrainIdReader`
thread (or a :class:`~tango_tpx.trainid.USBTrainID` process) from then until the
controller closes, independent of start/stop. Each accepted frame (host time ns, train ID,
beam mode) updates :attr:`~TrainIdLink.train_id` and the ``train_*`` counters, and while a
raw file is being recorded it is appended to the side file ``<raw>.trainid.csv`` next to it.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

from tango_tpx.trainid.protocol import TrainFrame, TrainIdSideFile, frames_to_array
from tango_tpx.trainid.receiver import TrainIdReader, USBTrainID

#: Train-ID keys added to :meth:`AcquisitionController.counters` (ints unless noted).
TRAIN_COUNTER_KEYS = (
    "train_id",            # latest train ID, -1 before the first frame / without a source
    "train_beam_mode",     # beam-mode word of the latest frame, -1 none
    "train_host_time_ns",  # host wall clock (ns since the Unix epoch) of the latest frame, 0 none
    "train_frames",        # valid frames accepted
    "train_errors",        # malformed frames dropped (CRC, bad hex, missing ETX, short)
    "train_garbage_bytes",  # bytes outside any frame
    "train_repeated",      # frames repeating the previous train ID (dropped)
    "train_out_of_order",  # frames with a smaller train ID than the previous one
    "train_missed",        # train IDs skipped between consecutive frames
    "train_disconnects",   # receiver losses (unplugged, I/O error)
    "train_reconnects",    # re-opens after a loss
    "train_connected",     # 1 while the receiver port is open
    "train_side_frames",   # frames written to side files
    "train_side_errors",   # side-file writes that failed (frames not written)
    "train_status",        # str: '' (no source), 'connected: ...', 'disconnected: ...', ...
)
#: Reader counters summed into ``train_errors``.
_TRAIN_ERROR_STATS = ("crc_errors", "bad_hex", "missing_etx", "short_frames")
#: Frames kept in memory by :meth:`AcquisitionController.train_history` (~28 min at 10 Hz).
TRAIN_HISTORY_FRAMES = 16384


class TrainIdLink:
    """The train-ID reader, the latest frame, a bounded history and the raw file's side file.

    The host class provides ``_lock`` (an RLock serialising the public methods) and
    ``recording_file`` (absolute path of the raw file being recorded, '' if none), and
    calls :meth:`_init_train_ids` in its constructor.
    """

    _lock: threading.RLock
    recording_file: str

    def _init_train_ids(self) -> None:
        """The reader (none yet), the latest frame, the history, the side file."""
        self._train_reader: TrainIdReader | USBTrainID | None = None
        self._train_source: Any = None
        self._train_lock = threading.Lock()
        self._train_latest: TrainFrame | None = None
        self._train_history: collections.deque[TrainFrame] = collections.deque(maxlen=TRAIN_HISTORY_FRAMES)
        self._train_frames = 0
        self._train_base: dict[str, int] = {}
        self._train_side: TrainIdSideFile | None = None
        self._train_side_raw = ""
        self._train_side_frames = 0
        self._train_side_errors = 0
        self.train_side_error: str | None = None

    # -- train IDs ------------------------------------------------------------------------
    def _reset_train_counters(self) -> None:
        """Zero the train-ID counters (the latest frame is kept)."""
        with self._train_lock:
            reader = self._train_reader
            self._train_base = reader.counters() if reader is not None else {}
            self._train_frames = 0
            self._train_side_frames = 0
            self._train_side_errors = 0

    def set_train_id_source(self, source: Any, *, process: bool = False, **reader_kwargs: Any) -> None:
        """Read European XFEL train IDs from ``source`` from now until :meth:`close`.

        source: a tty/pty path (``'/dev/ttyUSB0'``, a stable ``/dev/serial/by-id/...`` link),
        ``'usb'`` / ``'usb:VID:PID[:IFACE]'``, or a transport object; ``None`` or ``''``
        stops reading. A path that does not exist yet is accepted (``train_status`` says
        ``'disconnected: ...'`` until the receiver appears). process: read in a
        :class:`USBTrainID` child process instead of a thread of this process.
        reader_kwargs: passed to the reader (``reconnect_min_s``, ``reconnect_max_s`` s,
        ``read_timeout_s`` s, ``parser_kwargs``). Raises ``ValueError``/``TypeError`` for
        a source that can never work (e.g. ``'usb:zz'``); the previous source then keeps
        running. Replacing or removing a source resets the latest train ID to -1; a
        recording in progress gets its side file now.
        """
        with self._lock:
            off = source is None or (isinstance(source, str) and not source.strip())
            reader = None
            if not off:
                if isinstance(source, str):
                    source = source.strip()
                kwargs = dict(callback=self._on_train_frames, reconnect_max_s=1.0)
                kwargs.update(reader_kwargs)
                # built (and the source validated) before the running reader is touched
                reader = USBTrainID(source=source, **kwargs) if process else TrainIdReader(source, **kwargs)
            self._stop_train_reader()
            if reader is None:
                return
            reader.start()
            self._train_reader = reader
            self._train_source = source
            rec = self.recording_file
            if rec and self._train_side is None:
                self._open_side_file(rec)

    @property
    def train_id_source(self) -> Any:
        """The source given to :meth:`set_train_id_source`, None when train IDs are off."""
        return self._train_source

    @property
    def train_id(self) -> int:
        """Latest train ID received, -1 if none (yet) or no source."""
        f = self._train_latest
        return -1 if f is None else int(f.train_id)

    @property
    def train_status(self) -> str:
        """Receiver state: '' without a source, else the reader's status ('connecting: ...',
        'connected: <port>', 'disconnected: <reason>', 'stopped', 'fault: ...')."""
        r = self._train_reader
        return "" if r is None else r.status

    def latest_train(self) -> TrainFrame | None:
        """Latest frame (host_time_ns [ns since the Unix epoch], train_id, beam_mode) or None."""
        return self._train_latest

    def train_history(self) -> np.ndarray:
        """The last :data:`TRAIN_HISTORY_FRAMES` frames of the current source, oldest first,
        as a ``TRAINID_DTYPE`` array (timestamp_ns, train_id, beam_mode)."""
        with self._train_lock:
            frames = list(self._train_history)
        return frames_to_array(frames)

    def train_counters(self) -> dict[str, Any]:
        """The :data:`TRAIN_COUNTER_KEYS` (counts since the last :meth:`reset_counters`)."""
        self._check_side_file()
        reader = self._train_reader
        with self._train_lock:
            latest = self._train_latest
            base = dict(self._train_base)
            out: dict[str, Any] = {"train_frames": self._train_frames,
                                   "train_side_frames": self._train_side_frames,
                                   "train_side_errors": self._train_side_errors}
        c = reader.counters() if reader is not None else {}

        def d(name: str) -> int:
            return max(0, int(c.get(name, 0)) - int(base.get(name, 0)))

        out.update(
            train_id=-1 if latest is None else int(latest.train_id),
            train_beam_mode=-1 if latest is None else int(latest.beam_mode),
            train_host_time_ns=0 if latest is None else int(latest.host_time_ns),
            train_errors=sum(d(k) for k in _TRAIN_ERROR_STATS),
            train_garbage_bytes=d("garbage_bytes"),
            train_repeated=d("repeated"),
            train_out_of_order=d("out_of_order"),
            train_missed=d("missed_trains"),
            train_disconnects=d("disconnects"),
            train_reconnects=d("reconnects"),
            train_connected=int(c.get("connected", 0)),
            train_status="" if reader is None else reader.status,
        )
        return out

    # called from the reader thread (or the USBTrainID callback thread): keep it short
    def _on_train_frames(self, frames: list[TrainFrame]) -> None:
        if not frames:
            return
        self._check_side_file()
        with self._train_lock:
            self._train_latest = frames[-1]
            self._train_history.extend(frames)
            self._train_frames += len(frames)
            side = self._train_side
            if side is not None:
                try:
                    side.append(frames)
                    self._train_side_frames += len(frames)
                except (OSError, ValueError) as exc:  # disk full, closed under us: count, go on
                    self._train_side_errors += 1
                    self.train_side_error = f"{side.path}: {exc}"

    def _open_side_file(self, raw_path: str) -> None:
        """Open ``<raw_path>.trainid.csv``; a failure is counted, it never stops recording."""
        try:
            side = TrainIdSideFile(raw_path)
        except OSError as exc:
            with self._train_lock:
                self._train_side_errors += 1
                self.train_side_error = f"cannot open the train-ID side file of {raw_path}: {exc}"
            return
        with self._train_lock:
            old, self._train_side, self._train_side_raw = self._train_side, side, str(raw_path)
        if old is not None:
            old.close()

    def _close_side_file(self) -> None:
        with self._train_lock:
            side, self._train_side, self._train_side_raw = self._train_side, None, ""
        if side is not None:
            side.close()

    def _check_side_file(self) -> None:
        """Close the side file if its raw file was closed behind our back (stage fault)."""
        raw = self._train_side_raw
        if raw and self.recording_file != raw:
            with self._train_lock:
                if self._train_side_raw != raw:
                    return
                side, self._train_side, self._train_side_raw = self._train_side, None, ""
            if side is not None:
                side.close()

    def _stop_train_reader(self) -> None:
        reader, self._train_reader = self._train_reader, None
        self._train_source = None
        self._close_side_file()
        if reader is not None:
            reader.close()
        with self._train_lock:
            self._train_latest = None
            self._train_history.clear()
            self._train_base = {}


__all__ = ["TRAIN_COUNTER_KEYS", "TRAIN_HISTORY_FRAMES", "TrainIdLink"]
