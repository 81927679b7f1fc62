"""``tango-tpx convert``: raw/.tpx3 files -> HDF5 (see :mod:`tango_tpx.io.convert`).

Usage::

    tango-tpx convert INPUT -o OUTPUT.h5 [-n N] [--no-centroid] [--dbscan]
                      [--event-window MIN MAX] [--timewalk FILE] [--cent-timewalk FILE] [--force]
    tango-tpx convert INPUT... -o OUTDIR [--skip-existing] [--scheduler ADDRESS | --workers N]
                      [--section-mb MB]
    tango-tpx convert --append RUN.h5 INPUT... [--close]

Exit codes: 0 converted; 1 nothing could be converted or a conversion failed (no output is
left for it; a batch lists every failure with its reason and converts the other inputs);
2 bad arguments or unusable input/output path (missing, a directory, empty, output exists
without --force, output folder not writable, Dask scheduler unreachable); 130 interrupted
(Ctrl-C or SIGTERM: at most ``OUTPUT.partial``, marked ``complete = False``, is left).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
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
        "convert", help="convert pymepix .raw or ASI .tpx3 files to HDF5",
        description="Convert pymepix .raw (with or without header) or ASI .tpx3 files to HDF5 "
                    "(pymepix layout: raw/, centroided/, timing/timepix/, triggers/). "
                    "The default deflate output is read by any HDF5 reader (no hdf5plugin needed).")
    p.add_argument("input", nargs="*", help="input .raw or .tpx3 files, globs or folders")
    p.add_argument("-o", "--output", help="output .h5 file (one input) or output folder (OUTDIR/<name>.h5)")
    p.add_argument("--skip-existing", action="store_true",
                   help="batch: leave outputs that are complete (resume an interrupted batch)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the batch on this Dask distributed scheduler (e.g. tcp://host:8786)")
    p.add_argument("--workers", type=int, metavar="N", help="run the batch on a local Dask cluster of N workers")
    p.add_argument("--section-mb", type=float, default=None, metavar="MB",
                   help="on Dask, split inputs larger than 1.5 x MB into sections of about MB "
                        "(default 2048; 0: never)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the Dask scheduler (default 10)")
    p.add_argument("--append", metavar="RUN.h5",
                   help="append the inputs to this run file (created if missing), event numbers global")
    p.add_argument("--close", action="store_true",
                   help="with --append: close the run afterwards (mark it complete)")
    p.add_argument("-n", "--number-of-processes", type=int, default=1, metavar="N",
                   help="workers for events + clustering: threads for the fast clustering, processes for "
                        "--dbscan (1: none; output identical for any N; default 1)")
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
    """Progress of one conversion on stderr: a tqdm bar (percent, Mhits, Mhits/s, centroids)
    on a terminal, a line every 10 % in a log file."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.next_pct = 10
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=100.0, unit="%", file=stream, mininterval=0.2, miniters=1, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:5.1f}% [{elapsed}<{remaining}{postfix}]")

    def __call__(self, st: ConvertStatus) -> None:
        rate = st.hits / st.elapsed_s / 1e6 if st.elapsed_s > 0 else 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(f"{st.hits / 1e6:.2f} Mhits, {rate:.2f} Mhits/s, {st.centroids} centroids",
                                     refresh=False)
            self.bar.update(100.0 * st.fraction - self.bar.n)
        elif 100 * st.fraction >= self.next_pct:  # a log file gets a line every 10 %
            while 100 * st.fraction >= self.next_pct:
                self.next_pct += 10
            self.stream.write(f"{100 * st.fraction:5.1f}%  {st.hits / 1e6:.2f} Mhits  {rate:.2f} Mhits/s\n")
            self.stream.flush()

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _convert_kwargs(args: argparse.Namespace) -> dict:
    return dict(centroiding=not args.no_centroid, dbscan=args.dbscan, event_window=tuple(args.event_window),
                timewalk_file=args.timewalk, cent_timewalk_file=args.cent_timewalk,
                tot_threshold=args.tot_threshold, layout=args.layout, trainid_file=args.trainid,
                compression=args.compression, chunk_words=args.chunk_words, batch_hits=args.batch_hits)


