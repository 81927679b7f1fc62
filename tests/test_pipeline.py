"""End-to-end tests of the live pipeline: real UDP on loopback, real processes."""

from __future__ import annotations

import os
import queue
import time

import numpy as np
import pytest

from tango_tpx.pipeline.acquisition import CentroidPipeline, PixelPipeline
from tango_tpx.pipeline.controller import COUNTER_KEYS, AcquisitionController
from tango_tpx.pipeline.messages import MessageType
from tango_tpx.processing.centroids import Centroids
from tango_tpx.processing.events import TriggerTable
from tango_tpx.simulator import SimConfig, simulate
from tango_tpx.tpx3.encode import encode_global_time, encode_pixels
from tango_tpx.tpx3.hits import PixelHits, Triggers
from tango_tpx.tpx3.units import UNIT_NS

from .conftest import CAPTURES, wait_for
from .test_pipeline_helpers import drain, free_udp_port, random_words, send_datagrams, split


@pytest.fixture(scope="module")
def sim():
    """0.2 s of a 0.5 Mhits/s stream with 1 kHz triggers (~100k hits, 200 triggers)."""
    return simulate(SimConfig(rate_mhits=0.5, duration_s=0.2, seed=3))


def _run(pipe, port: int, payloads, words_expected: int, timeout: float = 30.0):
    pipe.start()
    try:
        send_datagrams(port, payloads)
        assert wait_for(lambda: pipe.counters.get("words") >= words_expected, timeout), pipe.counters.snapshot()
    finally:
        t0 = time.monotonic()
        pipe.stop()
        assert time.monotonic() - t0 < 5.0
    assert pipe.fault() is None


@pytest.mark.timeout(60)
def test_pixel_pipeline_hits_and_triggers_equal_truth(sim):
    words, truth = sim
    port = free_udp_port()
    q: queue.Queue = queue.Queue()
    pipe = PixelPipeline(q, ("127.0.0.1", port), None, flush_timeout=0.05, chunk_bytes=256 << 10)
    _run(pipe, port, split(words.tobytes()), words.size)
    items = drain(q)
    px = PixelHits.concat([d for t, d in items if t == MessageType.PixelData])
    tr = Triggers.concat([d for t, d in items if t == MessageType.TriggerData])
    assert len(px) == len(truth.hits) and len(tr) == len(truth.triggers)
    for f in ("x", "y", "toa", "tot", "chip"):
        assert np.array_equal(getattr(px, f), getattr(truth.hits, f)), f
    for f in ("channel", "rising", "time", "counter"):
        assert np.array_equal(getattr(tr, f), getattr(truth.triggers, f)), f
    c = pipe.counters.snapshot()
    assert c["hits"] == len(truth.hits) and c["triggers"] == len(truth.triggers)
    assert c["bytes"] == words.nbytes and c["kernel_drops"] == 0 and c["chunks"] >= 2
    assert c["malformed_words"] == 0  # the simulator's 0x71 control words are valid words


def _match_fraction(c: Centroids, particles, min_hits: int) -> float:
    """Share of truth particles (with >= min_hits pixels) that have a centroid of the same
    trigger within 0.5 px and 2 ns."""
    sel = np.flatnonzero(particles.n_hits >= min_hits)
    ok = 0
    for i in sel:
        lo, hi = np.searchsorted(c.trigger_nr, [particles.trigger_nr[i], particles.trigger_nr[i] + 1])
        if hi > lo:
            d = np.hypot(c.x[lo:hi] - particles.x[i], c.y[lo:hi] - particles.y[i])
            j = int(np.argmin(d))
            ok += bool(d[j] <= 0.5 and abs(int(c.tof[lo + j]) - int(particles.tof[i])) * UNIT_NS <= 2.0)
    return ok / len(sel)


