"""pymepix import path ``pymepix.processing.usbtrainid.USBTrainID``.

The implementation lives in :mod:`tango_tpx.trainid` (process reader, thread reader,
parser, simulated receiver); this module only re-exports it.
"""

from tango_tpx.trainid.protocol import TrainFrame, TrainIdLog
from tango_tpx.trainid.receiver import TrainIdReader, USBTrainID

__all__ = ["USBTrainID", "TrainIdReader", "TrainFrame", "TrainIdLog"]
