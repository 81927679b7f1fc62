"""The read loop both train-ID readers run: connect, read, parse and emit frames, reconnect with
backoff while the receiver is unplugged, end on a stop flag or when the parent process is gone.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..runtime.guard import parent_alive
from .protocol import FrameParser, TrainFrame
from .shared import _SharedState

__all__ = ["make_transport", "parent_gone", "run_read_loop"]


def make_transport(source: Any):
    """Transport for a ``source``: a tty/pty path (serial), ``'usb[:VID:PID[:IFACE]]'`` (pyusb) or
    an object with ``open()``, ``read(timeout_s)``, ``close()`` (see :mod:`tango_tpx.trainid.receiver`)."""
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if s.lower() == "usb" or s.lower().startswith("usb:"):
            from .usb import UsbTransport, parse_usb_source
            return UsbTransport(**parse_usb_source(s))
        from .serial import SerialTransport
        return SerialTransport(s)
    for attr in ("open", "read", "close"):
        if not callable(getattr(source, attr, None)):
            raise TypeError(f"source {source!r} is neither a path, 'usb[:VID:PID]' nor a transport "
                            f"(missing {attr}())")
    return source


def parent_gone(parent_pid: int | None) -> bool:
    """True when this process was started by ``parent_pid`` (not None) and that process is gone
    (the orphan guard of the reader process)."""
    return parent_pid is not None and not parent_alive(parent_pid)


def run_read_loop(source: Any, stop: Any, emit: Callable[[list[TrainFrame]], None],
                  state: _SharedState, *, parent_pid: int | None = None,
                  read_timeout_s: float = 0.1, reconnect_min_s: float = 0.1,
                  reconnect_max_s: float = 2.0, parser_kwargs: dict | None = None) -> None:
    """Connect, read, parse and ``emit`` batches until ``stop`` (an Event) is set or the
    parent process ``parent_pid`` is gone. Never raises for receiver trouble: it goes
    to the ``disconnected`` status and retries with backoff."""
    transport = make_transport(source)
    parser = FrameParser(**(parser_kwargs or {}))
    desc = getattr(transport, "description", repr(transport))
    backoff = reconnect_min_s
    ever_connected = False

    def sync_stats() -> None:
        state.put(**parser.stats)

    state.set_status(f"connecting: {desc}")
    try:
        while not stop.is_set() and not parent_gone(parent_pid):
            # ---- connect
            try:
                transport.open()
            except Exception as exc:  # noqa: BLE001 - any failure means "not there yet"
                state.add("open_failures")
                state.set_status(f"disconnected: {desc}: {exc}")
                stop.wait(backoff)
                backoff = min(backoff * 2, reconnect_max_s)
                continue
            desc = getattr(transport, "description", desc)
            state.add("connects")
            if ever_connected:
                state.add("reconnects")
            ever_connected = True
            backoff = reconnect_min_s
            state.put(connected=1)
            state.set_status(f"connected: {desc}")
            # ---- read
            try:
                while not stop.is_set() and not parent_gone(parent_pid):
                    data = transport.read(read_timeout_s)
                    if not data:
                        continue
                    frames = parser.feed(data)
                    sync_stats()
                    if frames:
                        last = frames[-1]
                        state.put(last_train_id=last.train_id, last_beam_mode=last.beam_mode,
                                  last_host_time_ns=last.host_time_ns)
                        emit(frames)
            except Exception as exc:  # noqa: BLE001 - unplugged or I/O error
                state.add("disconnects")
                state.set_status(f"disconnected: {desc}: {exc}")
            finally:
                state.put(connected=0)
                parser.reset_partial()
                sync_stats()
                try:
                    transport.close()
                except Exception:  # noqa: BLE001
                    pass
    finally:
        try:
            transport.close()
        except Exception:  # noqa: BLE001
            pass
        state.put(connected=0)
        state.set_status("stopped" if stop.is_set() else "stopped: parent process gone")
