"""pymepix import path for :class:`AcquisitionStage` (lives in :mod:`tango_tpx.pipeline.stage`)."""

from ..pipeline.stage import AcquisitionStage

__all__ = ["AcquisitionStage"]
