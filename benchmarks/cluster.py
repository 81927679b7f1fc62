"""Benchmark: clustering + centroids throughput (Mhits/s per core).

Runs the same hits through
  * ``fast``   tango-tpx connected components (sort check + label + centroids), one core;
  * ``fast_unsorted`` the same after a local shuffle (readout disorder), including the sort;
  * ``dbscan`` pymepix's DBSCAN mode (scikit-learn) on a subsample, scaled per hit;
  * ``rustpix`` (optional extra ``bench``) clustering the same hits (the simulator's word
    stream written as a .tpx3 file), its abs/grid/dbscan algorithms with RAYON_NUM_THREADS=1
    so that the figures are per core;
  * ``CentroidCalculator(number_of_processes=--workers)`` (pymepix's API, fast clustering) on
    worker threads and on worker processes, wall clock, with one worker beside them;
and prints Mhits/s per core and the ratios to dbscan (the pymepix baseline). Times are the
process's CPU time (every timed part runs on one thread; a shared machine's other jobs do not
inflate it), best of ``--repeat``; ``--wall`` switches to wall time. Numba is warmed up on a
small input outside the timed regions. The last line printed is one JSON object.

Hits come from the simulator (``tango_tpx.simulator.simulate``) when it is importable,
otherwise from a clustered generator here with similar statistics (about 6 hits per particle
within 3x3 pixels, ToT falling off from the centre, up to ~100 ns time-walk, 10% noise).

    python benchmarks/cluster.py [--hits 10000000] [--dbscan-hits 100000] [--repeat 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# per-core figures: no BLAS/OpenMP threads, rustpix's rayon pool on one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango_tpx.processing.centroids import calculate_centroids  # noqa: E402
from tango_tpx.tpx3.units import ns_to_units  # noqa: E402

# the 3x3 neighbourhood ordered by distance from the centre pixel
_PATTERN = np.array([(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (-1, -1), (1, -1)])


def generate_events(n_hits: int, hits_per_trigger: int = 1000, noise_fraction: float = 0.1,
                    window_ns: float = 1e6, seed: int = 0) -> dict[str, np.ndarray]:
    """Clustered events sorted by (trigger_nr, tof): dict of trigger_nr, x, y, tof, tot, toa.

    tof/toa: int64 fine units (25/4096 ns) quantised to the 1.5625 ns pixel step; tot: counts.
    """
    rng = np.random.default_rng(seed)
    n_noise = int(n_hits * noise_fraction)
    n_part = max(1, (n_hits - n_noise) // 6)
    size = rng.integers(3, 10, n_part)  # 3..9 hits, mean 6
    csum = np.cumsum(size)
    keep = csum <= n_hits - n_noise
    size = size[keep] if keep.any() else size[:1]
    n_part = size.size
    n_trig = max(1, n_hits // hits_per_trigger)
    p_trig = np.sort(rng.integers(0, n_trig, n_part))
    p_x = rng.uniform(2, 253, n_part)
    p_y = rng.uniform(2, 253, n_part)
    p_tof = rng.uniform(0.0, window_ns, n_part)
    p_amp = rng.uniform(40, 300, n_part)
    pid = np.repeat(np.arange(n_part), size)
    k = np.arange(pid.size) - np.repeat(np.cumsum(size) - size, size)  # index within particle
    flip = rng.integers(0, 2, (n_part, 2)) * 2 - 1
    dx = _PATTERN[k, 0] * flip[pid, 0]
    dy = _PATTERN[k, 1] * flip[pid, 1]
    x = np.clip(np.rint(p_x[pid]).astype(np.int64) + dx, 0, 255)
    y = np.clip(np.rint(p_y[pid]).astype(np.int64) + dy, 0, 255)
    d2 = (x - p_x[pid]) ** 2 + (y - p_y[pid]) ** 2
    tot = np.maximum(1, np.rint(p_amp[pid] * np.exp(-d2 / 1.2))).astype(np.int64)
    walk_ns = 100.0 * np.exp(-(tot - 1) / 15.0)
    t_ns = p_tof[pid] + walk_ns + rng.normal(0, 1.0, pid.size)
    trig = p_trig[pid]
    # noise
    trig = np.concatenate([trig, rng.integers(0, n_trig, n_noise)])
    x = np.concatenate([x, rng.integers(0, 256, n_noise)])
    y = np.concatenate([y, rng.integers(0, 256, n_noise)])
    tot = np.concatenate([tot, rng.integers(1, 30, n_noise)])
    t_ns = np.concatenate([t_ns, rng.uniform(0, window_ns, n_noise)])
    tof = ns_to_units(np.floor(np.maximum(t_ns, 0) / 1.5625) * 1.5625)
    trig_time = np.arange(n_trig, dtype=np.int64) * ns_to_units(window_ns * 1.05)
    order = np.lexsort((tof, trig))
    out = dict(trigger_nr=trig[order].astype(np.int64), x=x[order].astype(np.uint16),
               y=y[order].astype(np.uint16), tof=tof[order], tot=tot[order].astype(np.uint16))
    out["toa"] = out["tof"] + trig_time[out["trigger_nr"]]
    return out


def simulated_events(n_hits: int, seed: int = 0):
    """(sorted events, the same in the simulator's readout order, the word stream) from the
    simulator's ground truth, or None when it is not available."""
    try:
        from tango_tpx.simulator import SimConfig, simulate
    except ImportError:
        return None
    try:
        # default physics (ion ToF peaks, electrons, 5 % noise) at 4 Mhits/s, 1 kHz triggers
        cfg = SimConfig(rate_mhits=4.0, duration_s=max(n_hits / 4e6 * 1.003, 0.01), seed=seed, trigger_hz=1000.0)
        words, truth = simulate(cfg)
        toa = np.asarray(truth.hits.toa)
        # every hit (noise too) belongs to the last trigger at or before it, as in PacketProcessor
        trig = np.searchsorted(truth.trigger_time, toa, side="right") - 1
        ok = trig >= 0
        h = truth.hits
        stream = dict(trigger_nr=trig[ok].astype(np.int64), x=np.asarray(h.x)[ok], y=np.asarray(h.y)[ok],
                      tof=toa[ok] - np.asarray(truth.trigger_time)[trig[ok]], tot=np.asarray(h.tot)[ok],
                      toa=toa[ok])
        order = np.lexsort((stream["tof"], stream["trigger_nr"]))
        return {k: v[order] for k, v in stream.items()}, stream, words
    except Exception as exc:  # the simulator is someone else's work: fall back, say why
        print(f"simulator failed ({type(exc).__name__}: {exc}); using the local generator")
        return None


def local_shuffle(ev: dict, jitter_ns: float, seed: int = 1) -> dict:
    """The same hits, reordered as a readout would: by toa plus up to ``jitter_ns`` of delay."""
    rng = np.random.default_rng(seed)
    key = ev["toa"] + ns_to_units(rng.uniform(0, jitter_ns, ev["toa"].size))
    order = np.argsort(key, kind="stable")
    return {k: v[order] for k, v in ev.items()}


def subsample_triggers(ev: dict, n_hits: int) -> dict:
    """The first whole triggers holding about ``n_hits`` hits."""
    if ev["tof"].size <= n_hits:
        return ev
    last = ev["trigger_nr"][n_hits]
    stop = int(np.searchsorted(ev["trigger_nr"], last, side="left"))
    stop = max(stop, 1)
    return {k: v[:stop] for k, v in ev.items()}


def clock() -> float:
    """CPU seconds of this process: a per-core figure that other jobs on a shared machine do
    not inflate (everything timed here runs on one thread). ``--wall`` uses wall time."""
    return time.perf_counter() if WALL else time.process_time()


WALL = False


def timed(fn, repeat: int) -> tuple[float, object]:
    """Best of ``repeat`` runs: (seconds, result)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = clock()
        result = fn()
        best = min(best, clock() - t0)
    return best, result


def bench_rustpix(words: np.ndarray, repeat: int) -> dict | str:
    """rustpix on the simulator's word stream written as a .tpx3 file (tango-tpx's writer).

    Per algorithm: ``cluster_hits`` (clustering + centroid extraction on hits already read,
    the part comparable to ours) and ``process_tpx3_neutrons`` (file to neutrons, incl. the
    read and decode). Rates are per core (RAYON_NUM_THREADS=1). Returns a reason string
    when it cannot run."""
    try:
        import rustpix
    except ImportError:
        return "not installed (pip install 'tango-tpx[bench]')"
    from tango_tpx.tpx3.files import Tpx3FileWriter

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.tpx3"
        with Tpx3FileWriter(path) as w:
            w.write_chip(0, words)
        # same neighbourhood as ours: 8-neighbourhood (radius 1.5 px, Euclidean), 200 ns, >= 3 hits
        cfg = rustpix.ClusteringConfig(radius=1.5, temporal_window_ns=200.0, min_cluster_size=3)
        for algo in ("abs", "grid", "dbscan"):
            try:
                best = float("inf")
                n = found = 0
                for _ in range(repeat if algo != "dbscan" else 1):
                    batch = rustpix.read_tpx3_hits(str(path))
                    n = batch.len()
                    t0 = clock()
                    res = rustpix.cluster_hits(batch, cfg, algorithm=algo)
                    best = min(best, clock() - t0)
                    found = res.len()
                t0 = clock()
                rustpix.process_tpx3_neutrons(str(path), clustering_config=cfg, algorithm=algo, collect=True)
                dt_file = clock() - t0
            except Exception as exc:
                print(f"rustpix {algo} failed: {type(exc).__name__}: {exc}")
                continue
            out[algo] = dict(hits=n, seconds=best, mhits_s=n / best / 1e6, clusters=int(found),
                             file_mhits_s=n / dt_file / 1e6)
    return out or "every algorithm failed"


def bench_calculator(ev: dict, workers: int, repeat: int) -> dict[str, float]:
    """Wall-clock Mhits/s of ``CentroidCalculator(number_of_processes=workers)`` (pymepix's
    API, the fast clustering) on worker threads and on worker processes, and of one worker;
    the kinds alternate within each repeat, the pools are started (and warmed) before timing."""
    from tango_tpx.processing.centroids import CentroidCalculator

    fields = ("trigger_nr", "x", "y", "tof", "tot")
    events = {k: ev[k] for k in fields}
    n = int(ev["tof"].size)
    calcs = {"threads": CentroidCalculator(number_of_processes=workers, worker_kind="threads"),
             "processes": CentroidCalculator(number_of_processes=workers, worker_kind="processes"),
             "one": CentroidCalculator(number_of_processes=1)}
    best = {k: float("inf") for k in calcs}
    try:
        for c in calcs.values():
            c.process(events)
        for _ in range(repeat):
            for k, c in calcs.items():
                t0 = time.perf_counter()
                c.process(events)
                best[k] = min(best[k], time.perf_counter() - t0)
    finally:
        for c in calcs.values():
            c.close()
    return {k: n / v / 1e6 for k, v in best.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=10_000_000)
    ap.add_argument("--dbscan-hits", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-rustpix", action="store_true")
    ap.add_argument("--wall", action="store_true", help="time with the wall clock, not CPU time")
    ap.add_argument("--workers", type=int, default=2,
                    help="CentroidCalculator(number_of_processes=N) on threads and processes, wall clock (0: skip)")
    a = ap.parse_args(argv)
    global WALL
    WALL = a.wall

    t0 = time.perf_counter()
    sim = simulated_events(a.hits, a.seed)
    words = None
    if sim is not None:
        ev, shuffled, words = sim
        source = "simulator"
    else:
        ev = generate_events(a.hits, seed=a.seed)
        shuffled = local_shuffle(ev, jitter_ns=300.0)
        source = "generator"
    n = int(ev["tof"].size)
    print(f"{n} hits from the {source} ({time.perf_counter() - t0:.1f} s to make); unsorted = "
          f"{'readout order' if sim else 'toa + 0..300 ns jitter order'}")

    # warm numba (compile or load the cache) outside the timed regions
    small = subsample_triggers(ev, 5000)
    calculate_centroids(small)
    calculate_centroids(local_shuffle(small, 300.0))
    calculate_centroids(subsample_triggers(ev, 500), algorithm="dbscan")

    fields = ("trigger_nr", "x", "y", "tof", "tot")
    dt_fast, cen = timed(lambda: calculate_centroids({k: ev[k] for k in fields}), a.repeat)
    dt_uns, cen_u = timed(lambda: calculate_centroids({k: shuffled[k] for k in fields}), a.repeat)
    same = bool(np.array_equal(cen.tof, cen_u.tof) and np.array_equal(cen.x, cen_u.x))
    sub = subsample_triggers(ev, a.dbscan_hits)
    n_sub = int(sub["tof"].size)
    dt_db, cen_db = timed(lambda: calculate_centroids({k: sub[k] for k in fields}, algorithm="dbscan"), 1)
    _, cen_fs = timed(lambda: calculate_centroids({k: sub[k] for k in fields}), a.repeat)

    fast = n / dt_fast / 1e6
    unsorted = n / dt_uns / 1e6
    dbscan = n_sub / dt_db / 1e6
    res = dict(source=source, clock="wall" if WALL else "cpu", hits=n, fast_mhits_s=round(fast, 2), fast_unsorted_mhits_s=round(unsorted, 2),
               dbscan_mhits_s=round(dbscan, 4), dbscan_hits=n_sub,
               ratio_fast_vs_dbscan=round(fast / dbscan, 1),
               ratio_unsorted_vs_dbscan=round(unsorted / dbscan, 1),
               clusters_fast=int(len(cen)), clusters_dbscan_sub=int(len(cen_db)),
               clusters_fast_sub=int(len(cen_fs)), unsorted_same_result=same,
               target_fast_25=bool(fast >= 25), target_ratio_80=bool(fast / dbscan >= 80))
    print(f"{'mode':<16}{'hits':>12}{'seconds':>10}{'Mhits/s/core':>14}{'x dbscan':>10}")
    print(f"{'fast':<16}{n:>12}{dt_fast:>10.3f}{fast:>14.2f}{fast / dbscan:>10.1f}")
    print(f"{'fast unsorted':<16}{n:>12}{dt_uns:>10.3f}{unsorted:>14.2f}{unsorted / dbscan:>10.1f}")
    print(f"{'dbscan':<16}{n_sub:>12}{dt_db:>10.3f}{dbscan:>14.4f}{1.0:>10.1f}")
    if not a.no_rustpix:
        rp = bench_rustpix(words, a.repeat) if words is not None else "needs the simulator's word stream"
        if isinstance(rp, str):
            print(f"rustpix: {rp}")
            res["rustpix"] = rp
        else:
            for algo, r in rp.items():
                print(f"{'rustpix ' + algo:<16}{r['hits']:>12}{r['seconds']:>10.3f}{r['mhits_s']:>14.2f}"
                      f"{r['mhits_s'] / dbscan:>10.1f}   ({r['clusters']} clusters; "
                      f"file to neutrons {r['file_mhits_s']:.2f} Mhits/s)")
                res[f"rustpix_{algo}_mhits_s"] = round(r["mhits_s"], 3)
                res[f"rustpix_{algo}_file_mhits_s"] = round(r["file_mhits_s"], 3)
                res[f"ratio_fast_vs_rustpix_{algo}"] = round(fast / r["mhits_s"], 2)
                res[f"clusters_rustpix_{algo}"] = r["clusters"]
    if a.workers > 0:
        calc = bench_calculator(ev, a.workers, a.repeat)
        for k, v in calc.items():
            label = f"{k} ({a.workers} workers)" if k != "one" else "one worker"
            print(f"CentroidCalculator, {label:<22} {v:8.2f} Mhits/s (wall)")
        print(f"CentroidCalculator: threads / processes = {calc['threads'] / calc['processes']:.2f}")
        res["calculator_workers"] = a.workers
        res["calculator_mhits_s_by_worker_kind"] = {k: round(v, 2) for k, v in calc.items()}
        res["ratio_calculator_threads_vs_processes"] = round(calc["threads"] / calc["processes"], 2)
    print(f"clusters: fast {len(cen)}, dbscan on the subsample {len(cen_db)} vs fast {len(cen_fs)}; "
          f"unsorted input gives the same result: {same}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
