"""Many inputs to one output folder (``tango-tpx convert INPUT... -o OUTDIR``), locally or on Dask.

Inputs are files, globs or folders (their ``*.raw`` and ``*.tpx3`` files); each input
becomes ``OUTDIR/<name>.h5``. One input that fails (corrupt, truncated, nothing in it) fails
alone and is listed with its reason in the :class:`BatchSummary`; the others are converted.
``skip_existing`` resumes an interrupted batch: an output counts as done only when its
``complete`` attribute is true. The output folder is created if needed and refused before
any work when it cannot be written. Locally each input is converted in turn with
``number_of_processes`` workers; with a Dask scheduler address or a worker count the inputs
(or sections of large ones) are tasks on the cluster (:mod:`tango_tpx.io.daskrun`).
"""

from __future__ import annotations

import glob
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tango_tpx.io.hdf5 import is_complete
from tango_tpx.io.job import ConversionError

#: Input file name endings taken from a folder.
INPUT_SUFFIXES = (".raw", ".tpx3")
#: Output endings that name a file (not a folder) with ``-o``.
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


@dataclass
class FileOutcome:
    """What became of one input: status 'done', 'skipped' or 'failed' (with ``reason``);
    seconds: the conversion's own time (for a sectioned input on Dask: submission to join)."""

    input: str
    output: str
    status: str = "pending"
    reason: str = ""
    hits: int = 0
    seconds: float = 0.0
    sections: int = 1


@dataclass
class BatchSummary:
    """Outcome of a batch: one :class:`FileOutcome` per input, wall time in s."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def hits(self) -> int:
        return sum(o.hits for o in self.outcomes if o.status == "done")

    def lines(self) -> list[str]:
        """A human summary: counts, rate, then one line per failure with its reason."""
        done = sum(o.status == "done" for o in self.outcomes)
        skipped = sum(o.status == "skipped" for o in self.outcomes)
        rate = self.hits / self.seconds / 1e6 if self.seconds > 0 else 0.0
        out = [f"{done} converted, {skipped} skipped (complete), {len(self.failures)} failed of "
               f"{len(self.outcomes)} inputs; {self.hits / 1e6:.2f} Mhits in {self.seconds:.1f} s ({rate:.2f} Mhits/s)"]
        out += [f"FAILED {o.input}: {o.reason}" for o in self.failures]
        return out


def expand_inputs(items: list[str | os.PathLike]) -> list[Path]:
    """Files, globs and folders (their *.raw and *.tpx3 files, sorted) -> input files, in
    order, each once. ``FileNotFoundError`` for an item that matches nothing."""
    out: list[Path] = []
    for item in items:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.name.endswith(INPUT_SUFFIXES))
            if not found:
                raise FileNotFoundError(f"{p}: directory holds no {' or '.join(INPUT_SUFFIXES)} files")
        elif p.exists():
            found = [p]
        elif glob.has_magic(s):
            found = sorted(Path(q) for q in glob.glob(s) if Path(q).is_file())
            if not found:
                raise FileNotFoundError(f"{s}: no file matches")
        else:
            raise FileNotFoundError(f"{p}: no such file")
        for q in found:
            if q.resolve() not in {r.resolve() for r in out}:
                out.append(q)
    return out


def plan_outputs(inputs: list[Path], output: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(input, output file) pairs: ``output`` is a file name (``*.h5``, one input) or a folder."""
    output = Path(output)
    if output.suffix.lower() in H5_SUFFIXES and not output.is_dir():
        if len(inputs) != 1:
            raise ConversionError(f"{output}: an output file takes one input, got {len(inputs)}; "
                                  "give a folder for many")
        return [(inputs[0], output)]
    pairs = [(p, output / (p.stem + ".h5")) for p in inputs]
    seen: dict[Path, Path] = {}
    for inp, out in pairs:
        if out in seen:
            raise ConversionError(f"{seen[out]} and {inp} would both write {out}")
        seen[out] = inp
    return pairs


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if missing; ``PermissionError`` if files cannot be created in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: output folder is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".tango-tpx-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError:
        raise PermissionError(f"{folder}: output folder is not writable") from None
    except OSError as exc:
        raise PermissionError(f"{folder}: output folder is not writable ({exc.strerror})") from None
    return folder


def remove_stale_temporaries(output: Path) -> None:
    """Delete what killed or failed attempts at ``output`` left (never ``output`` itself)."""
    from tango_tpx.io.sections import remove_parts

    for q in output.parent.glob(glob.escape(output.name) + ".partial*"):
        q.unlink(missing_ok=True)
    remove_parts(output)