@pytest.mark.timeout(90)
def test_centroid_pipeline_matches_truth_for_1_and_3_workers(sim):
    words, truth = sim
    results = {}
    for n in (1, 3):
        port = free_udp_port()
        q: queue.Queue = queue.Queue()
        # small chunks so that the 3 workers each get several event batches
        pipe = CentroidPipeline(q, ("127.0.0.1", port), None, num_processes=n, flush_timeout=0.05,
                                chunk_bytes=128 << 10)
        assert pipe.numBlobProcesses == n
        _run(pipe, port, split(words.tobytes()), words.size)
        items = drain(q)
        cents = [d for t, d in items if t == MessageType.CentroidData]
        c = Centroids.concat(cents)
        assert np.all(np.diff(c.trigger_nr) >= 0), "centroids not re-ordered"
        trig = TriggerTable.concat([d for t, d in items if t == MessageType.TriggerData])
        assert np.array_equal(trig.trigger_nr, np.arange(len(truth.trigger_time)))
        assert np.array_equal(trig.time, truth.trigger_time)
        # the clustering keeps clusters of >= 3 pixels (pymepix min_samples=3)
        assert _match_fraction(c, truth.particles, 3) >= 0.99
        snap = pipe.counters.snapshot()
        assert snap["centroids"] == len(c)
        if n == 3:
            assert len(cents) >= 3
        results[n] = c
    for f in ("trigger_nr", "x", "y", "tof", "tot_sum", "size"):
        assert np.array_equal(getattr(results[1], f), getattr(results[3], f)), f


@pytest.mark.timeout(60)
def test_recording_is_byte_exact_over_three_files_and_a_switch(tmp_path):
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    rng = np.random.default_rng(5)
    # odd datagram sizes: recording must not care about word or datagram boundaries
    segments = [[rng.integers(0, 256, int(rng.integers(1, 9000)), dtype=np.uint8).tobytes()
                 for _ in range(int(rng.integers(20, 60)))] for _ in range(7)]
    total = 0

    def send(seg):
        nonlocal total
        total += send_datagrams(port, seg)
        assert wait_for(lambda: ctl.counters()["bytes"] == total, 20)

    ctl.start()
    try:
        send(segments[0])                         # not recorded
        paths = []
        for k in range(3):                        # open / send / close three times
            paths.append(ctl.open_file(tmp_path / f"run{k}.raw"))
            assert ctl.recording_file == paths[-1] and os.path.isabs(paths[-1])
            send(segments[1 + k])
            ctl.close_file()
            assert ctl.recording_file == ""
        send(segments[4])                         # not recorded
        a = ctl.open_file(tmp_path / "a.raw")
        send(segments[5])
        b = ctl.open_file(tmp_path / "b.raw")      # switch without closing
        send(segments[6])
        with pytest.raises(FileExistsError):
            ctl.open_file(a)
        assert ctl.recording_file == b
    finally:
        ctl.stop()                                # closes b
    assert ctl.fault() is None
    expect = [segments[1], segments[2], segments[3], segments[5], segments[6]]
    for path, seg in zip(paths + [a, b], expect):
        blob = open(path, "rb").read()
        t_ns = int.from_bytes(blob[:8], "little")
        assert abs(t_ns - time.time_ns()) < 120e9        # header: time_ns at open
        assert blob[8:] == b"".join(seg), path
    c = ctl.counters()
    assert c["recorded_bytes"] == sum(len(b"".join(s)) for s in expect)
    assert c["record_dropped_bytes"] == 0 and c["kernel_drops"] == 0


