"""The ordered pool on threads (:class:`tango_tpx.runtime.threads.OrderedThreadPool`) and the
converter's choice of worker threads or processes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tango_tpx.io import hdf5 as H
from tango_tpx.io.convert import convert_file
from tango_tpx.io.pool import resolve_worker_kind
from tango_tpx.processing.settings import ClusteringConfig
from tango_tpx.runtime.threads import OrderedThreadPool

from .poolwork import broken_worker, scale_worker
from .test_convert import all_datasets, write_raw
from .test_pipeline_helpers import child_pids
from .test_runtime_pool import assert_same_centroids, in_thread


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-threads")]


def slow_first_worker(init):
    """fn: task 0 sleeps, so the later tasks finish first; returns 10 * meta."""
    def run(inputs, meta, alloc):
        assert alloc is None
        if meta == 0:
            time.sleep(0.3)
        return {"y": inputs["x"] * 10}, (meta, threading.current_thread().name)
    return run


@pytest.mark.timeout(60)
def test_results_come_in_submission_order_and_the_threads_are_joined():
    got = []
    pool = OrderedThreadPool(slow_first_worker, None, 2, lambda a, s: got.append((a["y"].copy(), s)),
                             name="test-threads")
    for i in range(9):
        pool.submit(i, {"x": np.arange(i + 1)})
        pool.collect_ready()
    pool.drain()
    assert [s[0] for _, s in got] == list(range(9))
    for i, (y, _) in enumerate(got):
        np.testing.assert_array_equal(y, np.arange(i + 1) * 10)
    assert len({s[1] for _, s in got}) == 2            # both threads worked
    assert len(pool_threads()) == 2
    pool.close()
    assert pool_threads() == []


@pytest.mark.timeout(60)
def test_one_thread_runs_inline_and_fill_writes_the_inputs():
    got = []
    pool = OrderedThreadPool(scale_worker, {"k": 2.0}, 1, lambda a, s: got.append((a, s)), name="test-threads")
    x = np.array([1.0, 2.0, 3.0])
    pool.submit("a", specs=[("x", np.float64, 3), ("n", np.int32, 3)],
                fill=lambda arr: (arr["x"].__setitem__(..., x), arr["n"].__setitem__(..., [1, 2, 3])))
    assert len(got) == 1 and pool_threads() == []      # done before submit returned
    np.testing.assert_array_equal(got[0][0]["y"], x * 2.0)
    np.testing.assert_array_equal(got[0][0]["cum"], [1, 3, 6])
    assert got[0][1][:2] == ("a", 12.0)
    pool.close()


@pytest.mark.timeout(60)
def test_a_failing_task_or_factory_raises_its_own_error_at_drain():
    pool = OrderedThreadPool(scale_worker, {"k": 1.0}, 2, lambda a, s: None, name="test-threads")
    pool.submit("fail", {"x": np.ones(3), "n": np.ones(3, np.int32)})
    with pytest.raises(RuntimeError, match="test-threads worker failed: ValueError: task asked to fail"):
        pool.drain()
    pool.close()
    pool = OrderedThreadPool(broken_worker, None, 2, lambda a, s: None, name="test-threads")
    pool.submit(0, {"x": np.ones(3)})
    with pytest.raises(RuntimeError, match="cannot build the task function"):
        pool.drain()
    pool.close(terminate=True)
    assert pool_threads() == []
    with pytest.raises(ValueError, match="specs and fill"):
        OrderedThreadPool(scale_worker, {"k": 1.0}, 1, lambda a, s: None).submit(0)


def test_auto_takes_threads_for_the_fast_clustering_and_processes_otherwise():
    fast = {"centroiding": True, "clustering": ClusteringConfig()}
    dbscan = {"centroiding": True, "clustering": ClusteringConfig(algorithm="dbscan")}
    assert resolve_worker_kind("auto", fast) == "threads"
    assert resolve_worker_kind("auto", dbscan) == "processes"
    assert resolve_worker_kind("auto", {**dbscan, "centroiding": False}) == "threads"
    assert resolve_worker_kind("processes", fast) == "processes"
    with pytest.raises(ValueError, match="auto, threads, processes"):
        resolve_worker_kind("gpu", fast)


@pytest.mark.timeout(240)
def test_converter_gives_the_same_file_with_threads_processes_and_inline(tmp_path):
    from tango_tpx.simulator import SimConfig, simulate

    words, _ = simulate(SimConfig(rate_mhits=2.0, duration_s=0.03, seed=22, trigger_hz=2000.0))
    src = write_raw(tmp_path / "sim.raw", words)
    children = child_pids()
    results, data = {}, {}
    for kind, n in (("inline", 1), ("threads", 2), ("processes", 2)):
        out = tmp_path / f"{kind}.h5"
        results[kind] = convert_file(src, out, number_of_processes=n, chunk_words=4000, batch_hits=3000,
                                     worker_kind="auto" if kind == "inline" else kind)
        data[kind] = all_datasets(out)
    r = results["inline"]
    assert r.centroids > 1000 and r.events > 10_000
    for kind in ("threads", "processes"):
        assert (results[kind].hits, results[kind].events, results[kind].centroids) == (r.hits, r.events, r.centroids)
        for path in H.DATASETS:
            np.testing.assert_array_equal(data[kind][path], data["inline"][path], err_msg=f"{kind} {path}")
    assert child_pids() - children == set()
    assert [t for t in threading.enumerate() if t.name.startswith("tango-tpx-convert")] == []
    with pytest.raises(ValueError, match="worker_kind must be one of auto, threads, processes"):
        convert_file(src, tmp_path / "bad.h5", number_of_processes=2, worker_kind="fibres")
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.timeout(240)
def test_an_interrupted_threaded_conversion_stops_its_threads_and_says_why(tmp_path):
    from tango_tpx.io.convert import ConversionInterrupted, partial_path
    from tango_tpx.simulator import SimConfig, simulate

    words, _ = simulate(SimConfig(rate_mhits=2.0, duration_s=0.05, seed=23, trigger_hz=2000.0))
    src = write_raw(tmp_path / "sim.raw", words)
    out = tmp_path / "o.h5"
    seen = []

    def ctrl_c_at_half(fraction: float) -> None:
        seen.append(fraction)
        if fraction >= 0.5:
            raise KeyboardInterrupt

    with pytest.raises(ConversionInterrupted):
        convert_file(src, out, number_of_processes=2, chunk_words=4000, batch_hits=3000,
                     worker_kind="threads", progress_callback=ctrl_c_at_half)
    assert 0.5 <= seen[-1] < 1.0
    assert not out.exists()
    import h5py

    with h5py.File(partial_path(out), "r") as f:
        assert f.attrs["complete"] == np.False_ and f.attrs["interrupted"] == "Ctrl-C (SIGINT)"
        assert f["raw/x"].shape[0] > 0                   # what the threads finished is there
    assert [t for t in threading.enumerate() if t.name.startswith("tango-tpx-convert")] == []


@pytest.mark.timeout(180)
def test_centroid_calculator_on_threads_equals_one_process_from_any_thread():
    from tango_tpx.processing.centroids import CentroidCalculator
    from tango_tpx.simulator import SimConfig, simulate

    from .test_centroids import truth_events

    _, truth = simulate(SimConfig(rate_mhits=1.0, duration_s=0.03, seed=24, trigger_hz=1000.0))
    ev = truth_events(truth)
    with CentroidCalculator(number_of_processes=1) as one:
        a = one.process(ev)
    children = child_pids()

    def three_threads():
        with CentroidCalculator(number_of_processes=3, min_hits_per_process=100) as three:
            assert three.worker_kind_used == "threads"
            out = [three.process(ev), three.process(ev)]    # the pool is kept between batches
            assert isinstance(three._pool, OrderedThreadPool) and three._pool.n == 3
            assert len([t for t in threading.enumerate() if t.name.startswith("centroid")]) == 3
            return out

    b, c = in_thread(three_threads)
    assert len(a) > 100
    for got in (b, c):
        assert_same_centroids(a, got)
    assert [t for t in threading.enumerate() if t.name.startswith("centroid")] == []
    assert child_pids() == children                      # no worker process was started


def test_centroid_calculator_worker_kind_follows_the_clustering_and_is_checked():
    from tango_tpx.processing.centroids import CentroidCalculator
    from tango_tpx.processing.logic.centroid_calculator import CentroidCalculator as PymepixCalculator

    assert CentroidCalculator(number_of_processes=2).worker_kind_used == "threads"
    assert CentroidCalculator(number_of_processes=2, dbscan_clustering=True).worker_kind_used == "processes"
    assert CentroidCalculator(worker_kind="processes").worker_kind_used == "processes"
    assert CentroidCalculator(dbscan_clustering=True, worker_kind="threads").worker_kind_used == "threads"
    assert PymepixCalculator(number_of_processes=2).native().worker_kind_used == "processes"   # DBSCAN
    assert PymepixCalculator(dbscan_clustering=False).native().worker_kind_used == "threads"
    with pytest.raises(ValueError, match="auto, threads, processes"):
        CentroidCalculator(number_of_processes=2, worker_kind="gpu")
