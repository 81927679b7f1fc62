"""The ordered worker pool (tango_tpx.runtime): order, equality with inline runs, start from a
thread that is not the main thread, worker death, no process or shared-memory segment left
behind; the process-tuning context; the orphan guard."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tango_tpx.io import hdf5 as H
from tango_tpx.io.convert import convert_file
from tango_tpx.processing.centroids import CentroidCalculator
from tango_tpx.runtime.pool import OrderedPool
from tango_tpx.runtime.shm import MsgRing, SlotRing
from tango_tpx.runtime.tuning import ProcessTuning

from .poolwork import broken_worker, scale_worker
from .test_convert import all_datasets, write_raw
from .test_pipeline_helpers import child_pids, pid_alive


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


_HELD_BEFORE: list[str] = []


@pytest.fixture(autouse=True)
def _slots_held_before():
    """Pool slots this process already held before the test (rings of other tests' pipelines
    that the garbage collector has not freed yet): a test only answers for its own."""
    gc.collect()
    _HELD_BEFORE[:] = slot_mappings()
    yield


def new_slot_mappings() -> list[str]:
    """Pool slots mapped or open in this process that were not before the test."""
    gc.collect()
    held = list(slot_mappings())
    for m in _HELD_BEFORE:
        if m in held:
            held.remove(m)
    return held


def slot_mappings() -> list[str]:
    """This process's mappings and descriptors of pool slots (``memfd:tango-tpx``). Other
    /dev/shm files (multiprocessing's heap arenas of shared values made by other tests in the
    same process) are not slots; new /dev/shm entries are checked by :func:`shm_entries`."""
    with open("/proc/self/maps") as f:
        held = [line.split(None, 5)[-1].strip() for line in f if "memfd:tango-tpx" in line]
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "memfd:tango-tpx" in target:
            held.append(target)
    return held


def assert_nothing_left(children: set[int], shm: set[str]) -> None:
    """No new child process, no pool slot still mapped here, no new /dev/shm entry (other
    programs on the machine may create short-lived ones: an entry must stay 2 s to count)."""
    new = child_pids() - children
    cmdlines = {}
    for pid in new:
        try:
            cmdlines[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")[:200]
        except OSError:
            pass
    assert not new, f"child processes left: {cmdlines}"
    assert new_slot_mappings() == []
    deadline = time.monotonic() + 2.0
    while shm_entries() - shm and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shm_entries() - shm == set()


def in_thread(fn):
    """Run ``fn()`` in a new (non-main) thread while the main thread waits; its result or
    its exception."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=body, name="not-main")
    t.start()
    t.join(120)
    assert not t.is_alive(), "the thread did not finish"
    if "error" in out:
        raise out["error"]
    return out["value"]


