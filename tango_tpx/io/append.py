"""Append inputs to one run file as they arrive (``tango-tpx convert --append RUN.h5 INPUT...``).

The inputs of a run are consecutive pieces of one stream (files written one after the other
by the live recording). Each input continues the stream state of the one before (time
extension, trigger numbers, events still open at the end of the previous input), so event
numbers are global across inputs and the run file holds exactly what converting the
concatenated inputs gives. The state between appends lives in ``RUN.h5.state`` beside the
run file, with the row count of every dataset; an append that was cut short (crash, kill)
is rolled back to those counts by the next one. The run file keeps ``complete = False``
until :func:`close_run` releases the last open event, writes the totals and sets
``complete = True`` (and removes the state file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import h5py

from tango_tpx.io.batching import PIXEL_STATS
from tango_tpx.io.engine import StreamState
from tango_tpx.io.hdf5 import DATASETS, Hdf5Writer, _attr_value, _DistinctCounter, is_complete
from tango_tpx.io.job import ConversionError, ConvertResult, prepare_job

STATE_SUFFIX = ".state"
_SUMMED = ("words", "hits", "trigger_edges", "triggers", "events", "centroids")


def state_path(run: str | os.PathLike) -> Path:
    """The side file that holds an open run's stream state."""
    run = Path(run)
    return run.with_name(run.name + STATE_SUFFIX)


def _load_meta(run: Path) -> dict | None:
    sp = state_path(run)
    if not run.exists():
        if sp.exists():
            sp.unlink()  # a run file that never got written: start again
        return None
    if is_complete(run):
        raise ConversionError(f"{run}: the run is closed (complete); append to a new run file")
    if not sp.exists():
        raise ConversionError(f"{run}: not an open run (no {sp.name} beside it); append to a new run file")
    meta = pickle.loads(sp.read_bytes())
    if not isinstance(meta, dict) or meta.get("kind") != "tango-tpx run":
        raise ConversionError(f"{sp}: not a tango-tpx run state")
    return meta


