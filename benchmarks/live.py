"""Live pipeline benchmark: simulator -> UDP (loopback) -> pipeline, at increasing rates.

For each configuration the sender (its own process) replays a simulated SPIDR stream at a
paced hit rate for ``--duration`` s; a rate passes when nothing is lost: kernel drops 0,
nothing dropped at the hand-off, hits decoded == hits sent (and, with centroiding, every
event hit centroided within ``--drain`` s after the sender stopped). Reported: the highest
passing rate (Mhits/s) of

* baseline: a plain single-process ``recv_into`` loop (counts bytes only),
* (a) PixelPipeline with recording to a .raw file,
* (b) CentroidPipeline with 2 centroid processes (fast clustering),

and the ratio of (a), (b) to the baseline. The stream is re-timed on every replay (pixel and
TDC time fields advanced by the loop period, global-time words removed) so that times keep
increasing as in a real run. The last line printed is one JSON object with all figures.

Run: ``.venv/bin/python benchmarks/live.py [--duration 20] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import time

import numba
import numpy as np

from tango_tpx.pipeline.acquisition import CentroidPipeline, PixelPipeline
from tango_tpx.pipeline.udpsampler import open_udp_socket
from tango_tpx.simulator import SimConfig, simulate
from tango_tpx.simulator.udpsend import BatchSender

PAYLOAD = 8192
TICKS_PER_SPIDR = 1 << 14       # one SPIDR time-stamp unit = 2^14 coarse ticks of 25 ns


@numba.njit(cache=True)
def retime(base: np.ndarray, out: np.ndarray, loop: int, d_spidr: int, d_ticks: int, d_count: int) -> None:
    """Copy ``base`` to ``out`` with pixel/TDC times advanced by ``loop`` loop periods
    (pixel SPIDR field by ``d_spidr`` units of 2^14 ticks, TDC coarse by ``d_ticks`` 25 ns
    ticks, TDC counter by ``d_count``)."""
    ds = np.uint64((loop * d_spidr) & 0xFFFF)
    dt = np.uint64((loop * d_ticks) & 0xFFFFFFFF)
    dc = np.uint64((loop * d_count) & 0xFFF)
    for i in range(base.shape[0]):
        w = base[i]
        hdr = w >> np.uint64(60)
        if hdr == 0xA or hdr == 0xB:
            w = (w & ~np.uint64(0xFFFF)) | ((w + ds) & np.uint64(0xFFFF))
        elif hdr == 0x6:
            coarse = ((w >> np.uint64(12)) + dt) & np.uint64(0xFFFFFFFF)
            cnt = ((w >> np.uint64(44)) + dc) & np.uint64(0xFFF)
            w = (w & ~np.uint64(0x00FFFFFFFFFFF000)) | (coarse << np.uint64(12)) | (cnt << np.uint64(44))
        out[i] = w


def make_stream(rate_mhits: float, duration_s: float, seed: int = 7):
    """Simulated words without global-time words, plus the loop constants."""
    words, truth = simulate(SimConfig(rate_mhits=rate_mhits, duration_s=duration_s, seed=seed,
                                      control_words=False))
    hdr = words >> np.uint64(60)
    sub = (words >> np.uint64(56)) & np.uint64(0xF)
    keep = ~((hdr == 4) & ((sub == 4) | (sub == 5)))
    words = np.ascontiguousarray(words[keep])
    hits = int(np.count_nonzero((hdr[keep] == 0xA) | (hdr[keep] == 0xB)))
    d_ticks = int(np.ceil(duration_s * 4e7 / TICKS_PER_SPIDR)) * TICKS_PER_SPIDR
    tdc1 = (hdr[keep] == 6) & (sub[keep] == 0xF)
    cnt = ((words[tdc1] >> np.uint64(44)) & np.uint64(0xFFF)).astype(np.int64)
    d_count = int((cnt[-1] - cnt[0] + 1) % 4096) if cnt.size else 0
    return words, hits, d_ticks, d_count


def sender(port: int, words: np.ndarray, hits_per_loop: int, d_ticks: int, d_count: int,
           rate_mhits: float, duration_s: float, result: mp.Queue, use_mmsg: bool = True) -> None:
    """Replay ``words`` at ``rate_mhits`` (wall clock; ``rate_mhits`` <= 0: as fast as
    possible) for ``duration_s`` in datagrams of PAYLOAD bytes, in bursts sent with
    ``sendmmsg`` (:class:`BatchSender`); report what was sent and the sender's CPU time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    tx = BatchSender(sock, ("127.0.0.1", port), use_mmsg=use_mmsg)
    bytes_per_hit = words.nbytes / hits_per_loop
    rate_bytes = rate_mhits * 1e6 * bytes_per_hit if rate_mhits > 0 else float("inf")
    buf = np.empty_like(words)
    raw = buf.view(np.uint8)
    n = raw.size
    max_burst = 64 * PAYLOAD
    sent_bytes = 0
    sent_hits = 0
    loop = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    stop_at = t0 + duration_s
    done = False
    while not done:
        retime(words, buf, loop, d_ticks // TICKS_PER_SPIDR, d_ticks, d_count)
        pos = 0
        while pos < n:
            now = time.perf_counter()
            if now >= stop_at:
                done = True
                break
            allowed = (now - t0) * rate_bytes - sent_bytes
            if allowed < PAYLOAD:       # ahead of the schedule: wait for ~1 burst of time
                time.sleep(min(0.002, (PAYLOAD - allowed) / rate_bytes))
                continue
            burst = min(n - pos, max_burst, int(min(allowed, 1e12) // PAYLOAD) * PAYLOAD)
            k = tx.send_uniform(raw, pos, pos + burst, PAYLOAD)
            pos += k
            sent_bytes += k
        if pos >= n:
            sent_hits += hits_per_loop
            loop += 1
        else:
            # count the hits of the partial loop exactly
            part = words[:pos // 8]
            h = part >> np.uint64(60)
            sent_hits += int(np.count_nonzero((h == 0xA) | (h == 0xB)))
    seconds = time.perf_counter() - t0
    sock.close()
    result.put(dict(bytes=sent_bytes, hits=sent_hits, seconds=seconds, loops=loop,
                    cpu_s=time.process_time() - c0))


def baseline_receiver(port: int, ready, stop, result) -> None:
    """The baseline: one process, recv_into a buffer, count bytes; drops from SO_RXQ_OVFL."""
    sock, _ = open_udp_socket("127.0.0.1", port)
    sock.setblocking(True)
    sock.settimeout(0.2)
    buf = bytearray(65536)
    n = 0
    ready.set()
    while not stop.is_set():
        try:
            n += sock.recv_into(buf)
        except socket.timeout:
            continue
    drops = proc_udp_drops(port)
    sock.close()
    result.put(dict(bytes=n, drops=drops))


def proc_udp_drops(port: int) -> int:
    """The kernel's drop counter of the UDP socket bound to ``port`` (/proc/net/udp)."""
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if int(parts[1].split(":")[1], 16) == port:
                    return int(parts[-1])
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return -1


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run_sender(port, stream, rate, duration):
    words, hits, d_ticks, d_count = stream
    q = mp.Queue()
    p = mp.Process(target=sender, args=(port, words, hits, d_ticks, d_count, rate, duration, q), daemon=True)
    p.start()
    res = q.get(timeout=duration + 60)
    p.join(5)
    return res


def trial_baseline(stream, rate, duration):
    port = free_port()
    ready, stop, q = mp.Event(), mp.Event(), mp.Queue()
    r = mp.Process(target=baseline_receiver, args=(port, ready, stop, q), daemon=True)
    r.start()
    ready.wait(10)
    sent = run_sender(port, stream, rate, duration)
    time.sleep(0.5)
    stop.set()
    got = q.get(timeout=10)
    r.join(5)
    ok = got["bytes"] == sent["bytes"] and got["drops"] == 0
    return ok, dict(sent_mhits=sent["hits"] / sent["seconds"] / 1e6, recv_bytes=got["bytes"],
                    sent_bytes=sent["bytes"], drops=got["drops"])


def trial_pipeline(kind, stream, rate, duration, drain_s, tmpdir):
    port = free_port()
    if kind == "pixel_rec":
        pipe = PixelPipeline(None, ("127.0.0.1", port), None, use_event=False)
    else:
        pipe = CentroidPipeline(None, ("127.0.0.1", port), None, num_processes=2)
    pipe.start()
    path = None
    try:
        if kind == "pixel_rec":
            path = pipe.open_file(os.path.join(tmpdir, f"bench-{rate}.raw"))
        t0 = time.perf_counter()
        sent = run_sender(port, stream, rate, duration)
        c = pipe.counters

        def settled():
            done = c.get("hits") >= sent["hits"] and c.get("bytes") >= sent["bytes"]
            if kind == "centroid":
                done = done and c.worker_total("hits_in") >= c.get("events")
            return done

        end = time.monotonic() + drain_s
        while time.monotonic() < end and not settled():
            time.sleep(0.05)
        lag = time.perf_counter() - t0 - sent["seconds"]
        if path:
            pipe.close_file()
        snap = c.snapshot()
    finally:
        pipe.stop()
        if path and os.path.exists(path):
            os.unlink(path)
    ok = (snap["kernel_drops"] == 0 and snap["handoff_dropped_bytes"] == 0 and snap["hits"] == sent["hits"]
          and snap["bytes"] == sent["bytes"] and pipe.fault() is None)
    if kind == "pixel_rec":
        ok = ok and snap["record_dropped_bytes"] == 0 and snap["recorded_bytes"] == sent["bytes"]
    else:
        ok = ok and snap["hits_in"] >= snap["events"]
    info = dict(sent_mhits=sent["hits"] / sent["seconds"] / 1e6, hits_sent=sent["hits"], hits=snap["hits"],
                kernel_drops=snap["kernel_drops"], handoff_dropped=snap["handoff_dropped_bytes"],
                lag_s=round(lag, 2), fault=pipe.fault())
    if kind == "pixel_rec":
        info.update(recorded=snap["recorded_bytes"], record_dropped=snap["record_dropped_bytes"])
    else:
        info.update(events=snap["events"], centroided_hits=snap["hits_in"], centroids=snap["centroids"])
    return ok, info


def ramp(name, trial, rates):
    best = 0.0
    rows = []
    for r in rates:
        ok, info = trial(r)
        rows.append(dict(rate=r, ok=ok, **info))
        print(f"  {name:10s} {r:7.1f} Mhits/s requested, {info['sent_mhits']:7.2f} sent: "
              f"{'zero loss' if ok else 'LOSS'}  {info}", flush=True)
        if not ok:
            break
        best = max(best, info["sent_mhits"])
        if info["sent_mhits"] < 0.9 * r:
            print(f"  {name:10s} the sender reached only {info['sent_mhits']:.1f} of {r} Mhits/s: "
                  "the machine is saturated, stopping the ramp", flush=True)
            break
    return best, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="s per rate step (>= 20 for the report)")
    ap.add_argument("--drain", type=float, default=5.0, help="s allowed after the sender stops")
    ap.add_argument("--rates-a", default="10,20,30,40,60,80,100")
    ap.add_argument("--rates-b", default="2,4,6,8,10,15,20")
    ap.add_argument("--rates-base", default="20,40,60,80,100,120")
    ap.add_argument("--quick", action="store_true", help="3 s steps (development only)")
    ap.add_argument("--skip", default="", help="comma list of baseline,a,b to skip")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    skip = set(filter(None, args.skip.split(",")))
    t = time.perf_counter()
    stream = make_stream(10.0, 0.5)
    print(f"stream: {stream[0].size} words, {stream[1]} hits per 0.5 s loop "
          f"({time.perf_counter() - t:.1f} s to simulate); duration {args.duration} s per step", flush=True)
    w = np.empty_like(stream[0])
    retime(stream[0], w, 0, 1, 1, 1)        # compile outside the timed region
    tmpdir = tempfile.mkdtemp(prefix="tpx-bench-")
    rates = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    out: dict = {"duration_s": args.duration, "cores": os.cpu_count()}
    try:
        if "baseline" not in skip:
            print("baseline: single-process recv_into loop", flush=True)
            out["baseline_mhits"], _ = ramp("baseline", lambda r: trial_baseline(stream, r, args.duration),
                                            rates(args.rates_base))
        if "a" not in skip:
            print("(a) PixelPipeline + recording", flush=True)
            out["pixel_recording_mhits"], _ = ramp(
                "pixel+rec", lambda r: trial_pipeline("pixel_rec", stream, r, args.duration, args.drain, tmpdir),
                rates(args.rates_a))
        if "b" not in skip:
            print("(b) CentroidPipeline, 2 centroid processes", flush=True)
            out["centroid2_mhits"], _ = ramp(
                "centroid2", lambda r: trial_pipeline("centroid", stream, r, args.duration, args.drain, tmpdir),
                rates(args.rates_b))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    base = out.get("baseline_mhits")
    for key in ("pixel_recording_mhits", "centroid2_mhits"):
        if key in out and base:
            out[key.replace("_mhits", "_ratio_to_baseline")] = round(out[key] / base, 3)
    print(f"highest zero-loss rates (Mhits/s): baseline {out.get('baseline_mhits')}, "
          f"(a) pixel+recording {out.get('pixel_recording_mhits')} [target 80], "
          f"(b) centroid x2 {out.get('centroid2_mhits')} [target 15]; ratios to baseline: "
          f"{out.get('pixel_recording_ratio_to_baseline')}, {out.get('centroid2_ratio_to_baseline')}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
