"""pymepix import path: the live acquisition pipelines live in :mod:`tango_tpx.pipeline`."""

from ..pipeline.acquisition import AcquisitionPipeline, CentroidPipeline, PixelPipeline

__all__ = ["AcquisitionPipeline", "PixelPipeline", "CentroidPipeline"]
