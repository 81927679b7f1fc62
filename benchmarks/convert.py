"""End-to-end conversion benchmark: simulated raw file -> HDF5 with centroids (``tango-tpx convert``).

Usage: ``python benchmarks/convert.py [--size-gb 1.0] [--processes 2] [--repeat 3] [--dbscan-mhits 0.3]
[--compressions deflate,blosc-lz4] [--worker-kinds auto,processes] [--rustpix-threads 1,2]``

1. The simulator writes a pymepix .raw file of ``--size-gb`` GB (default 1 GB, ~130 M hits).
2. numba/scikit-learn are warmed up on a tiny file, outside the timed regions.
3. Timed: the whole file, fast clustering, ``--processes`` workers (Mhits/s = decoded pixel
   hits per second of wall time, reading, decoding, events, centroids and HDF5 writing included),
   once per compression of ``--compressions`` (runs interleaved, the best of ``--repeat`` each):
   the default ``deflate`` (read by every HDF5 reader) side by side with ``blosc-lz4`` (needs
   hdf5plugin to read), their ratio and output sizes. The first compression is the headline.
   Interleaved with them, the first compression with each further worker kind of
   ``--worker-kinds`` (the headline is the first: ``auto``, worker threads for the fast
   clustering; ``processes`` side by side) and their ratio.
4. Same run, a slice of the file (``--dbscan-mhits`` M words; 0 skips it): the pymepix-compatible
   DBSCAN mode (the baseline) and the fast mode on the same slice, and their ratio.
5. Same run, the same words written as an ASI ``.tpx3`` file: rustpix's
   ``process_tpx3_neutrons`` (ABS clustering, same neighbourhood as ours: radius 1.5 px,
   200 ns, >= 3 hits; file to clusters in memory, no write), in a fresh process per thread
   count of ``--rustpix-threads`` (``RAYON_NUM_THREADS``; its pool size is fixed at start),
   wall time of the call only (interpreter start and import excluded), the best of
   ``--repeat`` calls each. ``ratio_vs_rustpix`` = our end-to-end rate (raw to HDF5 with
   centroids, ``--processes`` workers, the write included, the headline compression and kind)
   / rustpix's best rate over the thread counts, both counted in our decoded pixel hits.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _rss_mib(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _sample_rss(pid: int, stop, queue) -> None:
    """Sampler process: peak RSS of process ``pid`` and of its other children, every 0.1 s."""
    me = os.getpid()
    main = worker = 0.0
    while not stop.is_set():
        main = max(main, _rss_mib(pid))
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in kids:
                if int(k) != me:
                    worker = max(worker, _rss_mib(k))
        stop.wait(0.1)
    queue.put((main, worker))


class _RssSampler:
    """Peak resident memory of this process and of its worker processes.

    Sampled by a separate process, not a thread: the converter forks its workers only when
    no other Python thread runs, and the benchmark must measure that normal path.
    """

    def __init__(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._queue = ctx.SimpleQueue()
        self._proc = ctx.Process(target=_sample_rss, args=(os.getpid(), self._stop, self._queue), daemon=True)
        self.main = self.worker = 0.0

    def __enter__(self) -> "_RssSampler":
        self._proc.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.main, self.worker = self._queue.get()
        self._proc.join()


def _fresh(out: Path) -> None:
    """Remove the previous run's output before the clocks start: replacing a 0.2 GB file costs
    the unlink of the old one (0.3-0.6 s of system time on the 2-core test machine), which is
    not conversion work and not what a first conversion pays."""
    out.unlink(missing_ok=True)


def _convert(src: Path, out: Path, **kw) -> tuple[float, object]:
    """Wall seconds of one conversion and its result (``out`` is removed beforehand by the
    caller, outside its CPU clock: see :func:`_fresh`)."""
    from tango_tpx.io.convert import convert_file

    t0 = time.perf_counter()
    r = convert_file(src, out, force=True, **kw)
    return time.perf_counter() - t0, r


def _rustpix_worker(path: str, repeat: int) -> None:
    """Child process: time rustpix's ``process_tpx3_neutrons`` (ABS) on ``path``; prints one
    JSON line (best wall s of ``repeat`` calls, CPU s of that call, clusters, threads)."""
    import rustpix

    cfg = rustpix.ClusteringConfig(radius=1.5, temporal_window_ns=200.0, min_cluster_size=3)
    best = best_cpu = float("inf")
    clusters = 0
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        res = rustpix.process_tpx3_neutrons(path, clustering_config=cfg, algorithm="abs", collect=True)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if dt < best:
            best, best_cpu = dt, dc
        clusters = int(res.len())
    print(json.dumps(dict(seconds=best, cpu_s=best_cpu, clusters=clusters,
                          threads=os.environ.get("RAYON_NUM_THREADS"))))


def bench_rustpix(src: Path, tpx3: Path, threads: list[int], repeat: int) -> dict | str:
    """rustpix ABS, file to clusters, on ``src``'s words written as ``tpx3``: per thread
    count a dict of seconds / cpu_s / clusters, or a reason string when it cannot run."""
    try:
        import rustpix  # noqa: F401
    except ImportError:
        return "not installed (pip install 'tango-tpx[bench]')"
    from tango_tpx.tpx3.files import Tpx3FileWriter, iter_words

    if tpx3.exists():
        tpx3.unlink()
    with Tpx3FileWriter(tpx3) as w:
        for words in iter_words(src, chunk_words=1 << 22):
            w.write_chip(0, words)
    os.sync()
    out: dict = {}
    for n in threads:
        env = dict(os.environ, RAYON_NUM_THREADS=str(n))
        try:
            p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--rustpix-worker", str(tpx3),
                                str(repeat)], env=env, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            print(f"rustpix with {n} thread(s): timed out")
            continue
        if p.returncode != 0:
            print(f"rustpix with {n} thread(s) failed: {p.stderr.strip().splitlines()[-1:]}")
            continue
        out[n] = json.loads(p.stdout.strip().splitlines()[-1])
    return out or "every run failed"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of the simulated raw file (GB, default 1)")
    ap.add_argument("--processes", type=int, default=2, help="number_of_processes: workers (default 2)")
    ap.add_argument("--worker-kinds", default="auto,processes",
                    help="comma-separated worker kinds (convert_file worker_kind); the first is the headline, "
                         "the others run with the first compression, interleaved (default auto,processes)")
    ap.add_argument("--dbscan-mhits", type=float, default=0.3, help="M words of the slice for the DBSCAN baseline")
    ap.add_argument("--rate-mhits", type=float, default=10.0, help="simulated hit rate (Mhits/s)")
    ap.add_argument("--trigger-hz", type=float, default=1000.0, help="simulated trigger rate (Hz)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs; the best is reported (default 3)")
    ap.add_argument("--compressions", default="deflate,blosc-lz4",
                    help="comma-separated HDF5 compressions timed side by side (default deflate,blosc-lz4)")
    ap.add_argument("--rustpix-threads", default="1,2",
                    help="rustpix thread counts (RAYON_NUM_THREADS), the best is compared; empty skips it")
    ap.add_argument("--workdir", default=None, help="where the files go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args(argv)

    from tango_tpx.simulator import SimConfig, SpidrSimulator, simulate
    from tango_tpx.tpx3.files import RawFileWriter, iter_words

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tpx-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "bench.raw", work / "bench.h5"
    piece, piece_fast, piece_db = work / "slice.raw", work / "slice_fast.h5", work / "slice_dbscan.h5"
    tpx3 = work / "bench.tpx3"
    try:
        for p in (src, piece):
            if p.exists():
                p.unlink()
        # -- 1. data --------------------------------------------------------------------------
        duration = args.size_gb * 1e9 / 8 / (args.rate_mhits * 1e6)
        t0 = time.perf_counter()
        summary = SpidrSimulator(SimConfig(rate_mhits=args.rate_mhits, duration_s=duration, seed=args.seed,
                                           trigger_hz=args.trigger_hz)).write_file(src)
        gen_s = time.perf_counter() - t0
        size = src.stat().st_size
        print(f"simulated {size / 1e9:.2f} GB raw file ({summary['hits'] / 1e6:.1f} M hits, "
              f"{summary['triggers']} triggers) in {gen_s:.1f} s: {src}")
        slice_words = int(args.dbscan_mhits * 1e6)
        if slice_words > 0:
            with RawFileWriter(piece) as w:
                for words in iter_words(src, chunk_words=slice_words, stop_word=slice_words):
                    w.write(words)

        # the simulator's GB of dirty pages would otherwise be written back by the kernel
        # during the timed conversion: a recorded file is on disk before anyone converts it
        os.sync()

        # -- 2. warm-up (numba compilation / cache load, sklearn import) ------------------------
        tiny_words, _ = simulate(SimConfig(rate_mhits=0.2, duration_s=0.02, seed=2, trigger_hz=1000.0))
        tiny = work / "tiny.raw"
        if tiny.exists():
            tiny.unlink()
        with RawFileWriter(tiny) as w:
            w.write(tiny_words)
        for c in args.compressions.split(","):
            _convert(tiny, work / "tiny.h5", number_of_processes=1, compression=c.strip())
        if args.dbscan_mhits > 0:
            _convert(tiny, work / "tiny.h5", number_of_processes=1, dbscan=True)

        # -- 3. the whole file, fast clustering, per compression -----------------------------------
        comps = [c.strip() for c in args.compressions.split(",") if c.strip()]
        kinds = [k.strip() for k in args.worker_kinds.split(",") if k.strip()] or ["auto"]
        wk = kinds[0]
        load0 = os.getloadavg()[0]
        rss0 = _rss_mib()
        _fresh(out)
        cpu0 = _cpu_s()
        with _RssSampler() as rss:
            t_full, r_full = _convert(src, out, number_of_processes=args.processes, compression=comps[0],
                                      worker_kind=wk)
        cpu_full = _cpu_s() - cpu0
        mh_first = r_full.hits / t_full / 1e6
        # machines are noisy (and a process's first large run pays its heap growth): the
        # figure reported is the best of --repeat runs, every run is listed; the compressions
        # take turns so that a busy spell hits them alike
        runs = {c: [] for c in comps}
        runs[comps[0]].append(t_full)
        sizes, cpus = {}, {comps[0]: cpu_full}   # CPU: the least of the runs (the first included)
        kruns: dict[str, list] = {}              # the other worker kinds, first compression
        kcpus: dict[str, float] = {}
        for k in range(args.repeat):
            for c in comps:
                if k == 0 and c == comps[0]:
                    sizes[c] = out.stat().st_size
                    continue
                _fresh(out)
                c0 = _cpu_s()
                runs[c].append(_convert(src, out, number_of_processes=args.processes, compression=c,
                                        worker_kind=wk)[0])
                cpus[c] = min(cpus.get(c, 1e99), _cpu_s() - c0)
                sizes[c] = out.stat().st_size
            for kind in kinds[1:]:
                _fresh(out)
                c0 = _cpu_s()
                kruns.setdefault(kind, []).append(_convert(src, out, number_of_processes=args.processes,
                                                           compression=comps[0], worker_kind=kind)[0])
                kcpus[kind] = min(kcpus.get(kind, 1e99), _cpu_s() - c0)
        best = {c: min(ts) for c, ts in runs.items()}
        mh = {c: r_full.hits / best[c] / 1e6 for c in comps}
        t_full = best[comps[0]]
        mh_full = mh[comps[0]]
        ns_per_hit = cpu_full / r_full.hits * 1e9
        cores = min(args.processes, os.cpu_count() or 1)
        mh_cpu_bound = r_full.hits / (cpu_full / cores) / 1e6
        h5_size = sizes[comps[0]]
        for c in comps:
            print(f"end to end, fast, {args.processes} workers ({wk}), {c:10s}: {r_full.hits / 1e6:.1f} M hits, "
                  f"{r_full.centroids / 1e6:.2f} M centroids in {best[c]:.2f} s = {mh[c]:6.2f} Mhits/s "
                  f"({size / best[c] / 1e6:.0f} MB/s raw in, {sizes[c] / 1e6:.0f} MB HDF5 out, "
                  f"{cpus[c] / r_full.hits * 1e9:.0f} ns CPU/hit); best of {len(runs[c])} runs: "
                  + ", ".join(f"{r_full.hits / t / 1e6:.2f}" for t in runs[c]) + " Mhits/s")
        from tango_tpx.io.pool import resolve_worker_kind
        from tango_tpx.processing.settings import ClusteringConfig

        wk_used = resolve_worker_kind(wk, {"centroiding": True, "clustering": ClusteringConfig()})
        mh_kind = {wk: mh[comps[0]]}
        cpu_kind = {wk: cpus[comps[0]] / r_full.hits * 1e9}
        for kind, ts in kruns.items():
            mh_kind[kind] = r_full.hits / min(ts) / 1e6
            cpu_kind[kind] = kcpus[kind] / r_full.hits * 1e9
            print(f"end to end, fast, {args.processes} workers ({kind}), {comps[0]:10s}: {mh_kind[kind]:6.2f} Mhits/s, "
                  f"{cpu_kind[kind]:.0f} ns CPU/hit; best of {len(ts)} runs: "
                  + ", ".join(f"{r_full.hits / t / 1e6:.2f}" for t in ts) + " Mhits/s")
            print(f"  ratio worker kind {wk} ({wk_used}) / {kind}: {mh_kind[wk] / mh_kind[kind]:.3f} (Mhits/s), "
                  f"CPU per hit {cpu_kind[wk] / cpu_kind[kind]:.3f}")
        if len(comps) > 1:
            print(f"  ratio {comps[0]} / {comps[1]}: {mh[comps[0]] / mh[comps[1]]:.3f} (Mhits/s), "
                  f"output size {sizes[comps[0]] / sizes[comps[1]]:.3f}, CPU per hit "
                  f"{cpus[comps[0]] / cpus[comps[1]]:.3f} (on a loaded machine the CPU ratio is the steadier one)")
        rss_main, rss_child = rss.main, rss.worker
        print(f"  peak RSS during the conversion: main process {rss_main:.0f} MiB (was {rss0:.0f} MiB before), "
              f"largest worker {rss_child:.0f} MiB, for a {size / 1e9:.2f} GB input")
        print(f"  CPU {cpu_full:.1f} s = {ns_per_hit:.0f} ns/hit (all processes); on {cores} idle cores that is "
              f"{mh_cpu_bound:.2f} Mhits/s (load average before the run: {load0:.2f} on {os.cpu_count()} cores)")

        # -- 4. slice: DBSCAN baseline vs fast -----------------------------------------------------
        mh_db = mh_fs = mh_f1 = float("nan")
        slice_hits = 0
        if args.dbscan_mhits > 0:
            t_db, r_db = _convert(piece, piece_db, number_of_processes=args.processes, dbscan=True)
            t_fs, r_fs = _convert(piece, piece_fast, number_of_processes=args.processes)
            t_f1, r_f1 = _convert(piece, piece_fast, number_of_processes=1)
            mh_db, mh_fs, mh_f1 = r_db.hits / t_db / 1e6, r_fs.hits / t_fs / 1e6, r_f1.hits / t_f1 / 1e6
            slice_hits = r_db.hits
            print(f"slice of {r_db.hits / 1e6:.2f} M hits, {args.processes} processes:")
            print(f"  dbscan (pymepix-compatible, baseline): {mh_db:8.3f} Mhits/s  ({r_db.centroids} centroids)")
            print(f"  fast:                                  {mh_fs:8.3f} Mhits/s  ({r_fs.centroids} centroids)")
            print(f"  fast, 1 process:                       {mh_f1:8.3f} Mhits/s")
            print(f"  ratio fast / dbscan on the slice:      {mh_fs / mh_db:8.1f} x")
            print(f"  ratio end-to-end fast / dbscan:        {mh_full / mh_db:8.1f} x")
        # -- 5. rustpix, file to clusters, the same words as .tpx3 ----------------------------
        rp_threads = [int(x) for x in args.rustpix_threads.split(",") if x.strip()]
        rp = bench_rustpix(src, tpx3, rp_threads, args.repeat) if rp_threads else "skipped"
        mh_rp = {} if isinstance(rp, str) else {n: r_full.hits / r["seconds"] / 1e6 for n, r in rp.items()}
        mh_rp_best = max(mh_rp.values()) if mh_rp else float("nan")
        ratio_rp = mh_full / mh_rp_best if mh_rp else float("nan")
        # a loaded machine gives neither side its cores: the CPU cost per hit compares them
        # without the other jobs (ours: every process, the HDF5 write included)
        ns_rp = min((r["cpu_s"] for r in rp.values()), default=float("nan")) / r_full.hits * 1e9 \
            if mh_rp else float("nan")
        ratio_rp_cpu = ns_rp / ns_per_hit if mh_rp else float("nan")
        if isinstance(rp, str):
            print(f"rustpix: {rp}")
        else:
            for n, r in rp.items():
                print(f"rustpix {n} thread(s), process_tpx3_neutrons abs, file to clusters (no write): "
                      f"{r['seconds']:.2f} s = {mh_rp[n]:6.2f} Mhits/s ({r['cpu_s']:.1f} s CPU, "
                      f"{r['clusters']} clusters)")
            print(f"  ratio_vs_rustpix = ours end to end {mh_full:.2f} / rustpix best {mh_rp_best:.2f} "
                  f"= {ratio_rp:.2f} [target 3.0] (wall clock; load average now {os.getloadavg()[0]:.2f})")
            print(f"  CPU per hit: rustpix {ns_rp:.0f} ns, ours {ns_per_hit:.0f} ns (write included): "
                  f"ratio {ratio_rp_cpu:.2f}")
        print(f"{'':2}{'what':<58}{'Mhits/s':>10}")
        for c in comps:
            print(f"{'':2}{'ours, raw -> HDF5 + centroids, ' + str(args.processes) + ' workers, ' + c:<58}"
                  f"{mh[c]:>10.2f}")
        for n, v in mh_rp.items():
            print(f"{'':2}{'rustpix abs, .tpx3 -> clusters, ' + str(n) + ' thread(s)':<58}{v:>10.2f}")
        if mh_rp:
            print(f"{'':2}{'ratio_vs_rustpix':<58}{ratio_rp:>10.2f}")
        result = {
            "benchmark": "convert", "size_gb": round(size / 1e9, 3), "hits": r_full.hits,
            "centroids": r_full.centroids, "processes": args.processes, "cpu_count": os.cpu_count(),
            "load_avg_before": round(load0, 2), "cpu_s": round(cpu_full, 1),
            "cpu_ns_per_hit": round(ns_per_hit, 1), "peak_rss_main_mib": round(rss_main),
            "rss_main_before_mib": round(rss0),
            "peak_rss_worker_mib": round(rss_child), "mhits_per_s_cpu_bound": round(mh_cpu_bound, 2),
            "seconds": round(t_full, 2), "mhits_per_s": round(mh_full, 2),
            "mhits_per_s_first_run": round(mh_first, 2),
            "mhits_per_s_runs": [round(r_full.hits / t / 1e6, 2) for t in runs[comps[0]]],
            "mb_per_s_in": round(size / t_full / 1e6, 1), "h5_mb": round(h5_size / 1e6, 1),
            "compressions": comps, "mhits_per_s_by_compression": {c: round(v, 2) for c, v in mh.items()},
            "mhits_per_s_runs_by_compression": {c: [round(r_full.hits / t / 1e6, 2) for t in ts]
                                                for c, ts in runs.items()},
            "h5_mb_by_compression": {c: round(v / 1e6, 1) for c, v in sizes.items()},
            "cpu_ns_per_hit_by_compression": {c: round(v / r_full.hits * 1e9, 1) for c, v in cpus.items()},
            "ratio_first_vs_second_compression": round(mh[comps[0]] / mh[comps[1]], 3) if len(comps) > 1 else None,
            "cpu_ratio_first_vs_second_compression": round(cpus[comps[0]] / cpus[comps[1]], 3)
            if len(comps) > 1 else None,
            "slice_hits": slice_hits, "dbscan_mhits_per_s": round(mh_db, 3),
            "slice_fast_mhits_per_s": round(mh_fs, 2), "slice_fast_1proc_mhits_per_s": round(mh_f1, 2),
            "ratio_fast_vs_dbscan_slice": round(mh_fs / mh_db, 1),
            "ratio_end_to_end_vs_dbscan": round(mh_full / mh_db, 1),
            "target_mhits_per_s": 15.0, "simulate_s": round(gen_s, 1),
            "rustpix": rp if isinstance(rp, str) else "process_tpx3_neutrons abs, file to clusters, no write",
            "rustpix_mhits_per_s_by_threads": {str(n): round(v, 2) for n, v in mh_rp.items()},
            "rustpix_cpu_s_by_threads": {} if isinstance(rp, str) else
            {str(n): round(r["cpu_s"], 2) for n, r in rp.items()},
            "rustpix_clusters": None if isinstance(rp, str) or not rp else next(iter(rp.values()))["clusters"],
            "worker_kind": wk, "worker_kind_used": wk_used,
            "mhits_per_s_by_worker_kind": {k: round(v, 2) for k, v in mh_kind.items()},
            "cpu_ns_per_hit_by_worker_kind": {k: round(v, 1) for k, v in cpu_kind.items()},
            "rustpix_mhits_per_s": round(mh_rp_best, 2), "ratio_vs_rustpix": round(ratio_rp, 2),
            "target_ratio_vs_rustpix": 3.0, "rustpix_cpu_ns_per_hit": round(ns_rp, 1),
            "ratio_vs_rustpix_cpu_per_hit": round(ratio_rp_cpu, 2),
            "load_avg_after": round(os.getloadavg()[0], 2),
        }
    finally:
        if not args.keep:
            if args.workdir:
                for p in (src, out, piece, piece_fast, piece_db, tpx3, work / "tiny.raw", work / "tiny.h5"):
                    if p.exists():
                        p.unlink()
            else:
                shutil.rmtree(work, ignore_errors=True)
    result = {k: (None if isinstance(v, float) and v != v else v) for k, v in result.items()}  # NaN: not run
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rustpix-worker":
        _rustpix_worker(sys.argv[2], int(sys.argv[3]))
    else:
        main()