def tasks(n_tasks: int = 14, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    # sizes from empty to larger than a slot (those travel pickled)
    sizes = [0, 1, 5, 3000, 70_000] + list(rng.integers(1, 5000, n_tasks - 5))
    return [{"x": rng.normal(size=int(s)), "n": rng.integers(0, 100, int(s)).astype(np.int32)} for s in sizes]


def run_pool(n: int, start_method: str = "auto", fill: bool = False) -> tuple[list, dict, str]:
    got: list = []

    def sink(arrays, small):
        got.append(({k: np.array(a) for k, a in arrays.items()}, small[:2]))

    with OrderedPool(scale_worker, {"k": 2.5}, n, sink, slot_bytes=200_000, start_method=start_method,
                     name="test") as pool:
        for i, t in enumerate(tasks()):
            if fill:
                specs = [(k, a.dtype, a.size) for k, a in t.items()]
                pool.submit(i, specs=specs, fill=lambda views, t=t: [views[k].__setitem__(..., t[k]) for k in t])
            else:
                pool.submit(i, t)
            pool.collect_ready()
        pool.drain()
        return got, dict(pool.sent), getattr(pool, "start_method", "inline")


def assert_same_centroids(a, b) -> None:
    """Two ``Centroids`` equal field by field."""
    for k, v in a.as_dict().items():
        np.testing.assert_array_equal(v, getattr(b, k), err_msg=k)


def assert_same(a: list, b: list) -> None:
    assert [s for _, s in a] == [s for _, s in b]
    for (x, _), (y, _) in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fill", [False, True])
def test_results_in_order_and_equal_to_inline(fill):
    one, sent1, how1 = run_pool(1, fill=fill)
    two, sent2, how2 = run_pool(2, fill=fill)
    assert how1 == "inline" and sent1 == {"slot": 0, "pickled": 0}
    assert [s[0] for _, s in two] == list(range(len(tasks())))
    assert_same(one, two)
    np.testing.assert_array_equal(one[3][0]["y"], tasks()[3]["x"] * 2.5)
    assert sent2["slot"] >= 10 and sent2["pickled"] == 1       # the 70 000-value task is too big


@pytest.mark.timeout(120)
def test_pool_started_from_a_thread_runs_fresh_interpreters_and_leaves_nothing():
    children, shm = child_pids(), shm_entries()
    one, _, _ = run_pool(1)
    two, sent, how = in_thread(lambda: run_pool(2))
    assert how == "spawn" and sent["slot"] >= 10
    assert_same(one, two)
    assert_nothing_left(children, shm)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_killed_worker_gives_a_clear_error(start_method):
    children = child_pids()
    pool = OrderedPool(scale_worker, {"k": 1.0}, 2, lambda a, s: None, slot_bytes=100_000,
                       start_method=start_method, name="test")
    try:
        pool.submit("slow", {"x": np.ones(10), "n": np.ones(10, np.int32)})
        victim = pool.children[0].proc.pid
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"test worker 0 died \(exit code -9\)"):
            pool.drain()
        assert time.monotonic() - t0 < 10
    finally:
        pool.close(terminate=True)
    assert child_pids() - children == set()


@pytest.mark.timeout(120)
def test_a_failing_task_and_a_failing_factory_name_the_cause():
    with OrderedPool(scale_worker, {"k": 1.0}, 2, lambda a, s: None, slot_bytes=100_000) as pool:
        pool.submit("fail", {"x": np.ones(3), "n": np.ones(3, np.int32)})
        with pytest.raises(RuntimeError, match="task asked to fail"):
            pool.drain()
    with OrderedPool(broken_worker, None, 2, lambda a, s: None, slot_bytes=100_000) as pool:
        pool.submit(0, {"x": np.ones(3)})
        with pytest.raises(RuntimeError, match="cannot build the task function"):
            pool.drain()
    with pytest.raises(RuntimeError, match="cannot build the task function"):
        OrderedPool(broken_worker, None, 1, lambda a, s: None, slot_bytes=100_000)


@pytest.mark.timeout(240)
def test_converter_with_two_processes_from_a_thread_equals_one_process(tmp_path):
    from tango_tpx.simulator import SimConfig, simulate

    words, _ = simulate(SimConfig(rate_mhits=2.0, duration_s=0.03, seed=21, trigger_hz=2000.0))
    src = write_raw(tmp_path / "sim.raw", words)
    a, b = tmp_path / "one.h5", tmp_path / "two.h5"
    ra = convert_file(src, a, number_of_processes=1)
    children, shm = child_pids(), shm_entries()
    rb = in_thread(lambda: convert_file(src, b, number_of_processes=2, chunk_words=4000, batch_hits=3000,
                                        worker_kind="processes"))
    assert ra.centroids > 1000 and (ra.hits, ra.events, ra.centroids) == (rb.hits, rb.events, rb.centroids)
    da, db = all_datasets(a), all_datasets(b)
    for path in H.DATASETS:
        np.testing.assert_array_equal(da[path], db[path], err_msg=path)
    assert_nothing_left(children, shm)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dbscan", [False, True])
