"""Live acquisition pipeline: processes, ZeroMQ transport, UDP receiver, recording, counters.

Public entry points: :class:`~tango_tpx.pipeline.controller.AcquisitionController` (what the
Tango device wraps) and the pymepix-style pipelines in :mod:`tango_tpx.pipeline.acquisition`.
"""

__all__ = ["AcquisitionController", "AcquisitionPipeline", "PixelPipeline", "CentroidPipeline",
           "MessageType"]


def __getattr__(name: str):
    if name == "AcquisitionController":
        from .controller import AcquisitionController
        return AcquisitionController
    if name in ("AcquisitionPipeline", "PixelPipeline", "CentroidPipeline"):
        from . import acquisition
        return getattr(acquisition, name)
    if name == "MessageType":
        from .messages import MessageType
        return MessageType
    raise AttributeError(name)
