"""The conversion loop over a word range of one input, with its state made explicit.

Data flow (one pass, streaming)::

    calling process                                         worker processes (N >= 2)
    iter_words -> Decoder -+-> TDC edges ------------------> triggers/trigger{1,2}/time
                           +-> Segmenter: triggers ----> timing/timepix/*
                           +-> pixels -> Segmenter: batches of whole events
                                          --(shared memory)--> segment_events
                                                               + CentroidCalculator
                              raw/*, centroided/*  <--(shared memory, in order)--

Everything sequential lives in a :class:`StreamState`: the decoder (time-extension epoch,
global-time anchor, .tpx3 chip) and the :class:`~tango_tpx.processing.segmenter.Segmenter`
(trigger numbering and TDC counters for lost-trigger counting, the held-back pixels of open
events, the open triggers, the last boundary released, the newest time seen; time-walk is
applied to the pixels there). :func:`run_range` continues a state over the words
``[start, stop)`` of a file; with ``final`` it also releases the last, open batch. So a
conversion may be cut at any multiple of the read chunk into ranges that run one after the
other (appending inputs to a run) or, from states recorded by a cheap pre-scan
(:mod:`tango_tpx.io.sections`), side by side: the concatenated outputs are those of one
pass, bit for bit, because the batches are the same.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tango_tpx.io.batching import PIXEL_STATS, BatchResult
from tango_tpx.processing.settings import ClusteringConfig, DetectorLayout, EventWindow, TimeWalk

#: Words read and decoded per step (8 MiB).
DEFAULT_CHUNK_WORDS = 1 << 20
#: Smallest batch (pixels) handed to a worker; batches are cut at trigger times.
DEFAULT_BATCH_HITS = 1 << 19


@dataclass(frozen=True)
class EngineParams:
    """Everything that decides the output of a conversion (picklable, sent to workers).

    framing 'raw' | 'tpx3'; detector, event_window, clustering, timewalk: the typed
    settings (:mod:`tango_tpx.processing.settings`); centroiding: cluster the events;
    pymepix_args: ``clustering_args`` keys that are not clustering settings (e.g.
    ``triggers_processed``), passed on to the calculator; chunk_words: words per read (batch
    boundaries depend on it); batch_hits: pixels; start_time_ns: wall clock of the stream's
    start (ns since the Unix epoch, the raw file header; 0 when unknown), added to the
    trigger times in ``timing/timepix/timestamp``.
    """

    framing: str
    detector: DetectorLayout
    event_window: EventWindow
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    timewalk: TimeWalk = field(default_factory=TimeWalk)
    centroiding: bool = True
    pymepix_args: dict = field(default_factory=dict)
    chunk_words: int = DEFAULT_CHUNK_WORDS
    batch_hits: int = DEFAULT_BATCH_HITS
    start_time_ns: int = 0

    # the flat names the stages and workers read
    @property
    def layout(self) -> str:
        return self.detector.layout

    @property
    def window(self) -> tuple[float, float]:
        """(min, max) ToF in s."""
        return self.event_window.as_tuple()

    @property
    def tw_lut(self) -> np.ndarray | None:
        return self.timewalk.pixel_lut

    @property
    def cent_lut(self) -> np.ndarray | None:
        return self.timewalk.centroid_lut

    @property
    def dbscan(self) -> bool:
        return self.clustering.algorithm == "dbscan"

    @property
    def tot_threshold(self) -> int:
        return self.clustering.tot_threshold

    @property
    def clustering_args(self) -> dict:
        """:attr:`clustering` as ``CentroidCalculator`` clustering_args (plus :attr:`pymepix_args`)."""
        c = self.clustering
        return dict(self.pymepix_args, epsilon=c.eps, min_samples=c.min_samples, chunk_size_limit=c.chunk_hits,
                    radius=c.radius, time_window_ns=c.time_window_ns, min_cluster_size=c.min_cluster_size)

    def worker_params(self) -> dict:
        """What :func:`tango_tpx.io.batching.make_state` needs (events + clustering)."""
        return dict(cent_timewalk_lut=self.cent_lut, clustering_args=self.clustering_args,
                    dbscan=self.dbscan, tot_threshold=self.tot_threshold, window=self.window,
                    centroiding=bool(self.centroiding), clustering=self.clustering)


class StreamState:
    """Sequential state of one stream between two word ranges (see the module docstring)."""

    def __init__(self, params: EngineParams, source: str | Path | None = None):
        """``source``: the file the stream starts with; the decoder is anchored on its first
        global-time pair, so a recording taken up mid-stream past the 26.8 s rollover decodes
        in its true epoch (a file without any pair decodes from epoch 0)."""
        from tango_tpx.processing.events import DEFAULT_REORDER_WINDOW_NS
        from tango_tpx.processing.segmenter import Segmenter, window_units
        from tango_tpx.tpx3.codec import Decoder, first_global_time
        from tango_tpx.tpx3.files import map_words

        self.decoder = Decoder(framing=params.framing, layout=params.layout)
        if source is not None:
            self.decoder.anchor(first_global_time(map_words(source), params.framing))
        # triggers are numbered (and lost ones counted) here, in stream order; batches of
        # at least batch_hits pixels of whole events are cut here
        slack = int(round(DEFAULT_REORDER_WINDOW_NS * 4096 / 25))
        self.segmenter = Segmenter(window_units(params.window), slack, params.tw_lut,
                                   min_pixels=max(1, int(params.batch_hits)))

    def dumps(self) -> bytes:
        """The state as bytes (pickle; the pending pixels are most of it)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> "StreamState":
        """A state saved by :meth:`dumps` (by this software: pickle is not for untrusted data)."""
        state = pickle.loads(data)
        if not isinstance(state, StreamState):
            raise TypeError("not a tango-tpx stream state")
        return state

    def totals(self, pixel_stats: dict, hits: int) -> tuple[dict, dict]:
        """(word counts, processing statistics) of everything run through this state so far;
        ``pixel_stats``: the summed per-batch statistics of the workers, ``hits`` the
        pixels decoded."""
        seg = self.segmenter.stats
        proc = {k: int(seg[k]) for k in ("triggers", "lost_triggers", "lost_tdc_edges", "late_triggers")}
        proc.update({k: int(pixel_stats.get(k, 0)) for k in PIXEL_STATS})
        proc["pixels_in"] = int(hits)
        proc["late_pixels"] += int(seg["late_pixels"])
        return self.decoder.counts.as_dict(), proc