@pytest.mark.timeout(60)
def test_garbage_empty_and_heartbeat_datagrams_are_counted_not_fatal():
    port = free_udp_port()
    q: queue.Queue = queue.Queue()
    pipe = PixelPipeline(q, ("127.0.0.1", port), None, flush_timeout=0.05)
    # valid pixels: 50 hits, after a global-time pair
    lsb, msb = encode_global_time(np.array([1000], np.int64))
    x = np.arange(50, dtype=np.int64) % 256
    y = (np.arange(50, dtype=np.int64) * 7) % 256
    toa = (np.int64(1000) + np.arange(50, dtype=np.int64)) << 12
    tot = np.full(50, 20, np.int64)
    good = np.concatenate([[lsb[0], msb[0]], encode_pixels(x, y, toa, tot)]).astype(np.uint64)
    # garbage: headers 0x1, 0x2, 0x3, 0x8, 0x9 (none is pixel/TDC/global time/chunk header)
    hdrs = np.array([0x1, 0x2, 0x3, 0x8, 0x9], np.uint64)
    garbage = (np.repeat(hdrs, 20) << np.uint64(60)) | (random_words(100, 1) & np.uint64((1 << 56) - 1))
    heartbeat = np.array([lsb[0], msb[0]] * 10, np.uint64)       # only global-time words
    payloads = [b"", heartbeat.tobytes(), garbage.tobytes(), b"", good.tobytes(), b"\x01\x02\x03"]
    n_words = 2 * 10 + 100 + len(good)
    pipe.start()
    try:
        send_datagrams(port, payloads)
        assert wait_for(lambda: pipe.counters.get("datagrams") == len(payloads), 20)
        assert wait_for(lambda: pipe.counters.get("words") == n_words, 20)
        assert pipe.isRunning and pipe.fault() is None
    finally:
        pipe.stop()
    c = pipe.counters.snapshot()
    assert c["hits"] == 50
    assert c["malformed_words"] == 100 + 1          # the garbage and the 3-byte tail
    assert c["bytes"] == sum(len(p) for p in payloads)
    px = PixelHits.concat([d for t, d in drain(q) if t == MessageType.PixelData])
    assert np.array_equal(px.x, x) and np.array_equal(px.y, y) and np.array_equal(px.toa, toa)


@pytest.mark.timeout(60)
def test_real_capture_through_the_pipeline():
    path = CAPTURES / "out_5sec.raw"
    if not path.exists():
        pytest.skip(f"real SPIDR capture not available at {path}")
    data = path.read_bytes()               # header-less: payload words only
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port, preview_period_s=0.1)
    ctl.start()
    try:
        send_datagrams(port, split(data, 8192))
        assert wait_for(lambda: ctl.counters()["bytes"] == len(data), 30)
        assert wait_for(lambda: ctl.counters()["hits"] == 518_047, 30), ctl.counters()
    finally:
        ctl.stop()
    c = ctl.counters()
    assert c["triggers"] == 4 * 39 and c["datagrams"] == len(split(data, 8192))
    assert c["malformed_words"] == 0             # the 8 0x71 control words are valid
    assert c["kernel_drops"] == 0 and ctl.fault() is None
    hitmap, hist, axis = ctl.preview()
    assert hitmap.shape == (256, 256) and hitmap.dtype == np.int32
    assert len(hist) == len(axis) and np.all(np.diff(axis) > 0)
    assert axis[0] > 0 and axis[-1] < 1e6        # default window 0..1 ms, in ns


@pytest.mark.timeout(60)
def test_controller_api_and_preview(sim):
    words, truth = sim
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port, preview_period_s=0.1)
    assert not ctl.running and ctl.recording_file == "" and ctl.fault() is None
    with pytest.raises(RuntimeError):
        ctl.open_file("/tmp/never-written.raw")
    ctl.event_window = (0.0, 10e-6)
    ctl.start()
    try:
        assert ctl.running
        c0 = ctl.counters()
        assert set(COUNTER_KEYS) <= set(c0) and c0["rcvbuf_bytes"] > 0
        m0, h0, a0 = ctl.preview()                 # valid axis before any data: 10 us / 256 bins
        assert m0.sum() == 0 and h0.sum() == 0
        assert np.allclose(a0, (np.arange(256) + 0.5) * 10_000 / 256, atol=1e-3)
        send_datagrams(port, split(words.tobytes()))
        assert wait_for(lambda: ctl.counters()["hits"] == len(truth.hits), 30)
        time.sleep(0.3)                       # at least one preview period after the data
    finally:
        ctl.stop()
    assert not ctl.running
    c = ctl.counters()
    assert c["time"] > c0["time"]
    assert c["triggers"] == len(truth.triggers) and c["lost_triggers"] == 0
    # events: hits with 0 <= tof <= 10 us of their trigger (independently from the truth)
    tt = truth.trigger_time
    k = np.searchsorted(tt, truth.hits.toa, side="right") - 1
    tof = truth.hits.toa - tt[np.maximum(k, 0)]
    in_win = (k >= 0) & (tof >= 0) & (tof * UNIT_NS <= 10_000)
    assert c["events"] == int(in_win.sum())
    hitmap, hist, axis = ctl.preview()
    assert hitmap.sum() > 0 and hist.sum() > 0
    assert axis[-1] < 10_000 and axis[0] > 0
    ctl.reset_counters()
    assert ctl.counters()["hits"] == 0


