"""Offline conversion: pymepix .raw / ASI .tpx3 file -> HDF5 (raw events, centroids, triggers).

:func:`convert_file` converts one input in one streaming pass (:mod:`tango_tpx.io.engine`):
decoding is sequential (time extension state) and cheap and runs in the calling process,
which also numbers the triggers and cuts the pixel stream at trigger times into batches of
whole events; each batch is turned into events and centroids on ``number_of_processes``
worker processes (:mod:`tango_tpx.io.pool`; 1 = in the calling process), results are
written in submission order. Batch boundaries depend only on the input, ``chunk_words`` and
``batch_hits``, never on the number of processes, and an event never spans two batches: the
output is identical for any ``number_of_processes`` (and equal to one sequential
PacketProcessor over the whole stream). Many inputs, Dask, one file split into sections and
appending to a run: :mod:`tango_tpx.io.batch`, :mod:`tango_tpx.io.sections`,
:mod:`tango_tpx.io.append`.

Memory bound (independent of the file size), with the defaults (``chunk_words`` = 1 Mi
words, ``batch_hits`` = 512 Ki): calling process ~0.4 GB (one chunk of words and its decoded
hits, the pending pixels, HDF5 chunk buffers and queued compressed chunks ~40 MB, the shared
slots: 2 N x (``batch_hits`` + ``chunk_words``) x 39 B = 61 MB each); each worker ~0.35 GB.
Only an event larger than a batch (rare triggers with an unlimited window) makes it grow.

Costs: ``benchmarks/convert.py`` measures them (deflate and blosc-lz4 side by side).

Safety: the output is written to ``OUTPUT.partial`` with the file attribute
``complete = False``; only after everything is written is ``complete`` set and the file
renamed to ``OUTPUT`` (atomically, replacing an existing output only with ``force``).
Ctrl-C / SIGTERM close the partial file as readable with ``complete = False`` (and
``interrupted`` naming the reason); a SIGKILL leaves at most ``OUTPUT.partial``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from tango_tpx.io.compress import DEFAULT_COMPRESSION, default_threads
from tango_tpx.io.engine import (
    DEFAULT_BATCH_HITS,
    DEFAULT_CHUNK_WORDS,
    RangeCounts,
    StreamState,
    open_workers,
    run_range,
)
from tango_tpx.io.hdf5 import Hdf5Writer
from tango_tpx.io.job import (
    DEFAULT_EVENT_WINDOW,
    PARTIAL_SUFFIX,
    ConversionError,
    ConversionInterrupted,
    ConvertJob,
    ConvertResult,
    ConvertStatus,
    detect_layout,
    partial_path,
    prepare_job,
)
from tango_tpx.io.pool import ProcessTuning, check_worker_kind
from tango_tpx.processing.settings import ClusteringConfig


def convert_file(input: str | os.PathLike, output: str | os.PathLike, *,
                 number_of_processes: int = 1,
                 centroiding: bool = True,
                 dbscan: bool = False,
                 event_window: tuple[float, float] = DEFAULT_EVENT_WINDOW,
                 timewalk_file: str | os.PathLike | None = None,
                 cent_timewalk_file: str | os.PathLike | None = None,
                 clustering_args: dict | None = None,
                 tot_threshold: int = 0,
                 layout: str = "auto",
                 force: bool = False,
                 compression: str = DEFAULT_COMPRESSION,
                 chunk_words: int = DEFAULT_CHUNK_WORDS,
                 batch_hits: int = DEFAULT_BATCH_HITS,
                 trainid_file: str | os.PathLike | bool | None = None,
                 progress_callback: Callable[[float], Any] | None = None,
                 status_callback: Callable[[ConvertStatus], Any] | None = None,
                 clustering: ClusteringConfig | None = None,
                 worker_kind: str = "auto",
                 ) -> ConvertResult:
    """Convert one raw/.tpx3 file to HDF5 (layout: :mod:`tango_tpx.io.hdf5`).

    input: pymepix .raw (with or without the 8-byte header) or ASI .tpx3 (single or quad).
    output: the .h5 path; ``FileExistsError`` if it exists and ``force`` is false.
    number_of_processes: workers for events + clustering (1 = all in this process); the
        output is identical for any number. worker_kind: 'auto' (threads of this process for
        the built-in fast clustering, whose kernels release the GIL; processes for DBSCAN and
        registered backends), 'threads' or 'processes'; the output is the same.
    centroiding: False leaves ``centroided/*`` empty. dbscan: pymepix's DBSCAN instead of the
    fast connected-components clustering. event_window: (min, max) ToF in s, inclusive;
    default (0, inf) keeps every hit after its trigger. timewalk_file / cent_timewalk_file:
    ``.npy`` tables in ns per ToT bin (:mod:`tango_tpx.processing.timewalk`).
    clustering_args: pymepix ``clustering_args`` keys (see ``CentroidCalculator``).
    tot_threshold: keep hits with ToT > threshold for clustering (ToT counts).
    layout: 'auto' (quad for multi-chip .tpx3), 'single' or 'quad'.
    compression: one of :data:`tango_tpx.io.compress.COMPRESSIONS`; the default 'deflate'
        is read by every HDF5 reader, 'blosc-lz4', 'blosc-zstd' and 'lz4' need hdf5plugin.
    trainid_file: train IDs for ``timing/trainID`` (host time stamps ns, train id, beam mode):
        None = the side file ``<input>.trainid.csv`` written by the live pipeline, if present
        (a malformed one is skipped with a warning); a path = that ``*.trainid.csv`` file
        (must exist and be well formed); False = none. Recorded in the file attributes
        ``trainid_file`` (absolute path or '') and ``trainid_rows``.
    progress_callback(fraction 0..1) after every chunk; status_callback(ConvertStatus) too.
    clustering: a :class:`~tango_tpx.processing.settings.ClusteringConfig` instead of
    ``dbscan``, ``tot_threshold`` and the clustering keys of ``clustering_args``;
    event_window and layout may also be an ``EventWindow`` / ``DetectorLayout``.

    Raises FileNotFoundError / IsADirectoryError / ValueError for an unreadable input,
    ConversionError when nothing in it could be converted (no output is left then),
    ConversionInterrupted (a KeyboardInterrupt) on Ctrl-C / SIGTERM.
    """
    t0 = time.perf_counter()
    job = prepare_job(input, output, number_of_processes=number_of_processes, centroiding=centroiding,
                      dbscan=dbscan, event_window=event_window, timewalk_file=timewalk_file,
                      cent_timewalk_file=cent_timewalk_file, clustering_args=clustering_args,
                      tot_threshold=tot_threshold, layout=layout, force=force, compression=compression,
                      chunk_words=chunk_words, batch_hits=batch_hits, trainid_file=trainid_file,
                      clustering=clustering)
    return convert_range_file(job, job.out_path, number_of_processes=number_of_processes,
                              progress_callback=progress_callback, status_callback=status_callback, t0=t0,
                              worker_kind=worker_kind)


def convert_range_file(job: ConvertJob, out_path: Path, *, number_of_processes: int = 1,
                       state: StreamState | None = None, start_word: int = 0, stop_word: int | None = None,
                       final: bool = True, train_ids: bool = True, extra_attrs: dict | None = None,
                       progress_callback: Callable[[float], Any] | None = None,
                       status_callback: Callable[[ConvertStatus], Any] | None = None,
                       t0: float | None = None, worker_kind: str = "auto") -> ConvertResult:
    """Convert the words ``[start_word, stop_word)`` of ``job``'s input, continuing ``state``
    (None: a fresh one, the start of the stream), to the complete HDF5 file ``out_path``
    (written as ``out_path.partial`` and renamed when complete; an existing file is replaced).

    ``final``: this range ends the stream (the last open event is released; otherwise it is
    left in ``state``). ``train_ids``: write the job's train IDs. The file attribute
    ``range_counts`` (JSON) records what this range wrote; the result's ``word_counts`` and
    ``processing`` are the totals of the stream so far. worker_kind: as in :func:`convert_file`.
    """
    t0 = time.perf_counter() if t0 is None else t0
    check_worker_kind(worker_kind)   # before any work
    in_path, info, params = job.in_path, job.info, job.params
    state = StreamState(params, in_path) if state is None else state
    result = job.new_result()
    result.output = str(Path(out_path).resolve())
    partial = partial_path(out_path)
    workers = writer = None
    stop = info.n_words if stop_word is None else min(int(stop_word), info.n_words)
    n_total = max(stop - start_word, 1)

    def tick(words_done: int, counts: RangeCounts) -> None:
        fraction = words_done / n_total
        if progress_callback is not None:
            progress_callback(fraction)
        if status_callback is not None:
            status_callback(ConvertStatus(fraction, words_done, counts.hits, counts.events, counts.centroids,
                                          time.perf_counter() - t0))

    with ProcessTuning(ConversionInterrupted):
        try:
            # workers first (forked before the HDF5 file and its compression threads exist)
            workers = open_workers(params, number_of_processes, worker_kind)
            if workers.inline_reason:
                result.warnings.append(workers.inline_reason)
            writer = Hdf5Writer(partial, job.attrs, overwrite=True, compression=job.compression,
                                threads=default_threads(1 if workers.inline_reason else number_of_processes))
            workers.sink.writer = writer
            if train_ids and job.train_ids is not None and len(job.train_ids):
                writer.append_train_ids(job.train_ids)
                result.train_ids = int(len(job.train_ids))
            counts = run_range(params, state, in_path, start_word, stop, final, writer, workers, tick)
            workers.close()
            workers = None
            _fill_result(result, state, counts)
            result.range_counts = counts  # what this range alone wrote (sections, appends)
            if result.hits == 0 and result.trigger_edges == 0 and final and start_word == 0:
                raise ConversionError(f"{in_path}: no pixel hits and no trigger words found "
                                      f"({result.words} words: {result.word_counts}); nothing to convert")
            if result.triggers == 0:
                result.warnings.append("no TDC1 rising edges (triggers): no events")
            result.seconds = time.perf_counter() - t0
            writer.set_attrs(word_counts=result.word_counts, processing_stats=result.processing,
                             trailing_bytes=int(info.trailing_bytes), elapsed_s=float(result.seconds),
                             hits_decoded=int(result.hits), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             range_counts=asdict(counts), **dict(extra_attrs or {}))
            writer.close(complete=True)
            os.replace(partial, out_path)
            result.complete = True
        except BaseException as exc:
            _fail(exc, workers, writer, partial)
            raise
    result.seconds = time.perf_counter() - t0
    return result


def _fill_result(result: ConvertResult, state: StreamState, counts: RangeCounts) -> None:
    """Rows written by this range; word counts and statistics of the stream so far."""
    result.words = counts.words
    result.hits = counts.hits
    result.trigger_edges = counts.trigger_edges
    result.triggers = counts.triggers
    result.events = counts.events
    result.centroids = counts.centroids
    result.word_counts, result.processing = state.totals(counts.pixel_stats, counts.hits)
    result.skipped_words = state.decoder.counts.malformed
    if result.skipped_words:
        result.warnings.append(f"{result.skipped_words} invalid/unknown words counted and skipped")


def _fail(exc: BaseException, workers, writer, partial: Path) -> None:
    """Clean up after a failed or interrupted conversion; re-raise as the caller does.

    An interrupt leaves ``partial`` readable with ``complete = False`` and ``interrupted``
    naming the reason; any other failure leaves no output at all."""
    if isinstance(exc, ConversionInterrupted):
        reason = str(exc)
    elif isinstance(exc, KeyboardInterrupt):
        reason = "Ctrl-C (SIGINT)"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if workers is not None:
        workers.close(terminate=True)
    if writer is not None and not writer.closed:
        try:
            writer.set_attrs(interrupted=reason)
        except Exception:
            pass
        writer.abort()
    if isinstance(exc, ConversionError) or not isinstance(exc, KeyboardInterrupt):
        try:
            partial.unlink()
        except FileNotFoundError:
            pass
    if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, ConversionInterrupted):
        raise ConversionInterrupted(reason) from exc


def result_dict(result: ConvertResult) -> dict:
    """ConvertResult as a plain dict (for JSON), with hits_per_s."""
    d = asdict(result)
    d["hits_per_s"] = result.hits_per_s
    return d


__all__ = ["convert_file", "convert_range_file", "ConvertResult", "ConvertStatus", "ConversionError",
           "ConversionInterrupted", "detect_layout", "partial_path", "result_dict", "DEFAULT_CHUNK_WORDS",
           "DEFAULT_BATCH_HITS", "DEFAULT_EVENT_WINDOW", "PARTIAL_SUFFIX"]
