"""pymepix import paths of the pipeline stage classes (they live in :mod:`tango_tpx.pipeline`)."""

from ..pipeline.baseplugin import BasePipelineObject
from ..pipeline.centroid import PipelineCentroidCalculator
from ..pipeline.messages import MessageType
from ..pipeline.packetprocessor import PipelinePacketProcessor
from ..pipeline.raw2disk import Raw2Disk
from ..pipeline.udpsampler import UdpSampler

__all__ = ["BasePipelineObject", "MessageType", "UdpSampler", "Raw2Disk", "PipelinePacketProcessor",
           "PipelineCentroidCalculator"]
