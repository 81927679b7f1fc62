"""Offline conversion: pymepix .raw / ASI .tpx3 file -> HDF5 (raw events, centroids, triggers).

Data flow (one pass, streaming)::

    iter_words (chunk_words) -> Decoder -> PacketProcessor -> events ---------> raw/*
                                   |              |-> trigger table ----------> timing/timepix/*
                                   |-> TDC edges -------------------------------> triggers/trigger{1,2}/time
                                                  |-> batches of whole events -> centroid workers
                                                                                  -> centroided/* (in order)

Decoding and event building are sequential (they carry state: time extension, open
events) and run in the calling process; they are cheap. Clustering + centroids run on
``number_of_processes`` worker processes (1 = in the calling process), on batches of whole
events (about ``batch_hits`` hits, cut between triggers) whose boundaries depend only on
the input and ``chunk_words``, never on the number of processes; results are written in
submission order. So the output is identical for any ``number_of_processes``.

Memory bound (independent of the file size): one chunk of words (``chunk_words`` x 8 B,
16 MiB by default) and its decoded hits (~15 B per word), the hits held by the
PacketProcessor (the open event, at most one trigger period or the event window, plus its
5 ms reorder window), the pending batch (< 2 x ``batch_hits``), at most
``2 x number_of_processes`` batches in flight (30 B per hit each, plus a pickled copy), and
the HDF5 writer's chunk buffers (~5 MB). With the defaults and N = 2 that is about 0.5 GB
plus the largest event.

Safety: the output is written to ``OUTPUT.partial`` with the file attribute
``complete = False``; only after everything is written is ``complete`` set and the file
renamed to ``OUTPUT`` (atomically, replacing an existing output only with ``force``).
Ctrl-C / SIGTERM close the partial file as readable with ``complete = False`` (and
``interrupted`` naming the reason); a SIGKILL leaves at most ``OUTPUT.partial``.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tango_tpx.io.hdf5 import Hdf5Writer
from tango_tpx.tpx3.files import FileInfo, inspect_file, iter_words

#: Words read and decoded per step (16 MiB).
DEFAULT_CHUNK_WORDS = 1 << 21
#: Target hits per centroiding batch (batches are cut between triggers).
DEFAULT_BATCH_HITS = 1 << 19
#: The converter keeps every hit after its trigger (pymepix's event_window, s).
DEFAULT_EVENT_WINDOW = (0.0, math.inf)
PARTIAL_SUFFIX = ".partial"


class ConversionError(RuntimeError):
    """The input could not be converted (nothing usable in it, or a bad parameter)."""


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a conversion; the partial file is left marked incomplete."""


@dataclass
class ConvertResult:
    """Summary of one conversion (all counts are rows / hits / words)."""

    input: str
    output: str
    complete: bool = False
    words: int = 0                 # words decoded (chunk headers included)
    hits: int = 0                  # pixel hits decoded
    events: int = 0                # rows of raw/* (hits inside the event window)
    triggers: int = 0              # rows of timing/timepix/* (TDC1 rising edges)
    trigger_edges: int = 0         # rows of triggers/trigger1 + trigger2
    centroids: int = 0             # rows of centroided/*
    skipped_words: int = 0         # invalid TDC + control/unknown words (counted, skipped)
    trailing_bytes: int = 0        # bytes of a trailing partial word (not decoded)
    seconds: float = 0.0
    word_counts: dict = field(default_factory=dict)
    processing: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def hits_per_s(self) -> float:
        """Decoded pixel hits per second of wall time."""
        return self.hits / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ConvertStatus:
    """Progress snapshot handed to ``status_callback`` after every chunk."""

    fraction: float
    words: int
    hits: int
    events: int
    centroids: int
    elapsed_s: float


# --------------------------------------------------------------------------------------------
# centroid workers
# --------------------------------------------------------------------------------------------
_worker_calc = None


