"""The ordered worker pool: tasks in shared-memory slots, results handed on in order.

A task is a few named numpy arrays (placed in a shared-memory slot: no pipe copies) plus
small picklable metadata. Each worker builds its function once, ``fn = factory(init)``
(``factory`` an importable module-level callable, ``init`` picklable), then runs
``fn(inputs, meta, alloc) -> (arrays, small)`` per task:

* ``inputs``: the task's arrays (views of the slot in a worker);
* ``alloc(name, dtype, n)``: a writable array in the free part of the task's slot (results
  written there travel without a copy), or a fresh array when the slot is full; ``None``
  when the task runs inline (allocate as usual);
* ``arrays``: result arrays (those not in the slot are copied into it when they fit, else
  pickled); ``small``: picklable metadata of the result.

Task ``i`` goes to worker ``i % N``; every worker has ``slots_per_worker`` slots, so that
many tasks per worker are in flight. ``sink(arrays, small)`` is called in the submitting
thread in submission order; the arrays are views of the slot, valid only during the call
(copy what you keep).

Start-up from any thread: workers are forked (fast, they inherit loaded kernels) only when
no other Python thread runs in this process; otherwise (a Tango server, a GUI, a Dask
worker thread) each worker is a fresh interpreter (``subprocess``, like ``spawn``) that
maps the slots from an inherited ``memfd``. No forkserver and no resource tracker: after
:meth:`OrderedPool.close` this process has no child left and nothing is left in
``/dev/shm``. N = 1 runs every task inline in the caller, and so does a daemonic process
(a Dask nanny's worker, a multiprocessing pool child), which may not have children.
Workers carry the orphan guard (:mod:`.guard`) and run inside :class:`.tuning.ProcessTuning`.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import traceback
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .guard import die_with_parent
from .shm import SlotRing, align
from .threads import filled_arrays
from .tuning import ProcessTuning

#: ``fn(inputs, meta, alloc) -> (arrays, small)``, built in each worker by ``factory(init)``
WorkerFn = Callable[[dict, Any, Any], tuple[Mapping[str, np.ndarray], Any]]
#: ``sink(arrays, small)``: one result, in submission order
Sink = Callable[[dict, Any], None]
#: poll period (s) of the parent while it waits for a result (worker-death detection)
WAIT_POLL_S = 0.2

_BOOT = ("import sys\n"
         "from multiprocessing.connection import Connection\n"
         "conn = Connection(int(sys.argv[1]))\n"
         "sys.path[:] = conn.recv()\n"
         "from tango_tpx.runtime.pool import _spawned_main\n"
         "_spawned_main(conn)\n")


def single_threaded() -> bool:
    """True unless other Python threads run (a GUI, a pipeline, a Tango callback thread).

    Library pools that sit idle in C (OpenBLAS, numba) do not count: forking past them is
    what every numpy program using multiprocessing does, and the workers only run numpy/numba.
    """
    return threading.active_count() == 1


class _Arena:
    """Bump allocator over the free part of one slot (in a worker)."""

    def __init__(self, ring: SlotRing | None, slot: int, start: int) -> None:
        self.ring, self.slot, self.off = ring, slot, align(start)
        self.placed: dict[int, int] = {}

    def alloc(self, name: str, dtype: Any, n: int) -> np.ndarray:
        if self.ring is not None:
            got = self.ring.place(self.slot, [(name, dtype, n)], self.off)
            if got is not None:
                self.off = got[2]
                return got[0][name]
        return np.empty(int(n), dtype)

    def export(self, arrays: Mapping[str, np.ndarray]) -> tuple[list, dict]:
        """(layout of the arrays now in the slot, arrays that travel pickled)."""
        layout, shipped = [], {}
        for k, a in arrays.items():
            a = np.asarray(a)
            off = self.ring.offset_of(self.slot, a) if self.ring is not None else -1
            if off < 0 and self.ring is not None and a.ndim == 1 and a.size:
                got = self.ring.put(self.slot, {k: a}, self.off)
                if got is not None:
                    off, self.off = got[0][0][3], got[1]
            if off >= 0 and a.ndim == 1:
                layout.append([k, a.dtype.str, int(a.size), off])
            else:
                shipped[k] = a
        return layout, shipped


def _serve(conn: Connection, factory: Callable, init: Any, ring: SlotRing | None) -> None:
    """Worker loop: tasks in, results out, until ``None`` or the pipe closes."""
    with ProcessTuning(freeze=True):
        try:
            fn, failure = factory(init), None
        except BaseException:
            fn, failure = None, traceback.format_exc()
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg is None:
                break
            kind, s, payload, meta = msg
            try:
                if failure is not None:
                    raise RuntimeError(f"worker set-up failed:\n{failure}")
                if kind == "slot":
                    inputs = ring.arrays(s, payload, writeable=True)
                    end = max((off + n * np.dtype(dt).itemsize for _, dt, n, off in payload), default=0)
                else:
                    inputs, end = payload, 0
                arena = _Arena(ring, s, end)
                arrays, small = fn(inputs, meta, arena.alloc)
                inputs = None
                layout, shipped = arena.export(arrays)
                conn.send(("ok", layout, shipped, small))
            except BaseException:
                conn.send(("error", traceback.format_exc(), None, None))
    conn.close()


def _forked_main(conn: Connection, factory: Callable, init: Any, ring: SlotRing | None,
                 parent_pid: int, pdeathsig: bool) -> None:
    die_with_parent(parent_pid, pdeathsig)
    _serve(conn, factory, init, ring)


def _spawned_main(conn: Connection) -> None:
    """Entry point of a worker started as a fresh interpreter (see ``_BOOT``)."""
    parent_pid, pdeathsig, ring_spec, factory, init = conn.recv()
    die_with_parent(parent_pid, pdeathsig)
    ring = SlotRing.attach(ring_spec) if ring_spec is not None else None
    _serve(conn, factory, init, ring)


class _Child:
    """A worker process: a forked ``multiprocessing.Process`` or a ``subprocess.Popen``."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.forked = isinstance(proc, multiprocessing.process.BaseProcess)

    def alive(self) -> bool:
        return self.proc.is_alive() if self.forked else self.proc.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode if self.forked else self.proc.poll()

    def join(self, timeout: float) -> None:
        if self.forked:
            self.proc.join(timeout)
        else:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, terminate: bool, timeout: float = 5.0) -> None:
        if terminate and self.alive():
            self.proc.terminate()
        self.join(timeout)
        if self.alive():
            self.proc.kill()
            self.join(timeout)
        if self.forked:
            self.proc.close()


