"""What turns one batch of whole events into ``raw/*`` columns and centroids.

The converter's calling process holds one :class:`~tango_tpx.processing.segmenter.Segmenter`
(in :class:`~tango_tpx.io.engine.StreamState`) that cuts the decoded stream into
batch-sized segments of whole events (at least ``batch_hits`` pixels); each batch is turned
into events by :func:`~tango_tpx.processing.segmenter.segment_events` and into centroids by a
``CentroidCalculator`` (:func:`process_batch`), in this process or in a worker of
:mod:`tango_tpx.io.pool`. Batch boundaries depend only on the input, the read chunk size and
``batch_hits``; an event never spans two batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tango_tpx.processing.segmenter import Segment, count_before, gather_pieces, segment_events, window_units

#: A batch is a segment of the stream: pixels of whole events and their triggers.
Batch = Segment


@dataclass
class BatchResult:
    raw: dict            # raw/* file columns
    centroids: Any       # Centroids or None
    stats: dict          # pixel statistics of the batch (PIXEL_STATS)


PIXEL_STATS = ("pixels_in", "events_pixels", "before_first_trigger", "outside_window", "late_pixels")


def process_batch(batch: Batch, state: dict, out: dict | None = None) -> BatchResult:
    """Events of one batch (it holds whole events) and their centroids.

    ``out``: arrays to write the ``raw/*`` columns into (a shared-memory slot), at least as
    long as the batch; without it new arrays are returned.
    """
    from tango_tpx.io.hdf5 import events_columns

    ev, before, outside = segment_events(batch, state["window_units"])
    cols = events_columns(ev, out)
    cen = state["calc"].process(ev) if state["calc"] is not None and len(ev) else None
    stats = {"pixels_in": int(batch.n), "events_pixels": len(ev), "before_first_trigger": before,
             "outside_window": outside, "late_pixels": 0}
    return BatchResult(cols, cen, stats)


def make_calculator(params: dict):
    """A one-process ``CentroidCalculator`` for the converter's ``params`` (a backend other
    than the built-in ones: :class:`~tango_tpx.processing.centroids.RegisteredCalculator`)."""
    from tango_tpx.processing.centroids import ALGORITHMS, CentroidCalculator, RegisteredCalculator

    if params.get("clustering") is not None and params["clustering"].algorithm not in ALGORITHMS:
        return RegisteredCalculator(params["clustering"], params["cent_timewalk_lut"])

    return CentroidCalculator(cent_timewalk_lut=params["cent_timewalk_lut"], number_of_processes=1,
                              clustering_args=params["clustering_args"],
                              dbscan_clustering=params["dbscan"], tot_threshold=params["tot_threshold"])


def make_state(params: dict) -> dict:
    """What :func:`process_batch` needs besides the batch: event window (fine units) and calculator."""
    return {"window_units": window_units(params["window"]),
            "calc": make_calculator(params) if params["centroiding"] else None}


__all__ = ["Batch", "BatchResult", "PIXEL_STATS", "count_before", "gather_pieces", "make_calculator",
           "make_state", "process_batch"]