def _die_with_parent() -> None:
    """Make this worker exit when its parent dies (no orphans), then ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent:  # parent already gone
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _make_calculator(params: dict):
    from tango_tpx.processing.centroids import CentroidCalculator

    return CentroidCalculator(cent_timewalk_lut=params["cent_timewalk_lut"], number_of_processes=1,
                              clustering_args=params["clustering_args"],
                              dbscan_clustering=params["dbscan"], tot_threshold=params["tot_threshold"])


def _worker_init(params: dict) -> None:
    global _worker_calc
    _die_with_parent()
    _worker_calc = _make_calculator(params)


def _worker_centroids(events):
    return _worker_calc.process(events)


class _Centroider:
    """Ordered centroiding of event batches: inline (N = 1) or on N worker processes."""

    def __init__(self, params: dict, n_processes: int):
        self.n = max(1, int(n_processes))
        self.pool = None
        self.inflight: deque = deque()
        if self.n == 1:
            self.calc = _make_calculator(params)
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self.pool = ctx.Pool(self.n, initializer=_worker_init, initargs=(params,))

    def submit(self, events) -> list:
        """Queue a batch; returns the results (in order) that had to be collected meanwhile."""
        if self.pool is None:
            return [self.calc.process(events)]
        done = []
        while len(self.inflight) >= 2 * self.n:
            done.append(self.inflight.popleft().get())
        self.inflight.append(self.pool.apply_async(_worker_centroids, (events,)))
        return done

    def drain(self) -> list:
        done = []
        while self.inflight:
            done.append(self.inflight.popleft().get())
        return done

    def close(self, terminate: bool = False) -> None:
        if self.pool is not None:
            if terminate:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()
            self.pool = None


class _Batcher:
    """Collects PacketProcessor output into batches of about ``batch_hits`` whole events."""

    def __init__(self, batch_hits: int):
        self.batch_hits = max(1, int(batch_hits))
        self.parts: list = []
        self.n = 0

    def add(self, events) -> list:
        if len(events):
            self.parts.append(events)
            self.n += len(events)
        if self.n < self.batch_hits:
            return []
        return self._cut(final=False)

    def flush(self) -> list:
        return self._cut(final=True)

    def _cut(self, final: bool) -> list:
        if not self.parts:
            return []
        from tango_tpx.processing.centroids import split_at_triggers

        ev = type(self.parts[0]).concat(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts, self.n = [], 0
        pieces = max(1, len(ev) // self.batch_hits)
        ranges = split_at_triggers(np.asarray(ev.trigger_nr), pieces)
        return [ev.take(slice(a, b)) for a, b in ranges]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def detect_layout(info: FileInfo, probe_words: int = 1 << 20) -> str:
    """'quad' for a .tpx3 file whose first chunks name a chip other than 0, else 'single'."""
    if info.framing != "tpx3":
        return "single"
    from tango_tpx.tpx3.encode import TPX3_MAGIC

    for words in iter_words(info.path, chunk_words=probe_words, stop_word=probe_words):
        heads = words[(words & np.uint64(0xFFFFFFFF)) == np.uint64(TPX3_MAGIC)]
        chips = (heads >> np.uint64(32)) & np.uint64(0xFF)
        return "quad" if chips.size and int(chips.max()) > 0 else "single"
    return "single"


def partial_path(output: str | os.PathLike) -> Path:
    """Where a conversion to ``output`` writes until it is complete."""
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def _load_lut(path: str | os.PathLike | None) -> np.ndarray | None:
    if path is None or path == "":
        return None
    from tango_tpx.processing.timewalk import load_timewalk_lut

    return load_timewalk_lut(path)


def _check_window(event_window) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in event_window)
    except (TypeError, ValueError):
        raise ConversionError(f"event window must be two numbers (s), got {event_window!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or hi < lo:
        raise ConversionError(f"event window must satisfy 0 <= min <= max (s), got ({lo}, {hi})")
    return lo, hi


class _TermToInterrupt:
    """Turn SIGTERM into :class:`ConversionInterrupted` while converting (main thread only)."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise ConversionInterrupted("terminated (SIGTERM)")

            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