class BatchProgress:
    """One progress display for the whole batch (tqdm): bytes of input done, files done,
    Mhits/s and the ETA; ``quiet`` shows nothing."""

    def __init__(self, total_bytes: int, n_files: int, quiet: bool = False, stream: TextIO = sys.stderr):
        self.n_files, self.files, self.hits = n_files, 0, 0
        self.t0 = time.perf_counter()
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, file=stream, dynamic_ncols=True,
                            desc=f"files 0/{n_files}", mininterval=0.5)

    def advance(self, nbytes: int = 0, hits: int = 0, file_done: bool = False) -> None:
        self.hits += hits
        self.files += int(file_done)
        if self.bar is not None:
            rate = self.hits / max(time.perf_counter() - self.t0, 1e-9) / 1e6
            self.bar.set_description(f"files {self.files}/{self.n_files}", refresh=False)
            self.bar.set_postfix_str(f"{rate:.2f} Mhits/s", refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_batch(items: list[str | os.PathLike], output: str | os.PathLike, *,
              convert_kwargs: dict[str, Any] | None = None, number_of_processes: int = 1,
              force: bool = False, skip_existing: bool = False, scheduler: str | None = None,
              workers: int | None = None, section_mb: float = 0.0, connect_timeout: float = 10.0,
              quiet: bool = False, stream: TextIO = sys.stderr) -> BatchSummary:
    """Convert every input of ``items`` into ``output`` (see the module docstring).

    convert_kwargs: options of :func:`~tango_tpx.io.convert.convert_file` (not ``force``,
    ``number_of_processes`` or callbacks). scheduler: a Dask scheduler address; workers: a
    local Dask cluster of that many one-thread workers; neither: this process.
    section_mb: on Dask, inputs larger than this are split into sections of about this size
    (0: never). Raises before any work for no input, an unwritable folder or an unreachable
    scheduler; a failing input is reported in the summary.
    """
    t0 = time.perf_counter()
    kwargs = dict(convert_kwargs or {})
    inputs = expand_inputs(items)
    pairs = plan_outputs(inputs, output)
    for folder in {out.parent for _, out in pairs}:
        check_output_folder(folder)
    summary = BatchSummary([FileOutcome(str(i), str(o)) for i, o in pairs])
    todo = []
    for oc, (inp, out) in zip(summary.outcomes, pairs):
        if out.exists():
            if skip_existing and is_complete(out):
                oc.status = "skipped"
                continue
            if not (force or skip_existing):
                oc.status, oc.reason = "failed", "output exists (use --force to replace it)"
                continue
        todo.append((oc, inp, out))
    sizes = {id(oc): inp.stat().st_size for oc, inp, _ in todo}
    progress = BatchProgress(sum(sizes.values()), len(todo), quiet=quiet, stream=stream)
    try:
        if scheduler or workers:
            from tango_tpx.io.daskrun import run_on_dask

            run_on_dask(todo, kwargs, progress, sizes, scheduler=scheduler, workers=workers,
                        section_mb=section_mb, number_of_processes=number_of_processes,
                        connect_timeout=connect_timeout)
        else:
            _run_here(todo, kwargs, progress, sizes, number_of_processes)
    finally:
        progress.close()
        for _, _, out in todo:
            remove_stale_temporaries(out)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_here(todo: list, kwargs: dict, progress: BatchProgress, sizes: dict, number_of_processes: int) -> None:
    """Convert the inputs one after the other in this process."""
    from tango_tpx.io.convert import convert_file

    for oc, inp, out in todo:
        done = [0]

        def status(st, size=sizes[id(oc)], done=done) -> None:
            b = int(st.fraction * size)
            progress.advance(b - done[0])
            done[0] = b

        t = time.perf_counter()
        try:
            r = convert_file(inp, out, force=True, number_of_processes=number_of_processes,
                             status_callback=status, **kwargs)
            oc.status, oc.hits = "done", r.hits
        except (Exception, ConversionError) as exc:
            oc.status, oc.reason = "failed", f"{type(exc).__name__}: {exc}"
        oc.seconds = time.perf_counter() - t
        progress.advance(sizes[id(oc)] - done[0], oc.hits, file_done=True)


__all__ = ["FileOutcome", "BatchSummary", "expand_inputs", "plan_outputs", "check_output_folder",
           "run_batch", "BatchProgress", "remove_stale_temporaries", "INPUT_SUFFIXES", "H5_SUFFIXES"]