def test_centroid_calculator_two_processes_from_a_thread_equals_one(dbscan):
    from tango_tpx.simulator import SimConfig, simulate

    from .test_centroids import truth_events

    _, truth = simulate(SimConfig(rate_mhits=1.0, duration_s=0.03, seed=22, trigger_hz=1000.0))
    ev = truth_events(truth)
    with CentroidCalculator(number_of_processes=1, dbscan_clustering=dbscan) as one:
        a = one.process(ev)
    children, shm = child_pids(), shm_entries()

    def two_processes():
        with CentroidCalculator(number_of_processes=2, dbscan_clustering=dbscan, min_hits_per_process=100,
                                worker_kind="processes") as two:
            out = [two.process(ev), two.process(ev)]       # the pool is kept between batches
            assert two._pool is not None and two._pool.start_method == "spawn"
            return out

    b, c = in_thread(two_processes)
    assert len(a) > 100
    for got in (b, c):
        assert_same_centroids(a, got)
    assert_nothing_left(children, shm)


_ORPHANS = r"""
import os, sys, threading
import numpy as np
sys.path.insert(0, sys.argv[1])
from tests.poolwork import scale_worker
from tango_tpx.runtime.pool import OrderedPool

pools = [OrderedPool(scale_worker, {"k": 1.0}, 2, lambda a, s: None, slot_bytes=65536)]
t = threading.Thread(target=lambda: pools.append(OrderedPool(scale_worker, {"k": 1.0}, 2, lambda a, s: None,
                                                             slot_bytes=65536)))
t.start(); t.join()
assert [p.start_method for p in pools] == ["fork", "spawn"], [p.start_method for p in pools]
for p in pools:
    p.submit(0, {"x": np.ones(4), "n": np.ones(4, np.int32)}); p.drain()
print(" ".join(str(c.proc.pid) for p in pools for c in p.children), flush=True)
os._exit(0)   # no clean-up: the workers must notice on their own
"""


@pytest.mark.timeout(60)
def test_workers_end_when_their_parent_dies():
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", _ORPHANS, repo], capture_output=True, text=True, timeout=40)
    assert out.returncode == 0, out.stderr[-3000:]
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 4
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


class Stop(Exception):
    pass


def test_tuning_context_restores_gc_and_signal_state():
    handler = signal.getsignal(signal.SIGTERM)
    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    with ProcessTuning(Stop, freeze=True):
        assert not gc.isenabled() and signal.getsignal(signal.SIGTERM) is not handler
        with pytest.raises(Stop):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        with ProcessTuning(freeze=False):        # nested: the outer state comes back
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled() and signal.getsignal(signal.SIGTERM) is handler
    assert gc.get_freeze_count() == frozen

    def from_thread():                            # no signal handler from another thread
        with ProcessTuning(Stop):
            return signal.getsignal(signal.SIGTERM), gc.isenabled()

    assert in_thread(from_thread) == (handler, False)
    assert gc.isenabled()


def test_slot_ring_arrays_and_messages():
    from tango_tpx.processing.events import Events

    shm = shm_entries()
    ring = MsgRing(4, 10_000)
    assert ring.slot_bytes == 12288 and ring.free_slot() == 0
    ev = Events(np.arange(5, dtype=np.int64), np.arange(5, dtype=np.uint16), np.ones(5, np.uint16),
                np.arange(5, dtype=np.int64) * 7, np.full(5, 9, np.uint16), np.arange(5, dtype=np.int64))
    meta = ring.pack(2, ev)
    ring.acquire(2)
    back = ring.unpack(meta, Events)
    assert not back.x.flags.writeable and ring.free_slot() == 0 and not ring.is_free(2)
    for k, v in ev.as_dict().items():
        np.testing.assert_array_equal(v, getattr(back, k))
    assert ring.pack(1, Events(*(np.zeros(5000, np.int64) for _ in range(6)))) is None   # too big
    layout, end = ring.put(3, {"a": np.arange(10, dtype=np.int32)}, start=100)
    assert layout == [["a", "<i4", 10, 128]] and end == 192
    assert ring.offset_of(3, ring.arrays(3, layout)["a"]) == 128 and ring.offset_of(3, np.ones(3)) == -1
    with pytest.raises(ValueError, match="outside ring slot"):
        ring.arrays(3, [["a", "<i8", 10_000, 0]])
    back = None
    ring.close()
    assert shm_entries() - shm == set() and new_slot_mappings() == []
    assert SlotRing(1, 1).slot_bytes == 4096
