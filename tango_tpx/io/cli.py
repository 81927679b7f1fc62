"""``tango-tpx convert``: raw/.tpx3 file -> HDF5 (see :mod:`tango_tpx.io.convert`).

Usage::

    tango-tpx convert INPUT -o OUTPUT.h5 [-n N] [--no-centroid] [--dbscan]
                      [--event-window MIN MAX] [--timewalk FILE] [--cent-timewalk FILE] [--force]

Exit codes: 0 converted; 1 nothing could be converted or the conversion failed (no output is
left); 2 bad arguments or unusable input/output path (missing, a directory, empty, output
exists without --force); 130 interrupted (Ctrl-C or SIGTERM: at most ``OUTPUT.partial``, marked
``complete = False``, is left).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Sequence

from tango_tpx.io.compress import COMPRESSIONS, DEFAULT_COMPRESSION
from tango_tpx.io.convert import (
    DEFAULT_BATCH_HITS,
    DEFAULT_CHUNK_WORDS,
    ConversionError,
    ConversionInterrupted,
    ConvertStatus,
    convert_file,
    partial_path,
    result_dict,
)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``convert`` sub-command on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "convert", help="convert a pymepix .raw or ASI .tpx3 file to HDF5",
        description="Convert a pymepix .raw (with or without header) or ASI .tpx3 file to HDF5 "
                    "(pymepix layout: raw/, centroided/, timing/timepix/, triggers/). "
                    "Needs 'import hdf5plugin' to read the default Blosc-compressed output.")
    p.add_argument("input", help="input .raw or .tpx3 file")
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument("-n", "--number-of-processes", type=int, default=1, metavar="N",
                   help="worker processes for events + clustering (1: none; output identical for any N; default 1)")
    p.add_argument("--no-centroid", action="store_true", help="write raw events and triggers only")
    p.add_argument("--dbscan", action="store_true",
                   help="pymepix's DBSCAN clustering instead of the fast connected components")
    p.add_argument("--event-window", nargs=2, type=_float, metavar=("MIN", "MAX"),
                   default=(0.0, math.inf),
                   help="ToF window in s (inclusive; default 0 inf: every hit after its trigger)")
    p.add_argument("--timewalk", metavar="FILE", help="pixel time-walk table (.npy, ns per ToT bin)")
    p.add_argument("--cent-timewalk", metavar="FILE", help="centroid time-walk table (.npy, ns per ToT bin)")
    p.add_argument("--tot-threshold", type=int, default=0, metavar="COUNTS",
                   help="cluster hits with ToT > COUNTS (25 ns counts; default 0)")
    p.add_argument("--trainid", metavar="FILE", default=None,
                   help="train-ID side file (*.trainid.csv) for timing/trainID "
                        "(default: INPUT.trainid.csv when it exists)")
    p.add_argument("--layout", choices=("auto", "single", "quad"), default="auto",
                   help="pixel layout (auto: quad for a multi-chip .tpx3)")
    p.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION,
                   help="HDF5 filter (default deflate: read by every HDF5 reader; blosc-lz4, blosc-zstd "
                        "and lz4 need 'import hdf5plugin' to read; lzf: h5py only)")
    p.add_argument("--chunk-words", type=int, default=DEFAULT_CHUNK_WORDS, help=argparse.SUPPRESS)
    p.add_argument("--batch-hits", type=int, default=DEFAULT_BATCH_HITS, help=argparse.SUPPRESS)
    p.add_argument("-f", "--force", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.set_defaults(func=run)
    return p


class _ProgressBar:
    """A one-line progress bar with hits/s on stderr (a TTY), throttled to 5 updates/s."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream = stream
        self.width = width
        self.last = 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.next_pct = 10

    def __call__(self, st: ConvertStatus) -> None:
        now = time.monotonic()
        rate = st.hits / st.elapsed_s / 1e6 if st.elapsed_s > 0 else 0.0
        if self.tty:
            if now - self.last < 0.2 and st.fraction < 1.0:
                return
            self.last = now
            filled = int(round(self.width * st.fraction))
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {100 * st.fraction:5.1f}%  {st.hits / 1e6:8.2f} Mhits  "
                              f"{rate:6.2f} Mhits/s  {st.centroids} centroids")
            self.stream.flush()
        elif 100 * st.fraction >= self.next_pct:  # a log file gets a line every 10 %
            while 100 * st.fraction >= self.next_pct:
                self.next_pct += 10
            self.stream.write(f"{100 * st.fraction:5.1f}%  {st.hits / 1e6:.2f} Mhits  {rate:.2f} Mhits/s\n")
            self.stream.flush()

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run the conversion described by parsed ``args``; returns the exit code."""
    err = sys.stderr
    bar = None if args.quiet else _ProgressBar(err)
    try:
        result = convert_file(
            args.input, args.output,
            number_of_processes=args.number_of_processes,
            centroiding=not args.no_centroid,
            dbscan=args.dbscan,
            event_window=tuple(args.event_window),
            timewalk_file=args.timewalk,
            cent_timewalk_file=args.cent_timewalk,
            tot_threshold=args.tot_threshold,
            layout=args.layout,
            trainid_file=args.trainid,
            force=args.force,
            compression=args.compression,
            chunk_words=args.chunk_words,
            batch_hits=args.batch_hits,
            status_callback=bar,
        )
    except ConversionInterrupted as exc:
        if bar:
            bar.end()
        part = partial_path(args.output)
        left = f"; incomplete file left at {part} (complete = False)" if part.exists() else ""
        print(f"tango-tpx convert: interrupted by {exc}{left}", file=err)
        return 130
    except (FileNotFoundError, IsADirectoryError, FileExistsError, PermissionError) as exc:
        if bar:
            bar.end()
        print(f"tango-tpx convert: error: {exc}", file=err)
        return 2
    except ValueError as exc:  # empty / too short input, bad time-walk table, bad parameters
        if bar:
            bar.end()
        print(f"tango-tpx convert: error: {exc}", file=err)
        return 2
    except ConversionError as exc:
        if bar:
            bar.end()
        print(f"tango-tpx convert: error: {exc}", file=err)
        return 1
    except Exception as exc:  # disk full, unreadable input, a failed worker ...
        if bar:
            bar.end()
        print(f"tango-tpx convert: error: {type(exc).__name__}: {exc}", file=err)
        return 1
    if bar:
        bar.end()
    for w in result.warnings:
        print(f"tango-tpx convert: warning: {w}", file=err)
    if args.json:
        print(json.dumps(result_dict(result), default=str))
    else:
        print(f"{result.output}: {result.hits} hits decoded, {result.events} raw events, "
              f"{result.centroids} centroids, {result.triggers} triggers in {result.seconds:.2f} s "
              f"({result.hits_per_s / 1e6:.2f} Mhits/s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m tango_tpx.io.cli convert ...``."""
    parser = argparse.ArgumentParser(prog="tango-tpx")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
