"""Scale-out benchmark: a batch of raw files converted on a local Dask cluster with 1 and 2 workers.

Usage: ``python benchmarks/scale.py [--inputs 8] [--size 0.25] [--workers 1,2] [--fs-gbps 10]
[--host-cores 32]``

1. The simulator writes one pymepix .raw file of ``--size`` GB; ``--inputs`` copies of it are
   the batch (separate files, so each is read from disk / page cache on its own).
2. For each worker count: a local Dask cluster of that many one-thread worker processes is
   started and warmed up (numba kernels loaded in every worker) outside the timed region;
   timed: ``run_batch`` of all inputs (submission, conversion with centroids, HDF5 deflate
   output, gathering the results).
3. Scheduler overhead per task: the round trip of 200 empty tasks on the same cluster.
4. Reported: Mhits/s per worker count, the scaling efficiency (rate with N workers / (N x rate
   with 1)), the per-worker rate (hits / summed task time), and a projection with a stated
   model: H hosts of ``--host-cores`` one-thread workers each, every worker converting at the
   per-worker rate measured with the most workers (hits / the tasks' own time), all reading the raw files and
   writing the HDF5 files on a parallel filesystem of ``--fs-gbps`` GB/s aggregate; the
   rate is the smallest of the compute limit, the filesystem limit (bytes in + out per hit)
   and the scheduler limit (tasks per second from the overhead, times hits per task).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _noop(i: int) -> int:
    return i


def _scheduler_overhead(client, n: int = 200) -> float:
    """Seconds per task for ``n`` empty tasks submitted and gathered together."""
    client.gather(client.map(_noop, range(10), pure=False))
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(n), pure=False))
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=8, help="files in the batch (default 8)")
    ap.add_argument("--size", type=float, default=0.25, help="GB per input file (default 0.25)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument("--rate-mhits", type=float, default=10.0, help="simulated hit rate (Mhits/s)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--fs-gbps", type=float, default=10.0,
                    help="projection: aggregate parallel-filesystem bandwidth, GB/s (default 10)")
    ap.add_argument("--host-cores", type=int, default=32, help="projection: one-thread workers per host (default 32)")
    ap.add_argument("--repeat", type=int, default=2, help="timed batches per worker count; the best counts (default 2)")
    ap.add_argument("--workdir", default=None, help="where the files go (default: a temporary directory)")
    args = ap.parse_args(argv)

    from dask.distributed import Client, LocalCluster

    from tango_tpx.io.batch import run_batch
    from tango_tpx.simulator import SimConfig, SpidrSimulator

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tpx-scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src_dir, out_dir = work / "in", work / "out"
    result: dict = {}
    try:
        shutil.rmtree(src_dir, ignore_errors=True)
        src_dir.mkdir()
        first = src_dir / "in00.raw"
        t0 = time.perf_counter()
        duration = args.size * 1e9 / 8 / (args.rate_mhits * 1e6)
        summary = SpidrSimulator(SimConfig(rate_mhits=args.rate_mhits, duration_s=duration, seed=args.seed,
                                           trigger_hz=1000.0)).write_file(first)
        inputs = [first] + [src_dir / f"in{k:02d}.raw" for k in range(1, args.inputs)]
        for p in inputs[1:]:
            shutil.copyfile(first, p)
        tiny = work / "tiny.raw"
        tiny.unlink(missing_ok=True)
        SpidrSimulator(SimConfig(rate_mhits=0.5, duration_s=0.02, seed=1, trigger_hz=1000.0)).write_file(tiny)
        os.sync()
        in_bytes = sum(p.stat().st_size for p in inputs)
        print(f"{args.inputs} inputs of {first.stat().st_size / 1e9:.3f} GB ({summary['hits'] / 1e6:.1f} M hits each) "
              f"made in {time.perf_counter() - t0:.1f} s")
        runs = {}
        overhead = {}
        for n in [int(w) for w in args.workers.split(",")]:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                              host="127.0.0.1") as cluster, Client(cluster, set_as_default=False) as client:
                run_batch([tiny] * 1, out_dir / "warm", scheduler=cluster.scheduler_address, force=True, quiet=True)
                client.run(lambda: __import__("tango_tpx.io.convert"))
                best = None
                for _ in range(args.repeat):  # a shared machine is noisy: the best batch counts
                    shutil.rmtree(out_dir, ignore_errors=True)
                    t0 = time.perf_counter()
                    s = run_batch(inputs, out_dir, scheduler=cluster.scheduler_address, section_mb=0, quiet=True)
                    wall = time.perf_counter() - t0
                    if not s.ok:
                        raise RuntimeError("; ".join(s.lines()))
                    if best is None or wall < best[0]:
                        best = (wall, s)
                wall, s = best
                overhead[n] = _scheduler_overhead(client)
            out_bytes = sum(Path(o.output).stat().st_size for o in s.outcomes)
            task_s = sum(o.seconds for o in s.outcomes)
            runs[n] = {"wall_s": wall, "hits": s.hits, "mhits_per_s": s.hits / wall / 1e6,
                       "task_s_sum": task_s, "out_bytes": out_bytes}
            print(f"{n} worker(s): {s.hits / 1e6:.1f} M hits in {wall:.1f} s = {s.hits / wall / 1e6:.2f} Mhits/s "
                  f"({in_bytes / wall / 1e6:.0f} MB/s raw in, {out_bytes / 1e6:.0f} MB HDF5 out); "
                  f"scheduler overhead {overhead[n] * 1e3:.2f} ms/task")
        ns = sorted(runs)
        base = runs[ns[0]]["mhits_per_s"] / ns[0]
        eff = {n: runs[n]["mhits_per_s"] / (n * base) for n in ns}
        top = ns[-1]
        # Mhits/s of one worker while converting: hits / the summed time of the tasks in their workers
        per_worker = runs[top]["hits"] / runs[top]["task_s_sum"] / 1e6
        hits_total = runs[top]["hits"]
        bytes_per_hit = (in_bytes + runs[top]["out_bytes"]) / hits_total
        hits_per_task = hits_total / args.inputs
        ovh = max(overhead.values())
        sched_limit = hits_per_task / ovh / 1e6 if ovh > 0 else float("inf")  # Mhits/s
        fs_limit = args.fs_gbps * 1e9 / bytes_per_hit / 1e6
        host_rate = per_worker * args.host_cores
        proj = {}
        for hosts in (1, 10, 100):
            compute = hosts * host_rate
            rate = min(compute, fs_limit, sched_limit)
            bound = "compute" if rate == compute else "filesystem" if rate == fs_limit else "scheduler"
            proj[hosts] = {"mhits_per_s": round(rate, 1), "bound": bound}
        stop_hosts = min(fs_limit, sched_limit) / host_rate
        print(f"scaling efficiency {', '.join(f'{n} workers: {eff[n]:.2f}' for n in ns)}; per-worker rate "
              f"{per_worker:.2f} Mhits/s; {bytes_per_hit:.1f} B read + written per hit")
        print(f"projection ({args.host_cores} one-thread workers per host at {per_worker:.2f} "
              f"Mhits/s each (the per-worker rate measured with {top} workers), {args.fs_gbps:g} GB/s parallel filesystem, scheduler {ovh * 1e3:.2f} ms/task of "
              f"{hits_per_task / 1e6:.1f} M hits):")
        for hosts, p in proj.items():
            print(f"  {hosts:4d} host(s): {p['mhits_per_s']:9.1f} Mhits/s ({p['bound']} bound)")
        print(f"  stops scaling at about {stop_hosts:.0f} hosts (filesystem limit {fs_limit:.0f} Mhits/s, "
              f"scheduler limit {sched_limit:.0f} Mhits/s)")
        result = {
            "benchmark": "scale", "inputs": args.inputs, "size_gb": round(first.stat().st_size / 1e9, 3),
            "hits_per_input": summary["hits"], "cpu_count": os.cpu_count(),
            "runs": {str(n): {k: round(v, 3) for k, v in r.items()} for n, r in runs.items()},
            "mhits_per_s": {str(n): round(runs[n]["mhits_per_s"], 2) for n in ns},
            "scaling_efficiency": {str(n): round(eff[n], 3) for n in ns},
            "scheduler_overhead_ms_per_task": {str(n): round(overhead[n] * 1e3, 3) for n in ns},
            "per_worker_mhits_per_s": round(per_worker, 2), "bytes_per_hit_in_out": round(bytes_per_hit, 2),
            "model": {"host_cores": args.host_cores, "fs_gbps": args.fs_gbps,
                      "fs_limit_mhits_per_s": round(fs_limit, 1), "scheduler_limit_mhits_per_s": round(sched_limit, 1)},
            "projection": {str(h): p for h, p in proj.items()}, "stops_scaling_hosts": round(stop_hosts, 1),
        }
    finally:
        for d in ([work] if not args.workdir else [src_dir, out_dir, work / "tiny.raw"]):
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
