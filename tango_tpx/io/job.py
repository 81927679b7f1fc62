"""What a conversion is asked to do, checked before any work: :func:`prepare_job` turns the
arguments of :func:`~tango_tpx.io.convert.convert_file` into a :class:`ConvertJob` (input
inspected, engine parameters, file attributes, train IDs) or raises a clear error; plus the
result and progress records and the small helpers (layout detection, partial-file names).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tango_tpx.io.compress import DEFAULT_COMPRESSION, dataset_kwargs
from tango_tpx.io.engine import DEFAULT_BATCH_HITS, DEFAULT_CHUNK_WORDS, EngineParams
from tango_tpx.io.settingsattrs import settings_attrs
from tango_tpx.processing.settings import ClusteringConfig, DetectorLayout, EventWindow, TimeWalk
from tango_tpx.tpx3.files import FileInfo, inspect_file, iter_words

#: The converter keeps every hit after its trigger (pymepix's event_window, s).
DEFAULT_EVENT_WINDOW = (0.0, math.inf)
PARTIAL_SUFFIX = ".partial"
#: clustering_args keys that ClusteringConfig.from_pymepix takes (the rest go to the calculator as given)
_CLUSTERING_KEYS = frozenset({"epsilon", "min_samples", "radius", "time_window_ns", "chunk_size_limit",
                              "min_cluster_size", "cs_min_cluster_size", "cs_max_dist_tof", "tot_threshold"})


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
    train_ids: int = 0             # rows of timing/trainID/* (from the train-ID side file)
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


@dataclass
class ConvertJob:
    """A checked conversion request (see :func:`prepare_job`)."""

    info: FileInfo
    in_path: Path
    out_path: Path
    params: EngineParams
    attrs: dict
    compression: str
    train_ids: np.ndarray | None
    warnings: list

    def new_result(self) -> "ConvertResult":
        """An empty result for this job, with its warnings."""
        r = ConvertResult(input=str(self.in_path.resolve()), output=str(self.out_path.resolve()),
                          trailing_bytes=self.info.trailing_bytes)
        r.warnings.extend(self.warnings)
        return r


def prepare_job(input: str | os.PathLike, output: str | os.PathLike, *,
                number_of_processes: int = 1,
                centroiding: bool = True,
                dbscan: bool = False,
                event_window: tuple[float, float] | EventWindow = DEFAULT_EVENT_WINDOW,
                timewalk_file: str | os.PathLike | None = None,
                cent_timewalk_file: str | os.PathLike | None = None,
                clustering_args: dict | None = None,
                tot_threshold: int = 0,
                layout: str | DetectorLayout = "auto",
                force: bool = False,
                compression: str = DEFAULT_COMPRESSION,
                chunk_words: int = DEFAULT_CHUNK_WORDS,
                batch_hits: int = DEFAULT_BATCH_HITS,
                trainid_file: str | os.PathLike | bool | None = None,
                check_output: bool = True,
                clustering: ClusteringConfig | None = None) -> ConvertJob:
    """Check the arguments of :func:`~tango_tpx.io.convert.convert_file` (same meaning) and
    build the job; ``check_output`` False skips the output-path checks (append, parts).
    ``clustering``: a :class:`~tango_tpx.processing.settings.ClusteringConfig` instead of
    ``dbscan``, ``tot_threshold`` and the clustering keys of ``clustering_args``."""
    in_path = Path(input)
    out_path = Path(output)
    info = inspect_file(in_path)   # clear errors: missing, directory, empty, < 1 word
    window = _check_window(event_window)
    if int(number_of_processes) != number_of_processes or number_of_processes < 1:
        raise ConversionError(f"number_of_processes must be an integer >= 1, got {number_of_processes!r}")
    if chunk_words < 1 or batch_hits < 1:
        raise ConversionError("chunk_words and batch_hits must be >= 1")
    try:
        dataset_kwargs(compression)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    if check_output:
        if out_path.exists() and out_path.is_dir():
            raise IsADirectoryError(f"{out_path}: output is a directory")
        if out_path.exists() and not force:
            raise FileExistsError(f"{out_path}: output exists (use force / --force to replace it)")
        if not out_path.parent.exists():
            raise FileNotFoundError(f"{out_path.parent}: output directory does not exist")
        if out_path.exists() and os.path.samefile(out_path, in_path):
            raise ConversionError("output is the input file")
    if isinstance(layout, str) and layout == "auto":
        layout = detect_layout(info)
    try:
        detector = DetectorLayout.of(layout)
    except ValueError:
        raise ConversionError(f"layout must be 'auto', 'single' or 'quad', not {layout!r}") from None
    if clustering is None:
        clustering = ClusteringConfig.from_pymepix(clustering_args, dbscan=bool(dbscan), tot_threshold=tot_threshold)
    elif not isinstance(clustering, ClusteringConfig):
        raise ConversionError(f"clustering must be a ClusteringConfig, got {type(clustering).__name__}")
    timewalk = TimeWalk(_load_lut(timewalk_file), _load_lut(cent_timewalk_file),
                        "" if timewalk_file is None else str(Path(timewalk_file).resolve()),
                        "" if cent_timewalk_file is None else str(Path(cent_timewalk_file).resolve()))
    train_ids, trainid_src, warnings = _load_train_ids(in_path, trainid_file)
    params = EngineParams(framing=info.framing, detector=detector, event_window=EventWindow(*window),
                          clustering=clustering, timewalk=timewalk, centroiding=bool(centroiding),
                          pymepix_args={k: v for k, v in (clustering_args or {}).items() if k not in _CLUSTERING_KEYS},
                          chunk_words=int(chunk_words), batch_hits=int(batch_hits),
                          start_time_ns=int(info.header_time_ns or 0))
    if centroiding:
        from tango_tpx.io.batching import make_calculator

        make_calculator(params.worker_params())  # validate the clustering parameters before any work
    if info.trailing_bytes:
        warnings.append(f"{info.trailing_bytes} trailing bytes after the last whole word were skipped")
    attrs = {
        "source_file": str(in_path.resolve()),
        "source_kind": info.kind,
        "source_framing": info.framing,
        "source_header_time_ns": -1 if info.header_time_ns is None else int(info.header_time_ns),
        "source_bytes": int(info.size_bytes),
        "source_words": int(info.n_words),
        **settings_attrs(params.event_window, detector, clustering, timewalk, bool(centroiding), clustering_args),
        "number_of_processes": int(number_of_processes),
        "chunk_words": int(chunk_words),
        "trainid_file": trainid_src,
        "trainid_rows": 0 if train_ids is None else int(len(train_ids)),
    }
    return ConvertJob(info, in_path, out_path, params, attrs, compression, train_ids, warnings)


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


def _load_train_ids(input_path: Path, trainid_file) -> tuple[np.ndarray | None, str, list[str]]:
    """Train IDs to write to ``timing/trainID``: (TRAINID_DTYPE array or None, source path, warnings).

    ``trainid_file`` None: the live pipeline's side file ``<input>.trainid.csv`` when it
    exists (a malformed one is skipped with a warning); a path: that file, which must exist
    and be well formed (``FileNotFoundError`` / :class:`ConversionError`); ``False``: none.
    """
    from tango_tpx.trainid.protocol import SIDE_FILE_SUFFIX, read_side_file, side_file_path

    if trainid_file is False:
        return None, "", []
    explicit = trainid_file is not None and trainid_file != ""
    path = Path(trainid_file) if explicit else side_file_path(input_path)
    if not path.exists():
        if explicit:
            raise FileNotFoundError(f"{path}: train-ID file not found")
        return None, "", []
    if path.is_dir():
        raise IsADirectoryError(f"{path}: train-ID file is a directory")
    if not path.name.endswith(SIDE_FILE_SUFFIX):
        # read_side_file treats any other name as the raw file the side file belongs to
        raise ConversionError(f"{path}: a train-ID side file must be named *{SIDE_FILE_SUFFIX}")
    try:
        arr = read_side_file(path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        if explicit:
            raise ConversionError(f"{path}: unreadable train-ID file: {exc}") from None
        return None, "", [f"train-ID side file {path} skipped: {exc}"]
    return arr, str(path.resolve()), []


def _check_window(event_window) -> tuple[float, float]:
    if isinstance(event_window, EventWindow):
        return event_window.as_tuple()
    try:
        lo, hi = (float(v) for v in event_window)
    except (TypeError, ValueError):
        raise ConversionError(f"event window must be two numbers (s), got {event_window!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or hi < lo:
        raise ConversionError(f"event window must satisfy 0 <= min <= max (s), got ({lo}, {hi})")
    return lo, hi



__all__ = ["ConversionError", "ConversionInterrupted", "ConvertResult", "ConvertStatus", "ConvertJob",
           "prepare_job", "detect_layout", "partial_path", "DEFAULT_EVENT_WINDOW", "PARTIAL_SUFFIX"]
