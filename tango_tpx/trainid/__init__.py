"""European XFEL train IDs from the USB timing receiver.

* :mod:`.protocol`: frame format, :class:`FrameParser`, :class:`TrainIdLog`, side file
  (``<raw>.trainid.csv``) and HDF5 helpers (``timing/trainID/...``).
* :mod:`.serial` / :mod:`.usb`: transports (tty/pty path; pyusb with FTDI/CP210x/CH340/PL2303).
* :mod:`.receiver`: :class:`USBTrainID` (process), :class:`TrainIdReader` (thread), built on
  :mod:`.readloop` (read loop, orphan guard), :mod:`.shared` (shared-memory status and
  counters) and :mod:`.zmqpub` (ZMQ PUB).
* :mod:`.simreceiver`: :class:`SimulatedReceiver` (pty).
* :mod:`.cli`: ``tango-tpx trainid-sim`` and ``tango-tpx trainid-read``.

Quick start::

    from tango_tpx.trainid import USBTrainID, TrainIdLog
    log = TrainIdLog()
    reader = USBTrainID(source="/dev/ttyUSB0", callback=log.append)
    reader.start()            # ... reader.status, reader.counters(), reader.latest()
    reader.stop()
"""

from .protocol import (ETX, FRAME_BYTES, PARSER_STATS, STX, TRAINID_DTYPE, FrameParser, TrainFrame,
                       TrainIdLog, TrainIdSideFile, TransportError, array_to_frames, crc, encode_frame,
                       frames_to_array, read_side_file, side_file_path, write_side_file)
from .receiver import (COUNTER_NAMES, ZMQ_TOPIC, SimCounts, SimFaults, SimulatedReceiver,
                       TrainIdReader, USBTrainID, decode_zmq_message, make_transport)

__all__ = [
    "STX", "ETX", "FRAME_BYTES", "PARSER_STATS", "TRAINID_DTYPE", "FrameParser", "TrainFrame",
    "TrainIdLog", "TrainIdSideFile", "TransportError", "array_to_frames", "crc", "encode_frame",
    "frames_to_array", "read_side_file", "side_file_path",
    "write_side_file", "COUNTER_NAMES", "ZMQ_TOPIC", "SimCounts", "SimFaults",
    "SimulatedReceiver", "TrainIdReader", "USBTrainID", "decode_zmq_message", "make_transport",
]
