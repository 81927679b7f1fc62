"""Processing: the algorithms (events, clustering, centroids, time-walk) and, at pymepix's
import paths, the pymepix face (``acquisition``, ``baseacquisition``, ``basepipeline``,
``datatypes``, ``pipeline_packet_processor``, ``pipeline_centroid_calculator``,
``rawfilesampler``, ``rawtodisk``, ``udpsampler``, ``usbtrainid``, ``logic``).

As in pymepix, ``from tango_tpx.processing import PixelPipeline, CentroidPipeline,
MessageType`` works; those names are imported on first use (the algorithms do not need
the live pipeline).
"""

from __future__ import annotations

_LAZY = {
    "AcquisitionPipeline": "acquisition",
    "PixelPipeline": "acquisition",
    "CentroidPipeline": "acquisition",
    "MessageType": "datatypes",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