class OrderedPool:
    """Ordered processing of tasks, inline (N = 1) or on N worker processes (see the module).

    factory, init: ``factory(init)`` builds the task function in each worker (and once here
    for N = 1). n_processes: workers (1 = inline). sink: receives the results in order.
    slot_bytes: size of one slot (inputs + results of a task; a larger task travels
    pickled). slots_per_worker: tasks in flight per worker. start_method: ``'auto'`` (fork
    if single-threaded, else a fresh interpreter), ``'fork'`` or ``'spawn'``. warm_up:
    called here before forking (load kernels once for all workers). name: for errors and
    process names.
    """

    def __init__(self, factory: Callable[[Any], WorkerFn], init: Any, n_processes: int, sink: Sink, *,
                 slot_bytes: int, slots_per_worker: int = 2, start_method: str = "auto",
                 warm_up: Callable[[], None] | None = None, name: str = "tango-tpx-worker") -> None:
        if start_method not in ("auto", "fork", "spawn"):
            raise ValueError(f"start_method must be 'auto', 'fork' or 'spawn', got {start_method!r}")
        self.n = max(1, int(n_processes))
        self.name = name
        self.sink = sink
        #: why the pool runs inline although more processes were asked for ('' = it does not)
        self.inline_reason = ""
        if self.n > 1 and multiprocessing.current_process().daemon:
            self.n, self.inline_reason = 1, "daemonic process: no worker processes, tasks run inline"
        self.spw = max(1, int(slots_per_worker))
        self.children: list[_Child] = []
        self.conns: list[Connection] = []
        self.inflight: deque = deque()
        self.count = 0
        #: tasks sent through a slot / pickled (the rest of the transport is in the slot)
        self.sent = {"slot": 0, "pickled": 0}
        self.ring: SlotRing | None = None
        self.fn: WorkerFn | None = None
        if self.n == 1:
            self.fn = factory(init)
            return
        fork = "fork" in multiprocessing.get_all_start_methods() and (
            start_method == "fork" or (start_method == "auto" and single_threaded()))
        self.start_method = "fork" if fork else "spawn"
        self.ring = SlotRing(self.n * self.spw, slot_bytes)
        if not fork and not self.ring.mem.shareable:
            self.ring.close()
            self.ring = None
        if fork and warm_up is not None:
            try:
                warm_up()
            except Exception:  # only an optimisation: a real failure is the workers' to report
                pass
        # PR_SET_PDEATHSIG follows the starting *thread*: only the main thread outlives the pool
        pdeathsig = threading.current_thread() is threading.main_thread()
        try:
            for i in range(self.n):
                if fork:
                    self._fork(i, factory, init, pdeathsig)
                else:
                    self._spawn(i, factory, init, pdeathsig)
        except BaseException:
            self.close(terminate=True)
            raise

    # -- start ------------------------------------------------------------------------------
    def _fork(self, i: int, factory, init, pdeathsig: bool) -> None:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=True)
        p = ctx.Process(target=_forked_main, args=(child, factory, init, self.ring, os.getpid(), pdeathsig),
                        name=f"{self.name}-{i}", daemon=True)
        p.start()
        child.close()
        self.children.append(_Child(p))
        self.conns.append(parent)

    def _spawn(self, i: int, factory, init, pdeathsig: bool) -> None:
        a, b = socket.socketpair()
        fds = [b.fileno()] + ([self.ring.mem.fd] if self.ring is not None else [])
        try:
            p = subprocess.Popen([sys.executable, "-c", _BOOT, str(b.fileno())], pass_fds=fds,
                                 stdin=subprocess.DEVNULL)
        finally:
            b.close()
        conn = Connection(a.detach())
        self.children.append(_Child(p))
        self.conns.append(conn)
        conn.send(list(sys.path))
        conn.send((os.getpid(), pdeathsig, self.ring.spec() if self.ring is not None else None,
                   factory, init))

    # -- tasks ------------------------------------------------------------------------------
    def submit(self, meta: Any, arrays: Mapping[str, np.ndarray] | None = None, *,
               specs: Iterable[tuple[str, Any, int]] | None = None,
               fill: Callable[[dict[str, np.ndarray]], None] | None = None) -> None:
        """Queue one task: ``arrays`` (copied into a slot), or ``specs`` ``(name, dtype, n)``
        of arrays that ``fill(arrays)`` writes (straight into the slot: one pass). Blocks
        while every slot is in flight, handing finished results to the sink meanwhile."""
        if arrays is None and (specs is None or fill is None):
            raise ValueError("submit needs arrays, or specs and fill")
        if self.n == 1:
            inputs = dict(arrays) if arrays is not None else filled_arrays(specs, fill)
            out, small = self.fn(inputs, meta, None)
            self.sink(dict(out), small)
            return
        i = self.count
        self.count += 1
        w = i % self.n
        s = w * self.spw + (i // self.n) % self.spw
        while len(self.inflight) >= self.n * self.spw:
            self._collect()
        msg = None
        if self.ring is not None:
            if arrays is not None:
                got = self.ring.put(s, arrays)
                layout = got[0] if got is not None else None
            else:
                specs = list(specs)
                placed = self.ring.place(s, specs)
                layout = None
                if placed is not None:
                    fill(placed[0])
                    layout = placed[1]
            if layout is not None:
                msg = ("slot", s, layout, meta)
        if msg is None:
            payload = dict(arrays) if arrays is not None else filled_arrays(specs, fill)
            msg = ("pickled", s, payload, meta)
        self.sent[msg[0]] += 1
        try:
            self.conns[w].send(msg)
        except OSError:
            raise self._died(w) from None
        self.inflight.append((w, s))

    def _died(self, w: int) -> RuntimeError:
        child = self.children[w]
        child.join(1.0)
        return RuntimeError(f"{self.name} worker {w} died (exit code {child.exitcode})")

    def _collect(self) -> None:
        w, s = self.inflight.popleft()
        conn, child = self.conns[w], self.children[w]
        try:
            while not conn.poll(WAIT_POLL_S):
                if not child.alive():
                    if conn.poll(0):
                        break
                    raise self._died(w)
            kind, layout, shipped, small = conn.recv()
        except (EOFError, OSError):
            raise self._died(w) from None
        if kind == "error":
            raise RuntimeError(f"{self.name} worker {w} failed:\n{layout}")
        arrays = self.ring.arrays(s, layout) if layout else {}
        arrays.update(shipped)
        self.sink(arrays, small)

    def collect_ready(self) -> None:
        """Hand over results that are already finished at the head of the queue."""
        while self.inflight and self.conns[self.inflight[0][0]].poll():
            self._collect()

    def drain(self) -> None:
        """Wait for every task in flight and hand its result to the sink."""
        while self.inflight:
            self._collect()

    def close(self, terminate: bool = False) -> None:
        """Stop the workers (``terminate``: at once, dropping what is in flight), wait for
        them, close the pipes and unmap the slots. Idempotent."""
        if not terminate:
            for c in self.conns:
                try:
                    c.send(None)
                except OSError:
                    pass
        for child in self.children:
            child.stop(terminate)
        for c in self.conns:
            c.close()
        self.children, self.conns = [], []
        self.inflight.clear()
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def __enter__(self) -> "OrderedPool":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(terminate=exc_type is not None)


__all__ = ["OrderedPool", "WorkerFn", "Sink", "single_threaded"]