@dataclass
class RangeCounts:
    """What one :func:`run_range` wrote (rows) and read."""

    words: int = 0
    hits: int = 0
    trigger_edges: int = 0
    triggers: int = 0
    events: int = 0
    centroids: int = 0
    pixel_stats: dict = field(default_factory=lambda: dict.fromkeys(PIXEL_STATS, 0))

    def add(self, other: "RangeCounts") -> None:
        """Add another range's counts to these."""
        for k in ("words", "hits", "trigger_edges", "triggers", "events", "centroids"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k, v in other.pixel_stats.items():
            self.pixel_stats[k] = self.pixel_stats.get(k, 0) + v


def run_range(params: EngineParams, state: StreamState, path: str | Path, start_word: int,
              stop_word: int | None, final: bool, writer: Any = None, workers: Any = None,
              tick: Callable[[int, RangeCounts], Any] | None = None) -> RangeCounts:
    """Continue ``state`` over the words ``[start_word, stop_word)`` of ``path``.

    writer: an :class:`~tango_tpx.io.hdf5.Hdf5Writer` for the trigger tables (None: nothing
    is written and batches are dropped: the pre-scan). workers: from :func:`open_workers`,
    writing the batches to the same writer (None with ``writer`` None).
    ``final``: release the last, open batch (end of the stream). tick(words read, counts)
    after every chunk. ``start_word`` must be a multiple of ``params.chunk_words`` for the
    batches to be those of one pass.
    """
    from tango_tpx.tpx3.files import iter_words

    counts = RangeCounts() if workers is None else workers.counts
    dec, seg = state.decoder, state.segmenter
    for words in iter_words(path, chunk_words=params.chunk_words, start_word=start_word, stop_word=stop_word):
        decoded = dec.decode(words)
        counts.words += len(words)
        px, tr = decoded.pixels, decoded.triggers
        counts.hits += len(px)
        counts.trigger_edges += len(tr)
        table = seg.add_triggers(tr)
        counts.triggers += len(table)
        if writer is not None:
            writer.append_triggers(tr)
            writer.append_trigger_table(table, start_time_ns=params.start_time_ns)
        seg.add_pixels(px)
        batch = seg.release()
        if batch is not None and workers is not None:
            workers.submit(batch)
        if workers is not None:
            workers.collect_ready()
        if tick is not None:
            tick(counts.words, counts)
    if final:
        batch = seg.release(final=True)
        if batch is not None and workers is not None:
            workers.submit(batch)
    if workers is not None:
        workers.drain()
    return counts


class BatchSink:
    """The pool's sink: writes one batch's ``raw/*`` and centroids to ``writer`` (set once the
    file is open: the workers are started first) and counts them in ``counts``."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.counts = RangeCounts()

    def __call__(self, res: BatchResult) -> None:
        self.writer.append_columns("raw", res.raw)
        self.counts.events += len(res.raw["x"])
        if res.centroids is not None and len(res.centroids):
            self.writer.append_centroids(res.centroids)
            self.counts.centroids += len(res.centroids)
        for k, v in res.stats.items():
            self.counts.pixel_stats[k] = self.counts.pixel_stats.get(k, 0) + v


def open_workers(params: EngineParams, number_of_processes: int, worker_kind: str = "auto"):
    """A :class:`~tango_tpx.io.pool.Workers` pool (``worker_kind``: 'auto', 'threads' or
    'processes') whose ``sink`` (a :class:`BatchSink`) writes to ``workers.sink.writer`` and
    counts the range it serves in ``workers.counts``. Start it before opening the HDF5
    writer (whose compression threads would rule out ``fork``)."""
    from tango_tpx.io.pool import Workers

    sink = BatchSink()
    workers = Workers(params.worker_params(), number_of_processes, sink,
                      slot_pixels=params.batch_hits + params.chunk_words, kind=worker_kind)
    workers.counts = sink.counts
    return workers


__all__ = ["DEFAULT_CHUNK_WORDS", "DEFAULT_BATCH_HITS", "EngineParams", "StreamState", "RangeCounts",
           "run_range", "BatchSink", "open_workers"]