def run(args: argparse.Namespace) -> int:
    """Run the conversion described by parsed ``args``; returns the exit code."""
    from tango_tpx.io.batch import H5_SUFFIXES

    err = sys.stderr
    if args.append:
        return _run_append(args)
    if not args.input or not args.output:
        print("tango-tpx convert: error: give INPUT... and -o OUTPUT (or --append RUN.h5 INPUT...)", file=err)
        return 2
    if args.close:
        print("tango-tpx convert: error: --close belongs to --append", file=err)
        return 2
    single = (len(args.input) == 1 and Path(args.output).suffix.lower() in H5_SUFFIXES
              and not Path(args.output).is_dir() and Path(args.input[0]).is_file()
              and not (args.scheduler or args.workers or args.skip_existing))
    if not single:
        return _run_batch(args)
    err = sys.stderr
    bar = None if args.quiet else _ProgressBar(err)
    try:
        result = convert_file(
            args.input[0], args.output,
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


def _run_batch(args: argparse.Namespace) -> int:
    """Many inputs (or Dask): one progress display, a summary, exit 1 if any input failed."""
    from tango_tpx.io.batch import run_batch
    from tango_tpx.io.daskrun import DEFAULT_SECTION_MB

    err = sys.stderr
    if args.scheduler and args.workers:
        print("tango-tpx convert: error: --scheduler and --workers exclude each other", file=err)
        return 2
    if args.trainid and (len(args.input) > 1 or Path(args.input[0]).is_dir()):
        print("tango-tpx convert: error: --trainid names the side file of one input; in a batch each "
              "input's INPUT.trainid.csv is used", file=err)
        return 2
    try:
        summary = run_batch(args.input, args.output, convert_kwargs=_convert_kwargs(args),
                            number_of_processes=args.number_of_processes, force=args.force,
                            skip_existing=args.skip_existing, scheduler=args.scheduler, workers=args.workers,
                            section_mb=DEFAULT_SECTION_MB if args.section_mb is None else args.section_mb,
                            connect_timeout=args.connect_timeout, quiet=args.quiet)
    except KeyboardInterrupt:
        print("tango-tpx convert: interrupted; complete outputs are kept (resume with --skip-existing)", file=err)
        return 130
    except (OSError, ValueError, ConversionError) as exc:  # no input, unwritable folder, no scheduler
        print(f"tango-tpx convert: error: {exc}", file=err)
        return 2
    if args.json:
        print(json.dumps({"seconds": summary.seconds, "hits": summary.hits,
                          "outcomes": [vars(o) for o in summary.outcomes]}))
    for line in summary.lines():
        print(f"tango-tpx convert: {line}", file=err if line.startswith("FAILED") else sys.stdout)
    return 0 if summary.ok else 1


def _run_append(args: argparse.Namespace) -> int:
    """``--append RUN.h5 INPUT... [--close]``."""
    from tango_tpx.io.append import append_inputs, close_run
    from tango_tpx.io.batch import expand_inputs

    err = sys.stderr
    if args.output or args.scheduler or args.workers:
        print("tango-tpx convert: error: --append takes no -o, --scheduler or --workers", file=err)
        return 2
    if not args.input and not args.close:
        print("tango-tpx convert: error: --append RUN.h5 needs inputs or --close", file=err)
        return 2
    try:
        kw = _convert_kwargs(args)
        results = append_inputs(args.append, expand_inputs(args.input), number_of_processes=args.number_of_processes,
                                **kw) if args.input else []
        if args.close:
            results.append(close_run(args.append, number_of_processes=args.number_of_processes, **kw))
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
        print(f"tango-tpx convert: error: {exc}", file=err)
        return 2
    except ConversionError as exc:
        print(f"tango-tpx convert: error: {exc}", file=err)
        return 1
    hits = sum(r.hits for r in results)
    state = "closed (complete)" if args.close else "open (complete = False until --close)"
    print(f"{args.append}: {len(args.input)} input(s) appended, {hits} hits; run {state}")
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
