"""pymepix import path of the centroid stage:
``PipelineCentroidCalculator(centroid_calculator=CentroidCalculator(), ...)``.

The stage is tango-tpx's zero-copy centroid worker
(:class:`tango_tpx.pipeline.centroid.PipelineCentroidCalculator`) running the clustering
configured by a pymepix-style :class:`~.logic.centroid_calculator.CentroidCalculator`
(its settings are read when the acquisition starts).
"""

from __future__ import annotations

from typing import Any

from ..pipeline.centroid import PipelineCentroidCalculator as _ZeroCopyStage
from .logic.centroid_calculator import CentroidCalculator


class PipelineCentroidCalculator(_ZeroCopyStage):
    """Centroid stage with pymepix's signature (one process per worker; the pipeline's
    ``numBlobProcesses`` sets how many)."""

    def __init__(self, centroid_calculator: CentroidCalculator = CentroidCalculator(), input_queue: Any = None,
                 create_output: bool = True, num_outputs: int = 1, shared_output: Any = None,
                 **kwargs: Any) -> None:
        if isinstance(centroid_calculator, CentroidCalculator):
            centroid_calculator = centroid_calculator.native()
        kwargs.setdefault("name", "PipelineCentroidCalculator")
        super().__init__(centroid_calculator, input_queue, create_output, num_outputs, shared_output, **kwargs)


__all__ = ["PipelineCentroidCalculator"]
