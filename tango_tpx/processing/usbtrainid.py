"""pymepix import path ``USBTrainID(name='USBTrainId')``: European XFEL train IDs in a process.

This ``USBTrainID`` is a ``multiprocessing.Process`` (pymepix's shape): ``start()`` runs
:meth:`run` in the child, which reads the timing receiver (``connect_device`` opens it,
with reconnects) and puts ``list[TrainFrame]`` batches on :attr:`queue`; ``stop()`` ends
it. The reader itself (serial or pyusb receiver, parser, reconnects, ZeroMQ publishing,
simulated receiver) lives in :mod:`tango_tpx.trainid`, whose
:class:`tango_tpx.trainid.receiver.USBTrainID` offers the same with callbacks, counters
and status for the Tango device.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

from tango_tpx.trainid.protocol import TrainFrame, TrainIdLog
from tango_tpx.trainid.receiver import (TrainIdReader, _child_main, _drain_batches, _SharedFlag, _SharedState,
                                        make_transport)


class USBTrainID(mp.Process):
    """Train-ID reader process. name: process name; source: ``'/dev/ttyUSB0'`` (tty),
    ``'usb[:VID:PID]'`` (pyusb) or a transport object; zmq_address/zmq_format: also
    publish the frames on a ZeroMQ PUB socket (see :mod:`tango_tpx.trainid.receiver`)."""

    def __init__(self, name: str = "USBTrainId", source: Any = "/dev/ttyUSB0", *, queue_size: int = 100_000,
                 zmq_address: str | None = None, zmq_format: str = "json", **loop_kwargs: Any) -> None:
        super().__init__(name=name, daemon=True)
        make_transport(source)               # validate in the parent: a clear error now
        self.source = source
        self.zmq_address, self.zmq_format = zmq_address, zmq_format
        self.queue = mp.Queue(queue_size)
        self._state = _SharedState(mp.get_context())
        self._stop_flag = _SharedFlag(mp.get_context())
        self._parent_pid = os.getpid()
        self._loop_kwargs = loop_kwargs

    def connect_device(self):
        """Open the receiver (pymepix's hook); returns the open transport."""
        transport = make_transport(self.source)
        transport.open()
        return transport

    def run(self) -> None:
        """Child: read until :meth:`stop` (reconnecting as needed)."""
        _child_main(self.source, self._stop_flag, self._state, self.queue, self.zmq_address, self.zmq_format,
                    self._parent_pid, self._loop_kwargs)

    @property
    def status(self) -> str:
        """'connecting: ...', 'connected: <port>', 'disconnected: <reason>', 'stopped', 'fault: ...'."""
        return self._state.get_status()

    def get(self, timeout_s: float = 0.0) -> list[TrainFrame]:
        """All frames now in :attr:`queue` (waiting up to ``timeout_s`` for the first batch)."""
        return _drain_batches(self.queue, timeout_s)

    def stop(self, timeout_s: float = 2.0) -> None:
        """End the child (terminate it if it does not end within ``timeout_s``)."""
        self._stop_flag.set()
        if self.pid is not None:
            self.join(timeout_s)
            if self.is_alive():
                self.terminate()
                self.join(1.0)


__all__ = ["USBTrainID", "TrainIdReader", "TrainFrame", "TrainIdLog"]
