"""PipelineCentroidCalculator: centroiding workers of the live pipeline (pymepix name).

Each worker process gets whole ``EventData`` chunks (the decode stage never splits an
event across chunks), computes centroids with
:class:`tango_tpx.processing.centroids.CentroidCalculator` (one process per worker: the
fan-out is this stage's process count) and sends ``CentroidData`` tagged with the input's
sequence number, so the collector can restore the order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..processing.centroids import CentroidCalculator
from ..processing.events import Events
from .baseplugin import BasePipelineObject
from .messages import MessageType


class PipelineCentroidCalculator(BasePipelineObject):
    """Centroid worker.

    centroid_calculator: a configured ``CentroidCalculator`` (its own process pool is not
    used: ``number_of_processes`` is forced to 1), or None to build one from ``**calc_args``
    (``dbscan_clustering``, ``tot_threshold`` (ToT counts), ``cent_timewalk_lut`` ...).
    """

    accepts = frozenset({MessageType.EventData})
    msg_ring_ok = True        # events are only read inside process(); centroids are new arrays

    def __init__(self, centroid_calculator: Any = None, input_queue=None, create_output: bool = True,
                 num_outputs: int = 1, shared_output=None, *, name: str = "Centroid",
                 calc_args: dict | None = None, **kwargs: Any) -> None:
        super().__init__(name, input_queue=input_queue, create_output=create_output,
                         num_outputs=num_outputs, shared_output=shared_output, **kwargs)
        self.centroid_calculator = centroid_calculator
        self.calc_args = dict(calc_args or {})

    @classmethod
    def warm_up(cls) -> None:
        ev = Events(np.zeros(3, np.int64), np.array([1, 1, 2], np.uint16), np.array([1, 2, 1], np.uint16),
                    np.array([4096, 4096, 4096], np.int64), np.array([5, 5, 5], np.uint16),
                    np.array([4096, 4096, 4096], np.int64))
        for db in (False, True):
            CentroidCalculator(dbscan_clustering=db).process(ev)

    def pre_run(self) -> None:
        if self.centroid_calculator is None:
            self.centroid_calculator = CentroidCalculator(**self.calc_args)
        self.centroid_calculator.number_of_processes = 1
        self.centroid_calculator.process(Events.empty())   # load the numba kernels now

    def process(self, data_type=None, data=None):
        if data_type != MessageType.EventData:
            return None
        w = self.wiring
        cents = self.centroid_calculator.process(data)
        w.counters.worker_add(w.worker_index, "chunks_in", 1)
        w.counters.worker_add(w.worker_index, "hits_in", len(data))
        w.counters.worker_add(w.worker_index, "centroids", len(cents))
        self.pushOutput(MessageType.CentroidData, cents, seq=self.current_seq)
        return None

    def post_run(self):
        try:
            self.centroid_calculator.close()
        except Exception:
            pass
        return None