@pytest.mark.timeout(60)
def test_pub_stream_delivers_documented_frames(sim, tmp_path):
    import zmq

    from tango_tpx.pipeline.messages import decode_frames
    words, truth = sim
    port = free_udp_port()
    address = f"ipc://{tmp_path}/stream"
    ctl = AcquisitionController(udp_port=port, stream_address=address)
    ctl.centroiding = True
    ctl.centroid_processes = 2
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"CentroidData")
    sub.setsockopt(zmq.SUBSCRIBE, b"TriggerData")
    sub.setsockopt(zmq.LINGER, 0)
    got = {"CentroidData": [], "TriggerData": []}
    ctl.start()
    try:
        sub.connect(address)
        time.sleep(0.3)                        # let the subscription reach the publisher
        send_datagrams(port, split(words.tobytes()))
        assert wait_for(lambda: ctl.counters()["hits"] == len(truth.hits), 30)
    finally:
        ctl.stop()          # flushes the last events; the publisher lingers to deliver them
    try:
        while sub.poll(1000):
            frames = sub.recv_multipart()
            mtype, data, seq, meta = decode_frames(frames[1:])
            assert frames[0] == mtype.name.encode()
            got[mtype.name].append(data)
    finally:
        sub.close()
        ctx.term()
    c = Centroids.concat(got["CentroidData"])
    assert len(c) == ctl.counters()["centroids"] > 0
    assert np.all(np.diff(c.trigger_nr) >= 0)
    assert _match_fraction(c, truth.particles, 3) >= 0.99
    trig = TriggerTable.concat(got["TriggerData"])
    assert np.array_equal(trig.time, truth.trigger_time)


@pytest.mark.timeout(60)
def test_kernel_drops_are_counted_exactly():
    port = free_udp_port()
    # the smallest receive buffer the kernel allows: a fast burst must overflow it
    pipe = PixelPipeline(None, ("127.0.0.1", port), None, rcvbuf_bytes=1, flush_timeout=0.05)
    n = 3000
    pipe.start()
    try:
        assert pipe.counters.get("rcvbuf_bytes") < 64 << 10
        send_datagrams(port, [b"\x00" * 1024] * n, pause_every=0)
        assert wait_for(lambda: pipe.counters.get("datagrams") + pipe.counters.get("kernel_drops") == n, 10), \
            pipe.counters.snapshot()
    finally:
        pipe.stop()
    c = pipe.counters.snapshot()
    assert c["kernel_drops"] > 0 and c["datagrams"] + c["kernel_drops"] == n
    assert c["bytes"] == 1024 * c["datagrams"]


@pytest.mark.timeout(60)
def test_longtime_anchor_from_argument_and_setter():
    epoch = 1 << 30                                   # coarse ticks (25 ns) per 30-bit epoch
    x = np.array([10, 11], np.int64)
    y = np.array([20, 21], np.int64)
    toa = np.array([1000, 1001], np.int64) << 12      # 30-bit coarse 1000, 1001
    words = encode_pixels(x, y, toa, np.array([5, 6], np.int64)).astype(np.uint64)
    port = free_udp_port()
    q: queue.Queue = queue.Queue()
    pipe = PixelPipeline(q, ("127.0.0.1", port), 5 * epoch + 900, flush_timeout=0.02)
    pipe.start()
    try:
        send_datagrams(port, [words[:1].tobytes()])
        assert wait_for(lambda: pipe.counters.get("hits") == 1, 10)
        pipe.set_longtime(9 * epoch + 1200)           # e.g. read from the SPIDR timer
        time.sleep(0.1)
        send_datagrams(port, [words[1:].tobytes()])
        assert wait_for(lambda: pipe.counters.get("hits") == 2, 10)
    finally:
        pipe.stop()
    px = PixelHits.concat([d for t, d in drain(q) if t == MessageType.PixelData])
    coarse = px.toa >> 12
    assert coarse.tolist() == [5 * epoch + 1000, 9 * epoch + 1001]
