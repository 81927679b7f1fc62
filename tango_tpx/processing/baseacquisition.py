"""pymepix import path: ``AcquisitionPipeline(name, data_queue)`` and ``AcquisitionStage``.

:meth:`AcquisitionPipeline.addStage` accepts tango-tpx's built-in stages (zero-copy
transport) and pymepix-style stages: subclasses of
:class:`~tango_tpx.processing.basepipeline.BasePipelineObject` that override ``process``,
run after the built-in stages on pickled ``multiprocessing`` queues, as in pymepix.
"""

from __future__ import annotations

from typing import Any

from ..pipeline.acquisition import AcquisitionPipeline as _ZeroCopyPipeline
from ..pipeline.stage import AcquisitionStage


class AcquisitionPipeline(_ZeroCopyPipeline):
    """A chain of stages (pymepix). Messages reach ``data_queue`` in pymepix's shapes
    (``typed_records=False``, the default here) or as typed records; keyword extras as
    :class:`tango_tpx.pipeline.acquisition.AcquisitionPipeline`."""

    def __init__(self, name: str, data_queue: Any, *, typed_records: bool = False, **kwargs: Any) -> None:
        super().__init__(name, data_queue, typed_records=typed_records, **kwargs)


__all__ = ["AcquisitionPipeline", "AcquisitionStage"]
