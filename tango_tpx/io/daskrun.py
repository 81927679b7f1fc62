"""A conversion batch as tasks on a Dask distributed cluster.

Each input is one task (:func:`task_convert`), or, when larger than ``section_mb``, a pre-scan
task, one task per section and a join task (:mod:`tango_tpx.io.sections`). Tasks read their
input and write their output on storage that every worker and this client see (a parallel
or network filesystem). Every task writes under a name of its own (``<out>.partial-<id>``)
and renames it to the output only once it is complete, so a task retried on another worker
after its worker was killed gives the same output as a clean run, and a half-written file
is never taken for a result. In a worker the conversion uses ``number_of_processes``
processes of the converter's pool; in a daemonic worker process (the default under a Dask
nanny) the pool runs inline, so scale with more workers rather than more processes.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from tango_tpx.io.job import ConversionError

#: Sections are planned only for inputs larger than this by default (MB); 0 = never.
DEFAULT_SECTION_MB = 2048.0


def _unique_temp(out: Path) -> Path:
    return out.with_name(f"{out.name}.partial-{uuid.uuid4().hex[:12]}")


def task_convert(inp: str, out: str, convert_kwargs: dict, number_of_processes: int = 1) -> dict:
    """Dask task: convert ``inp`` to ``out`` (complete, renamed into place); the result dict."""
    from tango_tpx.io.convert import convert_range_file, result_dict
    from tango_tpx.io.job import prepare_job

    out_p = Path(out)
    job = prepare_job(inp, out_p, check_output=False, number_of_processes=number_of_processes, **convert_kwargs)
    tmp = _unique_temp(out_p)
    r = convert_range_file(job, tmp, number_of_processes=number_of_processes)
    os.replace(tmp, out_p)
    r.output = str(out_p.resolve())
    return result_dict(r)


def task_section(inp: str, out: str, k: int, bounds: list[int], states: list[str], convert_kwargs: dict,
                 number_of_processes: int = 1) -> dict:
    """Dask task: section ``k`` of ``inp`` (states from the pre-scan task)."""
    from tango_tpx.io.sections import convert_section

    return convert_section(inp, out, k, bounds, states[k], convert_kwargs, number_of_processes)


def task_join(inp: str, out: str, n_parts: int, convert_kwargs: dict, *sections: dict) -> dict:
    """Dask task: join the part files once every section task is done. The parts stay (the
    client removes them after the batch), so a join retried after its worker died after the
    rename still finds them."""
    from tango_tpx.io.sections import join_parts

    return join_parts(inp, out, n_parts, convert_kwargs, force=True, keep_parts=True)


def connect(scheduler: str | None, workers: int | None, timeout: float):
    """(client, local cluster or None): the scheduler at ``scheduler`` (``ConnectionError``
    within ``timeout`` s when it does not answer), or a local cluster of ``workers``
    one-thread worker processes."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=timeout, set_as_default=False), None
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"Dask scheduler {scheduler} unreachable within {timeout:g} s: {exc}") from None
    if workers is None or workers < 1:
        raise ConversionError(f"--workers must be >= 1, got {workers}")
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                           dashboard_address=None, host="127.0.0.1")
    try:
        return Client(cluster, set_as_default=False), cluster
    except BaseException:
        cluster.close()
        raise


def run_on_dask(todo: list, convert_kwargs: dict, progress: Any, sizes: dict, *, scheduler: str | None,
                workers: int | None, section_mb: float, number_of_processes: int, connect_timeout: float) -> None:
    """Run the ``todo`` list of :func:`~tango_tpx.io.batch.run_batch` as Dask tasks, filling
    in each outcome; returns when every task has finished or failed."""
    from dask.distributed import as_completed

    from tango_tpx.io.sections import plan_sections
    from tango_tpx.tpx3.files import inspect_file

    client, cluster = connect(scheduler, workers, connect_timeout)
    try:
        final, started, futures = {}, {}, []
        for oc, inp, out in todo:
            tag = uuid.uuid4().hex[:8]
            inp_s, out_s = str(Path(inp).resolve()), str(Path(out).resolve())
            try:
                info = inspect_file(inp)
            except (OSError, ValueError) as exc:
                oc.status, oc.reason = "failed", f"{type(exc).__name__}: {exc}"
                progress.advance(sizes[id(oc)], 0, file_done=True)
                continue
            chunk = int(convert_kwargs.get("chunk_words") or (1 << 20))
            section_words = int(section_mb * 1e6 / 8) if section_mb and section_mb > 0 else 0
            if section_words and info.n_words > section_words * 1.5:
                bounds = plan_sections(info.n_words, chunk, section_words)
                n = len(bounds) - 1
                pre = client.submit(_prescan_task, inp_s, out_s, bounds, convert_kwargs,
                                    key=f"tpx-prescan-{Path(inp).name}-{tag}", pure=False)
                secs = [client.submit(task_section, inp_s, out_s, k, bounds, pre, convert_kwargs,
                                      number_of_processes, key=f"tpx-section{k}-{Path(inp).name}-{tag}", pure=False)
                        for k in range(n)]
                fut = client.submit(task_join, inp_s, out_s, n, convert_kwargs, *secs,
                                    key=f"tpx-join-{Path(inp).name}-{tag}", pure=False)
                oc.sections = n
            else:
                fut = client.submit(task_convert, inp_s, out_s, convert_kwargs, number_of_processes,
                                    key=f"tpx-convert-{Path(inp).name}-{tag}", pure=False)
            final[fut.key] = oc
            started[fut.key] = time.perf_counter()
            futures.append(fut)
        for fut in as_completed(futures, loop=client.loop):
            oc = final[fut.key]
            oc.seconds = time.perf_counter() - started[fut.key]  # since submission
            try:
                res = fut.result()
                oc.status, oc.hits = "done", int(res["hits"])
                if oc.sections == 1:
                    oc.seconds = float(res["seconds"])  # the task's own time in its worker
            except Exception as exc:
                oc.status, oc.reason = "failed", f"{type(exc).__name__}: {exc}"
            progress.advance(sizes[id(oc)], oc.hits, file_done=True)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _prescan_task(inp: str, out: str, bounds: list[int], convert_kwargs: dict) -> list[str]:
    from tango_tpx.io.sections import prescan

    return prescan(inp, out, bounds, convert_kwargs)


__all__ = ["task_convert", "task_section", "task_join", "connect", "run_on_dask", "DEFAULT_SECTION_MB"]
