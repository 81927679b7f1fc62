"""The ordered worker pool on threads of this process, for task functions whose work
releases the GIL (numba ``nogil`` kernels, numpy).

:class:`OrderedThreadPool` has the interface of :class:`.pool.OrderedPool` (``submit``,
``collect_ready``, ``drain``, ``close``; ``factory(init)`` builds the task function once per
thread; ``sink(arrays, small)`` gets the results in submission order in the submitting
thread). Tasks keep their arrays as they are: no shared-memory slot, no copy and no pipe.
Against worker processes this saves the transport and the page faults of memory that a
fresh process touches for the first time (on a virtual machine a fresh 4 KiB page costs
several microseconds); the price is that the Python parts of the tasks share the GIL.
Threads need no start method, run in daemonic processes (a Dask worker) and leave nothing
behind: :meth:`OrderedThreadPool.close` joins them.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping

import numpy as np


#: ``worker_kind`` choices of the converter and of ``CentroidCalculator``: 'auto' (threads
#: for work that releases the GIL, the built-in 'fast' clustering; processes otherwise),
#: 'threads', 'processes'
WORKER_KINDS = ("auto", "threads", "processes")


def check_worker_kind(kind: str) -> None:
    """ValueError naming the choices unless ``kind`` is one of :data:`WORKER_KINDS`."""
    if kind not in WORKER_KINDS:
        raise ValueError(f"worker_kind must be one of {', '.join(WORKER_KINDS)}, got {kind!r}")


def pick_worker_kind(kind: str, releases_gil: bool) -> str:
    """'threads' or 'processes' for ``kind`` (one of :data:`WORKER_KINDS`): 'auto' takes threads
    when the work ``releases_gil``; ValueError names the choices."""
    check_worker_kind(kind)
    if kind != "auto":
        return kind
    return "threads" if releases_gil else "processes"


def filled_arrays(specs: Iterable[tuple[str, Any, int]], fill: Callable[[dict[str, np.ndarray]], None]
                  ) -> dict[str, np.ndarray]:
    """New arrays ``(name, dtype, n)`` of ``specs``, written by ``fill(arrays)``."""
    arrays = {k: np.empty(int(n), dt) for k, dt, n in specs}
    fill(arrays)
    return arrays


class OrderedThreadPool:
    """Ordered processing of tasks on ``n_threads`` threads (1: inline in the caller).

    factory, init: ``factory(init)`` builds the task function ``fn(inputs, meta, alloc)`` in
    each thread (``alloc`` is always None: results are plain arrays). sink: receives
    ``(arrays, small)`` in submission order. tasks_per_thread: tasks in flight per thread
    (bounds the memory held by queued tasks). warm_up: called here once before the threads
    start (load kernels once, not raced for by the threads), as the process pool does before
    it forks. A task's exception reaches the caller at ``drain``/``collect_ready`` as a
    RuntimeError naming it (the original chained), as from worker processes; with one thread
    (inline) it is raised as it is.
    """

    def __init__(self, factory: Callable, init: Any, n_threads: int, sink: Callable[[dict, Any], Any], *,
                 tasks_per_thread: int = 2, warm_up: Callable[[], None] | None = None,
                 name: str = "tango-tpx") -> None:
        self.factory, self.init, self.sink, self.name = factory, init, sink, name
        self.n = max(1, int(n_threads))
        if self.n > 1 and warm_up is not None:
            try:
                warm_up()
            except Exception:  # only an optimisation: a real failure is the tasks' to report
                pass
        self.inline_reason = ""
        self.limit = self.n * max(1, int(tasks_per_thread))
        self._local = threading.local()
        self._inflight: deque[Future] = deque()
        self._executor = ThreadPoolExecutor(self.n, thread_name_prefix=name) if self.n > 1 else None

    def _run(self, inputs: dict, meta: Any) -> tuple[Mapping[str, np.ndarray], Any]:
        fn = getattr(self._local, "fn", None)
        if fn is None:
            fn = self._local.fn = self.factory(self.init)
        return fn(inputs, meta, None)

    def submit(self, meta: Any, arrays: Mapping[str, np.ndarray] | None = None, *,
               specs: Iterable[tuple[str, Any, int]] | None = None,
               fill: Callable[[dict[str, np.ndarray]], None] | None = None) -> None:
        """Queue one task: ``arrays`` (used as they are), or ``specs`` ``(name, dtype, n)`` of
        arrays that ``fill(arrays)`` writes (here, before the task is queued). Blocks while
        ``tasks_per_thread`` tasks per thread are in flight, handing results to the sink."""
        if arrays is None and (specs is None or fill is None):
            raise ValueError("submit needs arrays, or specs and fill")
        inputs = dict(arrays) if arrays is not None else filled_arrays(specs, fill)
        if self._executor is None:
            out, small = self._run(inputs, meta)
            self.sink(dict(out), small)
            return
        while len(self._inflight) >= self.limit:
            self._deliver_next()
        self._inflight.append(self._executor.submit(self._run, inputs, meta))

    def _deliver_next(self) -> None:
        fut = self._inflight.popleft()
        try:
            out, small = fut.result()
        except Exception as exc:   # as the process pool reports it, with the cause chained
            raise RuntimeError(f"{self.name} worker failed: {type(exc).__name__}: {exc}") from exc
        self.sink(dict(out), small)

    def collect_ready(self) -> None:
        """Hand the finished results at the head of the queue to the sink (does not block)."""
        while self._inflight and self._inflight[0].done():
            self._deliver_next()

    def drain(self) -> None:
        """Wait for every task and hand its result to the sink, in order."""
        while self._inflight:
            self._deliver_next()

    def close(self, terminate: bool = False) -> None:
        """Join the threads. ``terminate``: drop the queued tasks that have not started (a
        running task finishes first: threads cannot be killed). Idempotent."""
        if self._executor is not None:
            if terminate:
                for fut in self._inflight:
                    fut.cancel()
            self._executor.shutdown(wait=True)
            self._executor = None
        self._inflight.clear()


__all__ = ["OrderedThreadPool", "WORKER_KINDS", "check_worker_kind", "filled_arrays", "pick_worker_kind"]
