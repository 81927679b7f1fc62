"""Serial-path transport for the train-ID receiver: a tty (``/dev/ttyUSB0`` via the
kernel's ftdi_sio/cp210x/ch341/pl2303 driver) or a pty (the simulated receiver).

The port is opened non-blocking without becoming the controlling terminal, switched to
raw mode (ETX = 0x03 would otherwise be ^C) at 115200 baud 8N1 where the device supports
it (a pty accepts and ignores the speed), and its input queue is flushed so that stale
bytes, which carry no meaningful host time, are not parsed. Reads wait with ``select``.
"""

from __future__ import annotations

import errno
import os
import select
import termios
import tty

from .protocol import TransportError

#: termios speed constants by baud rate.
_SPEEDS = {rate: getattr(termios, f"B{rate}") for rate in
           (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
           if hasattr(termios, f"B{rate}")}


def make_raw(fd: int, baudrate: int | None = 115200) -> None:
    """Put the tty ``fd`` in raw 8N1 mode, no flow control; set ``baudrate`` if given.
    Raises ``ValueError`` for an unsupported baud rate, ``termios.error`` if ``fd`` is
    not a terminal."""
    tty.setraw(fd, termios.TCSANOW)
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    cflag |= termios.CLOCAL | termios.CREAD
    cflag &= ~(termios.CSTOPB | termios.PARENB)
    if hasattr(termios, "CRTSCTS"):
        cflag &= ~termios.CRTSCTS
    iflag &= ~(termios.IXON | termios.IXOFF | termios.IXANY)
    if baudrate is not None:
        if baudrate not in _SPEEDS:
            raise ValueError(f"unsupported baud rate {baudrate}; choose from {sorted(_SPEEDS)}")
        ispeed = ospeed = _SPEEDS[baudrate]
    cc[termios.VMIN] = 0
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class SerialTransport:
    """Read bytes from a tty/pty path.

    ``open()`` raises ``OSError`` (e.g. ``FileNotFoundError`` while unplugged);
    ``read(timeout_s)`` returns ``b''`` on timeout and raises :class:`TransportError`
    when the device went away (EIO/ENODEV, end of file, hang-up).
    """

    def __init__(self, path: str | os.PathLike, baudrate: int = 115200,
                 flush_on_open: bool = True, read_size: int = 4096) -> None:
        self.path = os.fspath(path)
        self.baudrate = baudrate
        self.flush_on_open = flush_on_open
        self.read_size = read_size
        self._fd: int | None = None
        self.speed_set = False

    @property
    def description(self) -> str:
        return f"serial {self.path}"

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        self.close()
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if not os.isatty(fd):
                raise TransportError(errno.ENOTTY, "not a terminal device", self.path)
            try:
                make_raw(fd, self.baudrate)
                self.speed_set = True
            except termios.error:
                # some adapters refuse a speed change: at least make the line raw
                make_raw(fd, None)
                self.speed_set = False
            if self.flush_on_open:
                termios.tcflush(fd, termios.TCIFLUSH)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def read(self, timeout_s: float) -> bytes:
        fd = self._fd
        if fd is None:
            raise TransportError(errno.EBADF, "transport not open", self.path)
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
        except (OSError, ValueError) as exc:
            raise TransportError(errno.EIO, f"select failed: {exc}", self.path) from exc
        if not ready:
            return b""
        try:
            data = os.read(fd, self.read_size)
        except BlockingIOError:
            return b""
        except OSError as exc:  # EIO when the pty master / USB adapter is gone
            raise TransportError(exc.errno or errno.EIO, exc.strerror or str(exc), self.path) from exc
        if not data:
            raise TransportError(errno.ENODEV, "end of file (device gone)", self.path)
        return data

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "SerialTransport":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
