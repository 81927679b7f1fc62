"""pymepix import path ``pymepix.processing.logic``: the processing steps without processes.

:class:`~.packet_processor.PacketProcessor` (raw bytes -> pixels, events, timestamps,
triggers) and :class:`~.centroid_calculator.CentroidCalculator` (events -> centroids),
with pymepix's signatures, shapes and units, computed by tango-tpx's decoder, event
builder and clustering.
"""

from .centroid_calculator import CentroidCalculator
from .packet_processor import PacketProcessor, PixelOrientation

__all__ = ["PacketProcessor", "PixelOrientation", "CentroidCalculator"]