# --------------------------------------------------------------------------------------------
# the conversion
# --------------------------------------------------------------------------------------------
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
                 compression: str = "blosc-lz4",
                 chunk_words: int = DEFAULT_CHUNK_WORDS,
                 batch_hits: int = DEFAULT_BATCH_HITS,
                 progress_callback: Callable[[float], Any] | None = None,
                 status_callback: Callable[[ConvertStatus], Any] | None = None,
                 ) -> ConvertResult:
    """Convert one raw/.tpx3 file to HDF5 (layout: :mod:`tango_tpx.io.hdf5`).

    input: pymepix .raw (with or without the 8-byte header) or ASI .tpx3 (single or quad).
    output: the .h5 path; ``FileExistsError`` if it exists and ``force`` is false.
    number_of_processes: centroiding processes (1 = in this process); output identical for any.
    centroiding: False leaves ``centroided/*`` empty. dbscan: pymepix's DBSCAN instead of the
    fast connected-components clustering. event_window: (min, max) ToF in s, inclusive;
    default (0, inf) keeps every hit after its trigger. timewalk_file / cent_timewalk_file:
    ``.npy`` tables in ns per ToT bin (:mod:`tango_tpx.processing.timewalk`).
    clustering_args: pymepix ``clustering_args`` keys (see ``CentroidCalculator``).
    tot_threshold: keep hits with ToT > threshold for clustering (ToT counts).
    layout: 'auto' (quad for multi-chip .tpx3), 'single' or 'quad'.
    progress_callback(fraction 0..1) after every chunk; status_callback(ConvertStatus) too.

    Raises FileNotFoundError / IsADirectoryError / ValueError for an unreadable input,
    ConversionError when nothing in it could be converted (no output is left then),
    ConversionInterrupted (a KeyboardInterrupt) on Ctrl-C / SIGTERM.
    """
    t0 = time.perf_counter()
    in_path = Path(input)
    out_path = Path(output)
    info = inspect_file(in_path)   # clear errors: missing, directory, empty, < 1 word
    window = _check_window(event_window)
    if int(number_of_processes) != number_of_processes or number_of_processes < 1:
        raise ConversionError(f"number_of_processes must be an integer >= 1, got {number_of_processes!r}")
    if chunk_words < 1 or batch_hits < 1:
        raise ConversionError("chunk_words and batch_hits must be >= 1")
    if out_path.exists() and out_path.is_dir():
        raise IsADirectoryError(f"{out_path}: output is a directory")
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: output exists (use force / --force to replace it)")
    if not out_path.parent.exists():
        raise FileNotFoundError(f"{out_path.parent}: output directory does not exist")
    if out_path.exists() and os.path.samefile(out_path, in_path):
        raise ConversionError("output is the input file")
    if layout == "auto":
        layout = detect_layout(info)
    if layout not in ("single", "quad"):
        raise ConversionError(f"layout must be 'auto', 'single' or 'quad', not {layout!r}")
    tw_lut = _load_lut(timewalk_file)
    cent_lut = _load_lut(cent_timewalk_file)

    from tango_tpx.processing.events import PacketProcessor
    from tango_tpx.tpx3.codec import Decoder

    params = dict(cent_timewalk_lut=cent_lut, clustering_args=dict(clustering_args or {}),
                  dbscan=bool(dbscan), tot_threshold=int(tot_threshold))
    if centroiding:
        _make_calculator(params)  # validate the clustering parameters before any work
    decoder = Decoder(framing=info.framing, layout=layout)
    pp = PacketProcessor(event_window=window, timewalk_lut=tw_lut)

    result = ConvertResult(input=str(in_path.resolve()), output=str(out_path.resolve()),
                           trailing_bytes=info.trailing_bytes)
    if info.trailing_bytes:
        result.warnings.append(f"{info.trailing_bytes} trailing bytes after the last whole word were skipped")
    attrs = {
        "source_file": str(in_path.resolve()),
        "source_kind": info.kind,
        "source_framing": info.framing,
        "source_header_time_ns": -1 if info.header_time_ns is None else int(info.header_time_ns),
        "source_bytes": int(info.size_bytes),
        "source_words": int(info.n_words),
        "layout": layout,
        "event_window": [float(window[0]), float(window[1])],
        "event_window_unit": "s",
        "centroiding": bool(centroiding),
        "clustering_algorithm": ("dbscan" if dbscan else "fast") if centroiding else "none",
        "clustering_args": dict(clustering_args or {}),
        "tot_threshold": int(tot_threshold),
        "timewalk_file": "" if timewalk_file is None else str(Path(timewalk_file).resolve()),
        "cent_timewalk_file": "" if cent_timewalk_file is None else str(Path(cent_timewalk_file).resolve()),
        "timewalk_unit": "ns per ToT bin (lut[i] for ToT = (i + 1) * 25 ns)",
        "number_of_processes": int(number_of_processes),
        "chunk_words": int(chunk_words),
    }

    partial = partial_path(out_path)
    centroider = None
    writer = None
    with _TermToInterrupt():
        try:
            # workers first (forked before the HDF5 file is open)
            if centroiding:
                centroider = _Centroider(params, number_of_processes)
            writer = Hdf5Writer(partial, attrs, overwrite=True, compression=compression)
            batcher = _Batcher(batch_hits)
            words_done = 0
            n_total = max(info.n_words, 1)

            def write_centroids(results) -> None:
                for c in results:
                    writer.append_centroids(c)
                    result.centroids += len(c)

            def take(out) -> None:
                writer.append_trigger_table(out.triggers)
                result.triggers += len(out.triggers)
                ev = out.events
                if len(ev):
                    writer.append_events(ev)
                    result.events += len(ev)
                    if centroider is not None:
                        for batch in batcher.add(ev):
                            write_centroids(centroider.submit(batch))

            for words in iter_words(info.path, chunk_words=chunk_words):
                decoded = decoder.decode(words)
                words_done += len(words)
                result.hits += len(decoded.pixels)
                result.trigger_edges += len(decoded.triggers)
                writer.append_triggers(decoded.triggers)
                take(pp.process(decoded))
                fraction = words_done / n_total
                if progress_callback is not None:
                    progress_callback(fraction)
                if status_callback is not None:
                    status_callback(ConvertStatus(fraction, words_done, result.hits, result.events,
                                                  result.centroids, time.perf_counter() - t0))
            take(pp.flush())
            if centroider is not None:
                for batch in batcher.flush():
                    write_centroids(centroider.submit(batch))
                write_centroids(centroider.drain())
                centroider.close()
                centroider = None

            counts = decoder.counts
            result.words = counts.words
            result.word_counts = counts.as_dict()
            result.skipped_words = counts.malformed
            result.processing = {k: int(v) for k, v in pp.stats.items()}
            if result.skipped_words:
                result.warnings.append(f"{result.skipped_words} invalid/unknown words counted and skipped")
            if result.hits == 0 and result.trigger_edges == 0:
                raise ConversionError(f"{in_path}: no pixel hits and no trigger words found "
                                      f"({result.words} words: {result.word_counts}); nothing to convert")
            if result.triggers == 0:
                result.warnings.append("no TDC1 rising edges (triggers): no events")
            result.seconds = time.perf_counter() - t0
            writer.set_attrs(word_counts=result.word_counts, processing_stats=result.processing,
                             trailing_bytes=int(info.trailing_bytes), elapsed_s=float(result.seconds),
                             hits_decoded=int(result.hits), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            writer.close(complete=True)
            os.replace(partial, out_path)
            result.complete = True
        except BaseException as exc:
            if centroider is not None:
                centroider.close(terminate=True)
            if writer is not None and not writer.closed:
                try:
                    writer.set_attrs(interrupted=f"{type(exc).__name__}: {exc}")
                except Exception:
                    pass
                writer.abort()
            if isinstance(exc, ConversionError) or not isinstance(exc, KeyboardInterrupt):
                # nothing usable / a failure: leave no output at all
                try:
                    partial.unlink()
                except FileNotFoundError:
                    pass
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, ConversionInterrupted):
                raise ConversionInterrupted(str(exc) or "interrupted (Ctrl-C)") from exc
            raise
    result.seconds = time.perf_counter() - t0
    return result


def result_dict(result: ConvertResult) -> dict:
    """ConvertResult as a plain dict (for JSON), with hits_per_s."""
    d = asdict(result)
    d["hits_per_s"] = result.hits_per_s
    return d


__all__ = ["convert_file", "ConvertResult", "ConvertStatus", "ConversionError", "ConversionInterrupted",
           "detect_layout", "partial_path", "result_dict", "DEFAULT_CHUNK_WORDS", "DEFAULT_BATCH_HITS",
           "DEFAULT_EVENT_WINDOW"]
