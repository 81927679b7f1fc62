"""A simulated European XFEL timing receiver on a pty, with optional faults.

:class:`SimulatedReceiver` writes valid frames at ``rate_hz``; ``.path`` is a stable symlink to
the pty slave (like ``/dev/serial/by-id``), removed by ``unplug()`` and recreated by
``replug()``. What it did is counted in :class:`SimCounts` for exact assertions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import tty
import weakref
from dataclasses import dataclass, field

import numpy as np

from .protocol import encode_frame

__all__ = ["SimulatedReceiver", "SimFaults", "SimCounts"]


@dataclass
class SimFaults:
    """Faults injected by :class:`SimulatedReceiver` (0 = never). Frame k counts from 1.

    bad_crc_every: every Nth frame gets a wrong CRC; bad_hex_every: a non-hex character;
    garbage_every: ``garbage`` bytes are written before every Nth frame;
    repeat_every: every Nth frame is sent twice; drop_etx_every: every Nth frame loses
    its ETX; split_writes: each frame is written in ``split_parts`` pieces with
    ``split_delay_s`` between them; pack: frames are written ``pack`` per write.
    """

    bad_crc_every: int = 0
    bad_hex_every: int = 0
    garbage_every: int = 0
    garbage: bytes = b"\x00\xffnoise\x03\r\n"
    repeat_every: int = 0
    drop_etx_every: int = 0
    split_writes: bool = False
    split_parts: int = 3
    split_delay_s: float = 0.002
    pack: int = 1


@dataclass
class SimCounts:
    """What :class:`SimulatedReceiver` did (for exact assertions)."""

    ticks: int = 0                 # trains elapsed (sent or not)
    sent_ids: list[int] = field(default_factory=list)   # IDs written as valid frames (repeats once)
    bad_crc: int = 0
    bad_hex: int = 0
    garbage_bytes: int = 0
    repeated: int = 0
    dropped_etx: int = 0
    unplugged_ticks: int = 0       # trains while unplugged
    write_drops: int = 0           # writes lost because the pty buffer was full


#: Simulated receivers alive in this process (their pty fds are closed in forked children).
_LIVE_SIMULATORS: "weakref.WeakSet[SimulatedReceiver]" = weakref.WeakSet()


def _close_sim_fds_after_fork() -> None:
    """In a forked child (a pipeline stage, a DeviceTestContext server) drop the copies
    of every simulator's pty fds: a child keeping the master open would hide ``unplug()``
    from readers (the pty slave reports EIO only once every master fd is closed). No lock
    is taken: the thread that might hold it does not exist in the child."""
    for sim in list(_LIVE_SIMULATORS):
        fds = (sim._master, sim._slave)
        sim._master = sim._slave = None
        sim._lock = threading.Lock()
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_sim_fds_after_fork)


class SimulatedReceiver:
    """A fake XFEL timing receiver on a pty.

    rate_hz: frames per second (10 at XFEL); start_train_id: first ID (one more per
    tick, also while unplugged, like the real timing system); beam_mode: 32-bit word;
    faults: :class:`SimFaults` or a dict of its fields; max_frames: stop sending after
    this many ticks (None: forever); link_dir: folder of the stable ``.path`` symlink
    (default: a private temporary folder, removed by ``stop()``).
    """

    def __init__(self, rate_hz: float = 10.0, start_train_id: int = 1_000_000_000,
                 beam_mode: int = 0x0000_0001, faults: SimFaults | dict | None = None,
                 max_frames: int | None = None, link_dir: str | None = None) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self.rate_hz = float(rate_hz)
        self.start_train_id = int(start_train_id)
        self.beam_mode = int(beam_mode)
        self.faults = faults if isinstance(faults, SimFaults) else SimFaults(**(faults or {}))
        self.max_frames = max_frames
        self._own_dir = link_dir is None
        self._dir = link_dir or tempfile.mkdtemp(prefix="tpx-trainid-")
        self.path = os.path.join(self._dir, "ttyTRAINID")
        self.pty_path: str | None = None
        self.counts = SimCounts()
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = threading.Event()   # set when max_frames ticks have passed
        self._plug()
        _LIVE_SIMULATORS.add(self)

    # ---- pty handling
    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)          # raw before anyone reads: 0x03 must not become ^C
        os.set_blocking(master, False)
        self.pty_path = os.ttyname(slave)
        tmp = self.path + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(self.pty_path, tmp)
        os.replace(tmp, self.path)   # atomic, like udev updating /dev/serial/by-id
        with self._lock:
            self._master, self._slave = master, slave

    def _unplug_fds(self) -> None:
        with self._lock:
            fds = (self._master, self._slave)
            self._master = self._slave = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for fd in fds:
            if fd is not None:
                os.close(fd)

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def unplug(self) -> None:
        """Close the pty (readers get EIO) and remove ``.path``."""
        self._unplug_fds()

    def replug(self) -> None:
        """A new pty behind ``.path`` (no-op if plugged)."""
        if not self.plugged:
            self._plug()

    # ---- frame generation
    def frame_bytes(self, k: int, train_id: int) -> bytes:
        """Bytes written for tick ``k`` (from 1) with ``train_id``, faults applied and
        counted."""
        f, c = self.faults, self.counts
        out = b""
        if f.garbage_every and k % f.garbage_every == 0:
            out += f.garbage
            c.garbage_bytes += len(f.garbage)
        if f.bad_crc_every and k % f.bad_crc_every == 0:
            good = encode_frame(train_id, self.beam_mode)
            bad_crc = (int(good[25:27], 16) ^ 0x5A) & 0xFF
            c.bad_crc += 1
            return out + encode_frame(train_id, self.beam_mode, crc_value=bad_crc)
        frame = encode_frame(train_id, self.beam_mode)
        if f.bad_hex_every and k % f.bad_hex_every == 0:
            c.bad_hex += 1
            return out + frame[:5] + b"G" + frame[6:]
        if f.drop_etx_every and k % f.drop_etx_every == 0:
            c.dropped_etx += 1
            return out + frame[:-1]
        c.sent_ids.append(train_id)
        out += frame
        if f.repeat_every and k % f.repeat_every == 0:
            c.repeated += 1
            out += frame
        return out

    def _write(self, data: bytes) -> None:
        f = self.faults
        pieces = [data]
        if f.split_writes and f.split_parts > 1 and len(data) > 1:
            cuts = np.linspace(0, len(data), f.split_parts + 1).astype(int)
            pieces = [data[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        for i, piece in enumerate(pieces):
            with self._lock:
                fd = self._master
                if fd is None:
                    return
                try:
                    os.write(fd, piece)
                except BlockingIOError:
                    self.counts.write_drops += 1
                    return
                except OSError:
                    return
            if i < len(pieces) - 1:
                self._stop.wait(f.split_delay_s)

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        t0 = time.monotonic()
        k = 0
        pending = b""
        while not self._stop.is_set():
            k += 1
            if self.max_frames is not None and k > self.max_frames:
                break
            delay = t0 + k * period - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            train_id = self.start_train_id + k - 1
            self.counts.ticks = k
            if not self.plugged:
                self.counts.unplugged_ticks += 1
                pending = b""
                continue
            pending += self.frame_bytes(k, train_id)
            if k % max(1, self.faults.pack) == 0:
                self._write(pending)
                pending = b""
        if pending and self.plugged:
            self._write(pending)
        self.done.set()

    def start(self) -> "SimulatedReceiver":
        if self._thread is not None:
            raise RuntimeError("simulated receiver already started")
        if not self.plugged:
            self._plug()
        self._thread = threading.Thread(target=self._run, name="SimulatedReceiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending, close the pty and remove the symlink (and its folder if private)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._unplug_fds()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "SimulatedReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
