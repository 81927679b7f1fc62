"""One large input converted in sections side by side, joined into one HDF5 file.

1. :func:`plan_sections`: boundaries at multiples of the read chunk (``chunk_words``), so the
   reads, and hence the batches, are those of one pass.
2. :func:`prescan`: one cheap sequential pass (decode, trigger numbering, batch cutting; no
   events, no clustering, no writing: ~20 ns of CPU per hit measured, under a tenth of the
   conversion; the last section is not scanned) records the
   :class:`~tango_tpx.io.engine.StreamState` at every boundary: the decoder's time-extension
   epoch and anchor, the next trigger number and TDC counters, and the held-back pixels of
   events still open at the boundary (they straddle it and are converted by the section
   that closes them).
3. :func:`convert_section`: section ``k`` continues state ``k`` over its words into a part
   file (only the last section releases the final open event).
4. :func:`join_parts`: the parts' rows are concatenated in order into the output. The
   dataset contents equal those of :func:`~tango_tpx.io.convert.convert_file` bit for bit.

State files are pickles written by the pre-scan next to the parts (shared storage in a Dask
cluster); only this software's own files are read back.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from tango_tpx.io.batching import PIXEL_STATS
from tango_tpx.io.engine import StreamState, run_range
from tango_tpx.io.hdf5 import TABLES, Hdf5Writer
from tango_tpx.io.job import ConversionError, ConvertResult, partial_path, prepare_job

#: Rows copied per step when joining parts (bounded memory: ~30 MB per table).
JOIN_ROWS = 1 << 20


def parts_dir(output: str | os.PathLike) -> Path:
    """Where the sections of ``output`` and their states are kept until the join."""
    output = Path(output)
    return output.with_name(f".{output.name}.parts")


def plan_sections(n_words: int, chunk_words: int, section_words: int) -> list[int]:
    """Section boundaries (word indices, first 0, last ``n_words``): sections of about
    ``section_words`` words, each a whole number of ``chunk_words`` read chunks."""
    if section_words < 1 or chunk_words < 1:
        raise ConversionError("section and chunk sizes must be >= 1 word")
    step = max(1, round(section_words / chunk_words)) * chunk_words
    bounds = list(range(0, n_words, step)) + [n_words]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < step // 2:  # no tiny last section
        bounds.pop(-2)
    return bounds if n_words > 0 else [0, 0]


def prescan(input: str | os.PathLike, output: str | os.PathLike, bounds: list[int],
            convert_kwargs: dict) -> list[str]:
    """Run the sequential part of the conversion over ``input`` and save the stream state at
    every boundary of ``bounds`` but the last to ``parts_dir(output)/state-K.pkl``; returns
    their paths (state 0 is the fresh state)."""
    job = prepare_job(input, output, check_output=False, **convert_kwargs)
    folder = parts_dir(output)
    folder.mkdir(exist_ok=True)
    state = StreamState(job.params, job.in_path)
    paths = []
    for k in range(len(bounds) - 1):
        if k:
            run_range(job.params, state, job.in_path, bounds[k - 1], bounds[k], final=False)
        p = folder / f"state-{k}.pkl"
        tmp = p.with_name(f"{p.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(state.dumps())
        os.replace(tmp, p)
        paths.append(str(p))
    return paths


def part_path(output: str | os.PathLike, k: int) -> Path:
    """The part file of section ``k``."""
    return parts_dir(output) / f"part-{k}.h5"


def convert_section(input: str | os.PathLike, output: str | os.PathLike, k: int, bounds: list[int],
                    state_path: str, convert_kwargs: dict, number_of_processes: int = 1) -> dict:
    """Convert section ``k`` (words ``bounds[k]`` to ``bounds[k + 1]``) of ``input`` to its
    part file, continuing the state saved by :func:`prescan`; returns the part's result as
    a dict. Safe to repeat (a retried task writes the same part)."""
    from tango_tpx.io.convert import convert_range_file, result_dict

    job = prepare_job(input, output, check_output=False, **convert_kwargs)
    state = StreamState.loads(Path(state_path).read_bytes())
    last = k == len(bounds) - 2
    out = part_path(output, k)
    tmp = out.with_name(f"{out.name}.{uuid.uuid4().hex}")
    r = convert_range_file(job, tmp, number_of_processes=number_of_processes, state=state,
                           start_word=bounds[k], stop_word=bounds[k + 1], final=last, train_ids=k == 0)
    os.replace(tmp, out)
    r.output = str(out)
    return result_dict(r)


def join_parts(input: str | os.PathLike, output: str | os.PathLike, n_parts: int, convert_kwargs: dict,
               *, force: bool = True, number_of_processes: int = 1, keep_parts: bool = False) -> dict:
    """Concatenate the part files of ``output`` into ``output`` (complete, atomically renamed;
    an existing output is replaced only with ``force``); returns the result as a dict."""
    import h5py

    from tango_tpx.io.convert import result_dict

    t0 = time.perf_counter()
    out = Path(output)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: output exists (use force / --force to replace it)")
    job = prepare_job(input, output, check_output=False, **convert_kwargs)
    parts = [part_path(output, k) for k in range(n_parts)]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise ConversionError(f"{out}: missing section files {missing}")
    result: ConvertResult = job.new_result()
    pixel_sum = dict.fromkeys(PIXEL_STATS, 0)
    tmp = out.with_name(f"{partial_path(out).name}-{uuid.uuid4().hex}")
    writer = Hdf5Writer(tmp, job.attrs, overwrite=True, compression=job.compression)
    try:
        last_attrs: dict[str, Any] = {}
        for p in parts:
            with h5py.File(p, "r") as f:
                if not f.attrs.get("complete", False):
                    raise ConversionError(f"{p}: section file is incomplete")
                for table, specs in TABLES.items():
                    n = f[next(iter(specs.values())).path].shape[0]
                    for a in range(0, n, JOIN_ROWS):
                        cols = {key: f[s.path][a:a + JOIN_ROWS] for key, s in specs.items()}
                        if table == "timing/trainID":
                            writer.append_train_ids(cols["timestamp"], cols["train id"], cols["beam mode"])
                        else:
                            writer.append_columns(table, cols)
                rc = json.loads(f.attrs["range_counts"])
                for k in ("words", "hits", "trigger_edges", "triggers", "events", "centroids"):
                    setattr(result, k, getattr(result, k) + int(rc[k]))
                for k, v in rc["pixel_stats"].items():
                    pixel_sum[k] = pixel_sum.get(k, 0) + int(v)
                last_attrs = {"word_counts": json.loads(f.attrs["word_counts"]),
                              "processing": json.loads(f.attrs["processing_stats"]),
                              "last_pixels": rc["pixel_stats"]}
                result.train_ids += int(f["timing/trainID/train id"].shape[0])
        result.word_counts = last_attrs["word_counts"]
        proc = dict(last_attrs["processing"])
        for k in PIXEL_STATS:  # the last part counted only its own range's pixels
            proc[k] = int(proc.get(k, 0)) - int(last_attrs["last_pixels"].get(k, 0)) + pixel_sum.get(k, 0)
        proc["pixels_in"] = result.hits
        result.processing = proc
        result.skipped_words = int(result.word_counts.get("tdc_invalid", 0)) + int(result.word_counts.get("other", 0))
        result.seconds = time.perf_counter() - t0
        writer.set_attrs(word_counts=result.word_counts, processing_stats=proc,
                         trailing_bytes=int(job.info.trailing_bytes), hits_decoded=int(result.hits),
                         number_of_processes=int(number_of_processes), sections=int(n_parts),
                         finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        writer.close(complete=True)
        os.replace(tmp, out)
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    result.complete = True
    result.output = str(out.resolve())
    if not keep_parts:
        remove_parts(output)
    return result_dict(result)


def remove_parts(output: str | os.PathLike) -> None:
    """Delete the section files and states of ``output`` (and their folder)."""
    folder = parts_dir(output)
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        folder.rmdir()


def convert_split(input: str | os.PathLike, output: str | os.PathLike, section_words: int, *,
                  force: bool = False, number_of_processes: int = 1, **convert_kwargs) -> dict:
    """Convert ``input`` section by section in this process (the same steps a Dask cluster
    runs side by side) and join; returns the result as a dict."""
    out = Path(output)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: output exists (use force / --force to replace it)")
    job = prepare_job(input, output, force=True, **convert_kwargs)
    bounds = plan_sections(job.info.n_words, job.params.chunk_words, section_words)
    states = prescan(input, output, bounds, convert_kwargs)
    for k in range(len(bounds) - 1):
        convert_section(input, output, k, bounds, states[k], convert_kwargs, number_of_processes)
    return join_parts(input, output, len(bounds) - 1, convert_kwargs, force=True,
                      number_of_processes=number_of_processes)


__all__ = ["parts_dir", "plan_sections", "prescan", "part_path", "convert_section", "join_parts",
           "remove_parts", "convert_split", "JOIN_ROWS"]