def _save_meta(run: Path, meta: dict) -> None:
    sp = state_path(run)
    tmp = sp.with_name(f"{sp.name}.{uuid.uuid4().hex}")
    tmp.write_bytes(pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(tmp, sp)


def _append_part(run: Path, part: Path, rows: dict[str, int]) -> None:
    """Append every dataset of ``part`` to ``run`` after truncating ``run`` to ``rows``
    (undoing an append that did not finish); updates ``rows``."""
    with h5py.File(part, "r") as src, h5py.File(run, "a") as dst:
        for path in DATASETS:
            d, s = dst[path], src[path]
            start = rows.get(path, 0)
            n = s.shape[0]
            d.resize((start + n,))
            if n:
                d[start:start + n] = s[:]
            rows[path] = start + n
        dst.attrs["complete"] = False


def append_inputs(run: str | os.PathLike, inputs: list[str | os.PathLike], *, close: bool = False,
                  number_of_processes: int = 1, **convert_kwargs: Any) -> list[ConvertResult]:
    """Append ``inputs`` (in order) to the run file ``run`` (created on the first call);
    ``close`` then closes the run (see :func:`close_run`). ``convert_kwargs``: the
    conversion options of :func:`~tango_tpx.io.convert.convert_file`; the first append of a
    run fixes them (kept in the state file) and later appends use those (except
    ``trainid_file``: each input's own train-ID side file). Returns one result
    per input (rows this input added)."""
    from tango_tpx.io.convert import convert_range_file

    run = Path(run)
    if not run.parent.is_dir():
        raise FileNotFoundError(f"{run.parent}: output directory does not exist")
    results = []
    for inp in inputs:
        meta = _load_meta(run)
        if meta is not None:  # the first append fixed the run's conversion options
            convert_kwargs = dict(meta["options"], trainid_file=convert_kwargs.get("trainid_file"))
        job = prepare_job(inp, run, check_output=False, **convert_kwargs)
        if meta is None:
            attrs = dict(job.attrs, run_inputs=[])
            Hdf5Writer(run, attrs, overwrite=False, compression=job.compression).close(complete=False)
            meta = {"kind": "tango-tpx run", "state": StreamState(job.params, job.in_path).dumps(), "rows": {},
                    "inputs": [], "counts": dict.fromkeys(_SUMMED, 0), "pixel_stats": dict.fromkeys(PIXEL_STATS, 0),
                    "framing": job.params.framing, "layout": job.params.layout, "options": {k: v for k, v in convert_kwargs.items() if k != "trainid_file"}}
            _save_meta(run, meta)
        # one stream, one clock: timing/timepix/timestamp counts from the first input's header
        meta.setdefault("start_time_ns", job.params.start_time_ns)
        job.params = dataclasses.replace(job.params, start_time_ns=int(meta["start_time_ns"]))
        if (job.params.framing, job.params.layout) != (meta["framing"], meta["layout"]):
            raise ConversionError(f"{inp}: {job.params.framing}/{job.params.layout} data cannot join a "
                                  f"{meta['framing']}/{meta['layout']} run")
        state = StreamState.loads(meta["state"])
        part = run.with_name(f".{run.name}.append-{uuid.uuid4().hex}.h5")
        try:
            r = convert_range_file(job, part, number_of_processes=number_of_processes, state=state, final=False)
            if r.hits == 0 and r.trigger_edges == 0:  # the run is left as it was
                raise ConversionError(f"{inp}: no pixel hits and no trigger words found "
                                      f"({r.words} words: {r.word_counts}); nothing to append")
            _append_part(run, part, meta["rows"])
        finally:
            part.unlink(missing_ok=True)
        for k in _SUMMED:
            meta["counts"][k] += getattr(r, k)
        meta["pixel_stats"] = _add_pixels(meta["pixel_stats"], r.range_counts.pixel_stats)
        meta["inputs"].append(str(Path(inp).resolve()))
        meta["last_input"] = meta["inputs"][-1]
        meta["state"] = state.dumps()
        with h5py.File(run, "a") as f:
            f.attrs["run_inputs"] = json.dumps(meta["inputs"])
        _save_meta(run, meta)
        results.append(r)
    if close:
        results.append(close_run(run, number_of_processes=number_of_processes, **convert_kwargs))
    return results


def _add_pixels(total: dict, part_pixels: dict) -> dict:
    return {k: int(total.get(k, 0)) + int(part_pixels.get(k, 0)) for k in set(total) | set(part_pixels)}


def close_run(run: str | os.PathLike, *, number_of_processes: int = 1, **convert_kwargs: Any) -> ConvertResult:
    """Release the last open event of the run, write the run's totals and mark it complete.
    The conversion options are those the run was started with (``convert_kwargs`` are
    accepted for symmetry with :func:`append_inputs` and not used)."""
    from tango_tpx.io.convert import convert_range_file

    t0 = time.perf_counter()
    run = Path(run)
    meta = _load_meta(run)
    if meta is None:
        raise FileNotFoundError(f"{run}: no such run file")
    if not meta["inputs"]:
        raise ConversionError(f"{run}: nothing was appended to this run")
    job = prepare_job(meta["last_input"], run, check_output=False, **dict(meta["options"], trainid_file=False))
    job.params = dataclasses.replace(job.params, start_time_ns=int(meta.get("start_time_ns", 0)))
    state = StreamState.loads(meta["state"])
    part = run.with_name(f".{run.name}.close-{uuid.uuid4().hex}.h5")
    n = job.info.n_words
    try:
        r = convert_range_file(job, part, number_of_processes=number_of_processes, state=state,
                               start_word=n, stop_word=n, final=True, train_ids=False)
        _append_part(run, part, meta["rows"])
    finally:
        part.unlink(missing_ok=True)
    for k in _SUMMED:
        meta["counts"][k] += getattr(r, k)
    pixels = _add_pixels(meta["pixel_stats"], r.range_counts.pixel_stats)
    word_counts, proc = state.totals(pixels, meta["counts"]["hits"])
    result = ConvertResult(input=",".join(meta["inputs"]), output=str(run.resolve()), word_counts=word_counts,
                           processing=proc, **meta["counts"])
    result.skipped_words = state.decoder.counts.malformed
    with h5py.File(run, "a") as f:
        for key, value in {"word_counts": word_counts, "processing_stats": proc, "hits_decoded": result.hits,
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}.items():
            f.attrs[key] = _attr_value(value)
        for name in ("raw", "centroided"):
            counter, d = _DistinctCounter(), f[f"{name}/trigger nr"]
            for a in range(0, d.shape[0], 1 << 20):
                counter.update(d[a:a + (1 << 20)])
            f[name].attrs["nr events"] = counter.count
        f["timing/timepix"].attrs["nr events"] = int(f["timing/timepix/trigger nr"].shape[0])
        f.flush()
        f.attrs["complete"] = True
    state_path(run).unlink(missing_ok=True)
    result.complete = True
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["append_inputs", "close_run", "state_path", "STATE_SUFFIX"]
