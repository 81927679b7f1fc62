"""Live pipeline benchmark: simulator -> UDP (loopback) -> pipeline, at increasing rates.

For each configuration a sender process replays a simulated SPIDR stream (8 KiB datagrams,
``sendmmsg`` bursts) at a paced hit rate for ``--duration`` s; a rate passes when nothing is
lost: kernel drops 0, nothing dropped at the hand-off, hits decoded == hits sent, recording
complete (and, with centroiding, every event hit centroided). After the sender stops, the
step waits until the pipeline has drained: hits decoded == hits sent, every raw chunk
decoded, every message to the centroid stage processed (the workers idle) and every event
hit centroided. It stops waiting when nothing has moved for ``--stall`` s (what is missing
then is lost) or after ``--drain`` s (reported as not drained), so the verdict measures loss,
not drain time; each step reports its drain time (s from the sender's end to drained) and
the throughput over send + drain time (a short step above the sustainable rate passes on
buffering, with a long drain: use the default 20 s steps for the headline).
Reported: the highest passing rate (Mhits/s) of

* baseline: a plain single-process ``recv_into`` loop (counts bytes only),
* (a) PixelPipeline with recording to a .raw file,
* (b) CentroidPipeline with 2 centroid processes (fast clustering),

and the ratio of (a), (b) to the baseline. With the sender on the same 2 cores the wall-clock
figures are capped by the machine, so every step also reports CPU use per process (sender,
receiver, decoder, centroid workers: ``/proc`` times, in cores = CPU s per s) and the
CPU-based capacity ``cores / (pipeline CPU s per Mhit)`` (the rate at which the pipeline's
processes alone would fill the machine), minor page faults per 1000 hits per process group,
and the peak depth of each stage's input queue (raw chunks waiting for the decoder, event
messages waiting for the centroid workers: the stage whose queue grows is the one that
limits the rate). ``receiver capacity`` steps measure the receiving side without a
concurrent sender: the receiver is paused (SIGSTOP), a pre-generated burst is
sent into the socket buffer as fast as possible, then the receiver resumes and the time to
decode (and record / centroid) everything gives the rate; the same is measured with the
results delivered to a Python consumer thread through ``data_queue`` (PixelPipeline without
recording: every PixelData; CentroidPipeline: every CentroidData). The rate ramps count hits
from the shared counters (``data_queue`` None), as a Tango device without a local consumer.

The stream is re-timed on every replay (pixel and TDC time fields advanced by the loop
period, global-time words removed) so that times keep increasing as in a real run. The
load average is printed before and after. The last line printed is one JSON object with
all figures.

Run: ``.venv/bin/python benchmarks/live.py [--duration 20] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import queue
import tempfile
import threading
import time
from pathlib import Path

import numba
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:      # this checkout's library, not another installed one
    sys.path.insert(0, str(REPO))

from tango_tpx.device.database import free_port  # noqa: E402
from tango_tpx.pipeline.acquisition import CentroidPipeline, PixelPipeline
from tango_tpx.pipeline.messages import MessageType
from tango_tpx.pipeline.udpsampler import open_udp_socket
from tango_tpx.simulator import SimConfig, simulate
from tango_tpx.simulator.udpsend import BatchSender

from meters import CpuMeter, QueueMeter, load_avg, stage_pids

PAYLOAD = 8192
#: share of the granted socket buffer a capacity burst may fill (kernel overhead per datagram)
FILL = float(os.environ.get("TPX_BENCH_FILL", "0.35"))
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
           rate_mhits: float, duration_s: float, result: mp.Queue, use_mmsg: bool = True,
           max_bytes: int = 0) -> None:
    """Replay ``words`` at ``rate_mhits`` (wall clock; <= 0: as fast as possible) for
    ``duration_s`` (or until ``max_bytes`` were sent, if > 0) in datagrams of PAYLOAD bytes,
    sent in bursts of up to 64 with ``sendmmsg`` (:class:`BatchSender`); reports what was
    sent and the sender's CPU time (s)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    tx = BatchSender(sock, ("127.0.0.1", port), use_mmsg=use_mmsg)
    bytes_per_hit = words.nbytes / hits_per_loop
    rate_bytes = rate_mhits * 1e6 * bytes_per_hit if rate_mhits > 0 else float("inf")
    limit = int(max_bytes) if max_bytes > 0 else 1 << 62
    buf = np.empty_like(words)
    raw = buf.view(np.uint8)
    n = raw.size
    max_burst = 64 * PAYLOAD
    # wake up when ~1 ms of data (at least one datagram, at most one burst) is due
    min_burst = max(PAYLOAD, min(max_burst, int(rate_bytes * 1e-3) // PAYLOAD * PAYLOAD)) \
        if rate_mhits > 0 else PAYLOAD
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
            if now >= stop_at or sent_bytes >= limit:
                done = True
                break
            allowed = min((now - t0) * rate_bytes - sent_bytes, limit - sent_bytes)
            if allowed < min_burst and sent_bytes + min_burst <= limit:
                time.sleep(min(0.002, (min_burst - allowed) / rate_bytes))   # ahead of schedule
                continue
            burst = min(n - pos, max_burst, max(PAYLOAD, int(allowed // PAYLOAD) * PAYLOAD))
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


# ---- receivers -----------------------------------------------------------------------------
def baseline_receiver(port: int, ready, stop, result) -> None:
    """The baseline: one process, recv_into a buffer, count bytes; drops from /proc/net/udp."""
    sock, _ = open_udp_socket("127.0.0.1", port)
    sock.setblocking(True)
    sock.settimeout(0.2)
    buf = bytearray(65536)
    n = 0
    ready.set()
    c0 = time.process_time()
    while not stop.is_set():
        try:
            n += sock.recv_into(buf)
        except socket.timeout:
            continue
    drops = proc_udp_drops(port)
    sock.close()
    result.put(dict(bytes=n, drops=drops, cpu_s=time.process_time() - c0))


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


def start_sender(port, stream, rate, duration, max_bytes=0):
    words, hits, d_ticks, d_count = stream
    q = mp.Queue()
    p = mp.Process(target=sender, args=(port, words, hits, d_ticks, d_count, rate, duration, q, True, max_bytes),
                   daemon=True)
    p.start()
    return p, q


def finish_sender(p, q, duration):
    res = q.get(timeout=duration + 60)
    p.join(5)
    return res


def trial_baseline(stream, rate, duration):
    port = free_port(kind=socket.SOCK_DGRAM)
    ready, stop, q = mp.Event(), mp.Event(), mp.Queue()
    r = mp.Process(target=baseline_receiver, args=(port, ready, stop, q), daemon=True)
    r.start()
    ready.wait(10)
    sent = finish_sender(*start_sender(port, stream, rate, duration), duration)
    time.sleep(0.5)
    stop.set()
    got = q.get(timeout=10)
    r.join(5)
    ok = got["bytes"] == sent["bytes"] and got["drops"] == 0
    secs = sent["seconds"]
    return ok, dict(sent_mhits=sent["hits"] / secs / 1e6, recv_bytes=got["bytes"], sent_bytes=sent["bytes"],
                    drops=got["drops"], cpu_cores=dict(sender=round(sent["cpu_s"] / secs, 3),
                                                       receiver=round(got["cpu_s"] / secs, 3)))


def _make_pipe(kind: str, port: int, flush_timeout: float = 0.3, data_queue=None):
    if kind in ("pixel_rec", "pixel"):
        return PixelPipeline(data_queue, ("127.0.0.1", port), None, use_event=False, flush_timeout=flush_timeout)
    return CentroidPipeline(data_queue, ("127.0.0.1", port), None, num_processes=2, flush_timeout=flush_timeout)


class QueueConsumer(threading.Thread):
    """The Python caller: takes ``(MessageType, data)`` off ``data_queue``, counts pixel
    hits (PixelData) and centroids (CentroidData)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.hits = self.centroids = self.items = 0

    def run(self) -> None:
        while True:
            mtype, data = self.queue.get()
            if mtype is None:
                return
            self.items += 1
            if mtype == MessageType.PixelData:
                self.hits += len(data)
            elif mtype == MessageType.CentroidData:
                self.centroids += len(data)

    def done(self, kind: str, c) -> bool:
        if kind in ("pixel_rec", "pixel"):
            return self.hits >= c.get("hits")
        return self.centroids >= c.get("centroids")

    def stop(self) -> None:
        self.queue.put((None, None))
        self.join(5)


def _centroid_slot(pipe) -> int:
    """Queue-depth slot of the centroid stage's input (its index among the stages)."""
    for i, st in enumerate(pipe.stages):
        if getattr(st.klass, "__name__", "") == "PipelineCentroidCalculator":
            return i
    return 2


def _workers_idle(c, slot: int) -> bool:
    """Every message put into the centroid stage has been centroided (counted after the work)."""
    return c.stage_sent_total(slot) <= c.worker_total("chunks_in")


def _idle(kind, c, slot: int = 2) -> bool:
    """Every raw chunk handed to the decoder (stage slot 1) has been decoded and (centroiding)
    every message to the centroid stage has been centroided: nothing is left in flight."""
    return c.stage_sent_total(1) <= c.get("decoded_chunks") and (kind != "centroid" or _workers_idle(c, slot))


def _settled(kind, c, hits, nbytes, recording, slot: int = 2) -> bool:
    """Everything sent has been decoded (recorded, centroided)."""
    done = c.get("hits") >= hits and c.get("bytes") >= nbytes
    if recording:
        done = done and c.get("recorded_bytes") + c.get("record_dropped_bytes") >= nbytes
    if kind == "centroid":
        done = done and _idle(kind, c, slot) and c.worker_total("hits_in") >= c.get("events")
    return done


def wait_drained(kind, pipe, hits: int, nbytes: int, recording: bool, timeout_s: float,
                 stall_s: float) -> tuple[str, float]:
    """Poll the counters until the pipeline has drained what was sent (:func:`_settled`).

    Returns (state, seconds waited): ``drained``; ``stalled`` when no counter moved for
    ``stall_s`` s while the stages are idle or a loss was counted (the rest is lost:
    dropped by the kernel or at a hand-off); ``timeout`` when not drained after
    ``timeout_s`` s."""
    c = pipe.counters
    slot = _centroid_slot(pipe) if kind == "centroid" else 2
    t0 = time.monotonic()
    last, moved = None, t0
    while True:
        now = time.monotonic()
        if _settled(kind, c, hits, nbytes, recording, slot):
            return "drained", now - t0
        state = (c.get("bytes"), c.get("hits"), c.get("decoded_chunks"), c.get("recorded_bytes"),
                 c.worker_total("chunks_in"), c.worker_total("hits_in"))
        if state != last:
            last, moved = state, now
        elif now - moved >= stall_s and (_idle(kind, c, slot) or c.get("kernel_drops") > 0
                                          or c.get("handoff_dropped_bytes") > 0):
            return "stalled", now - t0
        if now - t0 >= timeout_s:
            return "timeout", now - t0
        time.sleep(0.01)


def _verdict(kind, snap, sent, fault):
    ok = (snap["kernel_drops"] == 0 and snap["handoff_dropped_bytes"] == 0 and snap["hits"] == sent["hits"]
          and snap["bytes"] == sent["bytes"] and fault is None)
    if kind == "pixel_rec":
        ok = ok and snap["record_dropped_bytes"] == 0 and snap["recorded_bytes"] == sent["bytes"]
    elif kind == "centroid":
        ok = ok and snap["hits_in"] >= snap["events"]
    info = dict(hits_sent=sent["hits"], hits=snap["hits"], kernel_drops=snap["kernel_drops"],
                handoff_dropped=snap["handoff_dropped_bytes"], fault=fault)
    if kind == "pixel_rec":
        info.update(recorded=snap["recorded_bytes"], record_dropped=snap["record_dropped_bytes"])
    elif kind == "centroid":
        info.update(events=snap["events"], centroided_hits=snap["hits_in"], centroids=snap["centroids"])
    return ok, info


def _cpu_figures(cpu: dict, hits: int, secs: float, sender_cpu_s: float) -> dict:
    """Cores per role over ``secs`` and the CPU-based capacities (Mhits/s) on this machine."""
    cores = os.cpu_count() or 1
    roles = [k for k in cpu if k not in ("machine_busy", "wall")]
    pipe_s = sum(cpu[k] for k in roles)
    mhits = max(hits, 1) / 1e6
    out = {k: round(cpu[k] / secs, 3) for k in roles}
    out["sender"] = round(sender_cpu_s / secs, 3)
    out["machine_busy"] = round(cpu["machine_busy"] / cpu["wall"], 3)
    return dict(cpu_cores=out, pipeline_cpu_s_per_mhit=round(pipe_s / mhits, 4),
                cpu_capacity_mhits=round(cores / (pipe_s / mhits), 1),
                cpu_capacity_with_sender_mhits=round(cores / ((pipe_s + sender_cpu_s) / mhits), 1))


def trial_pipeline(kind, stream, rate, duration, drain_s, tmpdir, stall_s: float = 5.0):
    port = free_port(kind=socket.SOCK_DGRAM)
    pipe = _make_pipe(kind, port)
    pipe.start()
    path = None
    queues = QueueMeter(pipe)
    try:
        if kind == "pixel_rec":
            path = pipe.open_file(os.path.join(tmpdir, f"bench-{rate}.raw"))
        meter = CpuMeter(stage_pids(pipe))
        meter.start()
        queues.start()
        t0 = time.perf_counter()
        sent = finish_sender(*start_sender(port, stream, rate, duration), duration)
        c = pipe.counters
        drain_state, drain_wait = wait_drained(kind, pipe, sent["hits"], sent["bytes"], path is not None,
                                               drain_s, stall_s)
        lag = time.perf_counter() - t0 - sent["seconds"]
        cpu = meter.stop()
        depths = queues.stop()
        if path:
            pipe.close_file()
        snap = c.snapshot()
        fault = pipe.fault()
    finally:
        queues.stop()
        pipe.stop()
        if path and os.path.exists(path):
            os.unlink(path)
    ok, info = _verdict(kind, snap, sent, fault)
    ok = ok and drain_state == "drained"
    secs = sent["seconds"]
    # drain_s: from the sender's end to drained (for a stalled step: to the last progress)
    drain = drain_wait - (stall_s if drain_state == "stalled" else 0.0)
    # what the pipeline sustained: every hit sent over the send time plus the drain time (a
    # short step at a rate above it passes on buffering, with a drain time growing with it)
    info = dict(sent_mhits=sent["hits"] / secs / 1e6, lag_s=round(lag, 2), drain=drain_state,
                drain_s=round(max(drain, 0.0), 2),
                throughput_mhits=round(snap["hits"] / (secs + max(drain, 0.0)) / 1e6, 2), **info,
                **_cpu_figures(cpu, sent["hits"], secs, sent["cpu_s"]), **depths,
                page_faults_per_khit={g: round(f * 1000 / max(sent["hits"], 1), 2) for g, f in meter.faults.items()})
    return ok, info


def trial_capacity(kind, stream, burst_bytes, tmpdir, tries: int = 3, deliver: bool = False):
    """Receiver-side capacity: pause the receiver, fill its socket buffer with a burst sent
    as fast as possible, resume it and time until everything is decoded (and recorded /
    centroided; with ``deliver`` also taken off ``data_queue`` by a consumer thread). A
    burst the kernel had to drop from is retried 30 % smaller. Returns (ok, info with
    ``mhits`` = hits / drain time)."""
    fill = FILL
    for attempt in range(tries):
        port = free_port(kind=socket.SOCK_DGRAM)
        consumer = QueueConsumer() if deliver else None
        if consumer:
            consumer.start()
        pipe = _make_pipe(kind, port, flush_timeout=0.02,     # the last partial chunk: no 0.3 s wait
                          data_queue=consumer.queue if consumer else None)
        pipe.start()
        path = None
        retry = False
        try:
            if kind == "pixel_rec":
                path = pipe.open_file(os.path.join(tmpdir, "capacity.raw"))
            c = pipe.counters
            burst = int(min(burst_bytes, fill * c.get("rcvbuf_bytes")))
            rx = pipe.stages[0].processes[0].pid
            os.kill(rx, signal.SIGSTOP)
            try:
                sent = finish_sender(*start_sender(port, stream, 0.0, 600.0, max_bytes=burst), 600.0)
                retry = proc_udp_drops(port) != 0 and attempt + 1 < tries
            finally:
                os.kill(rx, signal.SIGCONT)
            if not retry:
                meter = CpuMeter(stage_pids(pipe))
                meter.start()
                t0 = time.perf_counter()
                end = time.monotonic() + 60
                while time.monotonic() < end and not (
                        _settled(kind, c, sent["hits"], sent["bytes"], path is not None, _centroid_slot(pipe))
                        and (consumer is None or consumer.done(kind, c))):
                    time.sleep(0.005)
                secs = time.perf_counter() - t0
                cpu = meter.stop()
                if path:
                    pipe.close_file()
                snap = c.snapshot()
                fault = pipe.fault()
        finally:
            pipe.stop()
            if consumer:
                consumer.stop()
            if path and os.path.exists(path):
                os.unlink(path)
        if not retry:
            break
        fill *= 0.7
    ok, info = _verdict(kind, snap, sent, fault)
    if consumer:
        ok = ok and consumer.done(kind, pipe.counters)
        info.update(delivered_hits=consumer.hits, delivered_centroids=consumer.centroids)
    figs = _cpu_figures(cpu, sent["hits"], secs, 0.0)
    figs["cpu_cores"].pop("sender")
    figs.pop("cpu_capacity_with_sender_mhits")
    return ok, dict(mhits=round(sent["hits"] / secs / 1e6, 2), burst_bytes=sent["bytes"],
                    sender_mhits=round(sent["hits"] / sent["seconds"] / 1e6, 1), drain_s=round(secs, 2),
                    **info, **figs)


def ramp(name, trial, rates):
    """Run ``trial`` at increasing rates until a loss; returns (best rate, its row, rows)."""
    best, best_row = 0.0, None
    rows = []
    for r in rates:
        ok, info = trial(r)
        rows.append(dict(rate=r, ok=ok, **info))
        verdict = "zero loss" if ok else ("NOT DRAINED" if info.get("drain") == "timeout" else "LOSS")
        drain = (f"drained in {info['drain_s']} s ({info['throughput_mhits']} Mhits/s over send + drain), "
                 if "drain_s" in info else "")
        print(f"  {name:10s} {r:7.1f} Mhits/s requested, {info['sent_mhits']:7.2f} sent: "
              f"{verdict}  {drain}{info}", flush=True)
        if not ok:
            break
        if info["sent_mhits"] > best:
            best, best_row = info["sent_mhits"], rows[-1]
        if info["sent_mhits"] < 0.9 * r:
            print(f"  {name:10s} the sender reached only {info['sent_mhits']:.1f} of {r} Mhits/s: "
                  "the machine is saturated, stopping the ramp", flush=True)
            break
    return round(best, 2), best_row, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="s per rate step (>= 20 for the report)")
    ap.add_argument("--drain", type=float, default=120.0,
                    help="s allowed after the sender stops for the pipeline to drain (a time-out, not a wait)")
    ap.add_argument("--stall", type=float, default=5.0,
                    help="s without any counter moving after which what is missing counts as lost")
    ap.add_argument("--rates-a", default="40,60,80,90,100,110,120")
    ap.add_argument("--rates-b", default="8,12,15,16,18,20,22,24")
    ap.add_argument("--rates-base", default="40,80,120,140,160")
    ap.add_argument("--burst-mb", type=float, default=400.0, help="receiver-capacity burst (MB)")
    ap.add_argument("--quick", action="store_true", help="3 s steps (development only)")
    ap.add_argument("--skip", default="", help="comma list of baseline,a,b,capacity to skip")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    skip = set(filter(None, args.skip.split(",")))
    t = time.perf_counter()
    stream = make_stream(10.0, 0.5)
    print(f"stream: {stream[0].size} words, {stream[1]} hits per 0.5 s loop "
          f"({time.perf_counter() - t:.1f} s to simulate); duration {args.duration} s per step; "
          f"load average {load_avg()}", flush=True)
    w = np.empty_like(stream[0])
    retime(stream[0], w, 0, 1, 1, 1)        # compile outside the timed region
    tmpdir = tempfile.mkdtemp(prefix="tpx-bench-")
    rates = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    out: dict = {"duration_s": args.duration, "drain_timeout_s": args.drain, "stall_s": args.stall,
                 "cores": os.cpu_count(), "load_before": load_avg()}
    try:
        if "baseline" not in skip:
            print("baseline: single-process recv_into loop", flush=True)
            out["baseline_mhits"], row, _ = ramp("baseline", lambda r: trial_baseline(stream, r, args.duration),
                                                 rates(args.rates_base))
            out["baseline_cpu_cores"] = row and row["cpu_cores"]
        if "a" not in skip:
            print("(a) PixelPipeline + recording", flush=True)
            out["pixel_recording_mhits"], row, _ = ramp(
                "pixel+rec", lambda r: trial_pipeline("pixel_rec", stream, r, args.duration, args.drain, tmpdir,
                                                       args.stall),
                rates(args.rates_a))
            if row:
                out["pixel_recording_best_step"] = {k: row[k] for k in (
                    "cpu_cores", "pipeline_cpu_s_per_mhit", "cpu_capacity_mhits", "cpu_capacity_with_sender_mhits",
                    "lag_s", "drain_s")}
        if "b" not in skip:
            print("(b) CentroidPipeline, 2 centroid processes", flush=True)
            out["centroid2_mhits"], row, rows = ramp(
                "centroid2", lambda r: trial_pipeline("centroid", stream, r, args.duration, args.drain, tmpdir,
                                                      args.stall),
                rates(args.rates_b))
            out["centroid2_steps"] = [dict(rate=x["rate"], sent_mhits=round(x["sent_mhits"], 2), ok=x["ok"],
                                           drain=x["drain"], drain_s=x["drain_s"],
                                           throughput_mhits=x["throughput_mhits"], hits_sent=x["hits_sent"],
                                           hits=x["hits"], kernel_drops=x["kernel_drops"],
                                           handoff_dropped=x["handoff_dropped"], queue_peak=x["queue_peak"],
                                           queue_peak_at_s=x["queue_peak_at_s"]) for x in rows]
            if row:
                out["centroid2_best_step"] = {k: row[k] for k in (
                    "cpu_cores", "pipeline_cpu_s_per_mhit", "cpu_capacity_mhits", "cpu_capacity_with_sender_mhits",
                    "lag_s", "drain_s", "page_faults_per_khit")}
        if "capacity" not in skip:
            print("receiver capacity: paused receiver, burst into the socket buffer, time to drain", flush=True)
            for kind, key, deliver in (("pixel_rec", "pixel_recording", False), ("centroid", "centroid2", False),
                                       ("pixel", "pixel_data_queue", True), ("centroid", "centroid2_data_queue", True)):
                ok, info = trial_capacity(kind, stream, args.burst_mb * 1e6, tmpdir, deliver=deliver)
                print(f"  {key:16s} {'zero loss' if ok else 'LOSS'}: {info['mhits']} Mhits/s  {info}", flush=True)
                out[f"{key}_receiver_capacity_mhits"] = info["mhits"] if ok else 0.0
                out[f"{key}_receiver_capacity"] = {k: info[k] for k in (
                    "burst_bytes", "drain_s", "cpu_cores", "pipeline_cpu_s_per_mhit", "cpu_capacity_mhits")}
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    out["load_after"] = load_avg()
    base = out.get("baseline_mhits")
    for key in ("pixel_recording_mhits", "centroid2_mhits"):
        if key in out and base:
            out[key.replace("_mhits", "_ratio_to_baseline")] = round(out[key] / base, 3)
    print(f"highest zero-loss rates (Mhits/s): baseline {out.get('baseline_mhits')}, "
          f"(a) pixel+recording {out.get('pixel_recording_mhits')} [target 80], "
          f"(b) centroid x2 {out.get('centroid2_mhits')} [target 15]; ratios to baseline: "
          f"{out.get('pixel_recording_ratio_to_baseline')}, {out.get('centroid2_ratio_to_baseline')}; "
          f"receiver capacity (no concurrent sender): (a) {out.get('pixel_recording_receiver_capacity_mhits')}, "
          f"(b) {out.get('centroid2_receiver_capacity_mhits')}; with the results taken off data_queue by a "
          f"Python thread: pixels {out.get('pixel_data_queue_receiver_capacity_mhits')}, centroids x2 "
          f"{out.get('centroid2_data_queue_receiver_capacity_mhits')}; load average {out['load_before']} -> "
          f"{out['load_after']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
