"""The throughput parts of the live pipeline: O_DIRECT recording, the shared raw ring,
batched UDP sending, and the ring hand-off under a slow decoder (fallback, no loss)."""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import time

import numpy as np
import pytest

from tango_tpx.pipeline import acquisition, raw2disk, udpsampler
from tango_tpx.pipeline.acquisition import PixelPipeline
from tango_tpx.pipeline.messages import MessageType
from tango_tpx.pipeline.packetprocessor import PipelinePacketProcessor
from tango_tpx.pipeline.shmring import RawRing
from tango_tpx.simulator import SimConfig, simulate
from tango_tpx.simulator.udpsend import BatchSender
from tango_tpx.tpx3.hits import PixelHits

from .conftest import wait_for
from .test_pipeline_helpers import drain, free_udp_port, send_datagrams, split


# ---- DirectRawFileWriter ----------------------------------------------------------------------
@pytest.mark.parametrize("direct", [True, False])
def test_direct_writer_is_byte_exact_across_stage_boundaries(tmp_path, monkeypatch, direct):
    monkeypatch.setattr(raw2disk, "STAGE_BYTES", 3 * raw2disk.DIRECT_ALIGN)   # many flushes
    rng = np.random.default_rng(11)
    # sizes around the 12 KiB stage: tiny, unaligned, exactly one stage, several stages
    sizes = [1, 7, 4095, 4096, 4097, 12288, 12280, 30001, 3, 0, 65536 + 5]
    parts = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    path = tmp_path / "d.raw"
    w = raw2disk.DirectRawFileWriter(path, time_ns=123456789, direct=direct)
    for k, p in enumerate(parts):
        # every input type the recorder may see: ndarray, memoryview, bytes
        data = p if k % 3 == 0 else (memoryview(p) if k % 3 == 1 else p.tobytes())
        assert w.write(data) == p.size
        if k == 4:
            w.flush()                     # an explicit flush in the middle changes nothing
    assert w.bytes_written == sum(sizes)
    w.close()
    w.close()                             # idempotent
    assert w.closed
    blob = path.read_bytes()
    assert len(blob) == 8 + sum(sizes)
    assert int.from_bytes(blob[:8], "little") == 123456789
    assert blob[8:] == b"".join(p.tobytes() for p in parts)
    if not direct:
        assert not w.direct


def test_direct_writer_header_less_exclusive_and_empty(tmp_path):
    p = tmp_path / "h.raw"
    with raw2disk.DirectRawFileWriter(p, header=False) as w:
        w.write(b"\x01\x02\x03")
        assert w.header_bytes == 0 and w.time_ns is None
    assert p.read_bytes() == b"\x01\x02\x03"
    with pytest.raises(FileExistsError):
        raw2disk.DirectRawFileWriter(p)
    e = tmp_path / "e.raw"
    t0 = time.time_ns()
    with raw2disk.DirectRawFileWriter(e):
        pass
    blob = e.read_bytes()
    assert len(blob) == 8 and t0 <= int.from_bytes(blob, "little") <= time.time_ns()
    w = raw2disk.DirectRawFileWriter(tmp_path / "c.raw")
    w.close()
    with pytest.raises(ValueError):
        w.write(b"x")


def test_recorder_uses_the_direct_writer():
    assert raw2disk.RawFileWriter is raw2disk.DirectRawFileWriter


# ---- RawRing ----------------------------------------------------------------------------------
def _child_fill(ring: RawRing, i: int, value: int, n: int) -> None:
    ring.slot(i)[:n] = value
    ring.acquire(i)


@pytest.mark.timeout(30)
def test_raw_ring_is_shared_with_forked_processes_and_checks_references():
    ring = RawRing(3, 10000)
    assert ring.slot_bytes == 12288 and ring.slot(2).size == 12288
    assert all(ring.is_free(i) for i in range(3))
    p = mp.get_context("fork").Process(target=_child_fill, args=(ring, 1, 7, 5000))
    p.start()
    p.join(20)
    assert p.exitcode == 0
    assert not ring.is_free(1) and ring.is_free(0)          # the child's flag is visible here
    v = ring.view(1, 5000)
    assert v.size == 5000 and np.all(v == 7) and not v.flags.writeable
    with pytest.raises(ValueError):
        v[0] = 1
    ring.release(1)
    assert ring.is_free(1)
    for bad in ((3, 10), (-1, 10), (0, 12289)):
        with pytest.raises(ValueError):
            ring.view(*bad)
    with pytest.raises(ValueError):
        RawRing(0, 100)
    del v
    ring.close()


# ---- BatchSender ------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("use_mmsg", [True, False])
def test_batch_sender_sends_each_range_as_one_datagram(use_mmsg):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    tx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rng = np.random.default_rng(2)
        buf = rng.integers(0, 256, 1_500_000, dtype=np.uint8)
        lengths = rng.integers(0, 9000, 150)              # 150 ranges > 2 batches of 64
        ends = np.cumsum(lengths)
        starts = ends - lengths
        tx = BatchSender(tx_sock, ("localhost", rx.getsockname()[1]), use_mmsg=use_mmsg)
        assert tx.send(buf, starts, ends) == int(lengths.sum())
        got = [rx.recv(65536) for _ in range(len(lengths))]
        for s, e, g in zip(starts, ends, got):
            assert g == buf[s:e].tobytes()
        # uniform cut: 3 full datagrams and a short one
        assert tx.send_uniform(buf, 100, 100 + 3 * 8192 + 40, 8192) == 3 * 8192 + 40
        got = [rx.recv(65536) for _ in range(4)]
        assert [len(g) for g in got] == [8192, 8192, 8192, 40]
        assert b"".join(got) == buf[100:100 + 3 * 8192 + 40].tobytes()
        with pytest.raises(ValueError):
            tx.send(buf, np.array([0]), np.array([buf.size + 1]))
    finally:
        rx.close()
        tx_sock.close()


# ---- ring hand-off with a slow decoder: fallback to private buffers, nothing lost ----------------
_orig_process = PipelinePacketProcessor.process


def _slow_process(self, data_type=None, data=None):
    time.sleep(0.03)
    return _orig_process(self, data_type, data)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ring_wait_s", [1.0, 0.0])   # wait for a slot / fall back to ZeroMQ copies
def test_slow_decoder_exhausts_the_ring_without_losing_hits(monkeypatch, ring_wait_s):
    monkeypatch.setattr(acquisition, "RAW_RING_SLOTS", 2)          # inherited by the fork
    monkeypatch.setattr(udpsampler, "RING_WAIT_S", ring_wait_s)
    monkeypatch.setattr(PipelinePacketProcessor, "process", _slow_process)
    words, truth = simulate(SimConfig(rate_mhits=0.5, duration_s=0.3, seed=8))
    port = free_udp_port()
    q: queue.Queue = queue.Queue()
    pipe = PixelPipeline(q, ("127.0.0.1", port), None, chunk_bytes=64 << 10, flush_timeout=0.05)
    pipe.start()
    try:
        assert len(pipe._rings) == 1 and pipe._rings[0].n_slots == 2
        send_datagrams(port, split(words.tobytes()), pause_every=16)
        assert wait_for(lambda: pipe.counters.get("words") >= words.size, 60), pipe.counters.snapshot()
        snap = pipe.counters.snapshot()
    finally:
        t0 = time.monotonic()
        pipe.stop()
        assert time.monotonic() - t0 < 5.0
    assert pipe.fault() is None
    assert snap["chunks"] > 10 and snap["handoff_dropped_bytes"] == 0 and snap["kernel_drops"] == 0
    px = PixelHits.concat([d for t, d in drain(q) if t == MessageType.PixelData])
    assert len(px) == len(truth.hits)
    for f in ("x", "y", "toa", "tot", "chip"):
        assert np.array_equal(getattr(px, f), getattr(truth.hits, f)), f
    assert pipe._rings == []                                         # released at stop


# ---- MsgRing (EventData to the centroid workers) ------------------------------------------------
def test_msg_ring_pack_unpack_round_trip_and_too_big():
    from tango_tpx.pipeline.shmring import MsgRing
    from tango_tpx.processing.events import Events

    rng = np.random.default_rng(4)
    n = 1001
    ev = Events(np.sort(rng.integers(0, 50, n)).astype(np.int64), rng.integers(0, 256, n).astype(np.uint16),
                rng.integers(0, 256, n).astype(np.uint16), rng.integers(0, 1 << 30, n).astype(np.int64),
                rng.integers(0, 1023, n).astype(np.uint16), rng.integers(0, 1 << 40, n).astype(np.int64))
    ring = MsgRing(2, 64 << 10)
    assert ring.free_slot() == 0
    meta = ring.pack(0, ev)
    ring.acquire(0)
    assert ring.free_slot() == 1
    back = ring.unpack(meta, Events)
    for f in ("trigger_nr", "x", "y", "tof", "tot", "toa"):
        a = getattr(back, f)
        assert a.dtype == getattr(ev, f).dtype and np.array_equal(a, getattr(ev, f)), f
        assert not a.flags.writeable
    empty = ring.unpack(ring.pack(1, Events.empty()), Events)
    assert len(empty) == 0
    ring.acquire(1)
    assert ring.free_slot() == -1
    big = Events.empty(3000)                                    # 3000 * 30 bytes > 64 KiB
    assert MsgRing(1, 64 << 10).pack(0, big) is None
    bad = dict(meta, fields=[["x", "<u2", 10 ** 9, 0]])
    with pytest.raises(ValueError):
        ring.unpack(bad, Events)
    del back, empty, a
    ring.close()


@pytest.mark.timeout(90)
def test_centroids_equal_offline_when_the_msg_ring_is_tiny(monkeypatch):
    """One 64 KiB slot: most EventData messages do not fit or find it busy and go as
    ZeroMQ frames; the centroids must still equal the offline computation."""
    from tango_tpx.pipeline.acquisition import CentroidPipeline
    from tango_tpx.processing.centroids import CentroidCalculator, Centroids
    from tango_tpx.processing.events import Events, PacketProcessor
    from tango_tpx.tpx3.codec import decode_words

    monkeypatch.setattr(acquisition, "MSG_RING_SLOTS", 1)
    monkeypatch.setattr(acquisition, "MSG_RING_SLOT_BYTES", 64 << 10)
    words, _ = simulate(SimConfig(rate_mhits=0.5, duration_s=0.2, seed=9))
    pp = PacketProcessor()
    out = [pp.process(decode_words(words)), pp.flush()]
    expect = CentroidCalculator().process(Events.concat([o.events for o in out]))
    port = free_udp_port()
    q: queue.Queue = queue.Queue()
    pipe = CentroidPipeline(q, ("127.0.0.1", port), None, num_processes=2, chunk_bytes=64 << 10,
                            flush_timeout=0.05)
    pipe.start()
    try:
        send_datagrams(port, split(words.tobytes()), pause_every=16)
        assert wait_for(lambda: pipe.counters.get("words") >= words.size, 60)
    finally:
        pipe.stop()
    assert pipe.fault() is None
    got = Centroids.concat([d for t, d in drain(q) if t == MessageType.CentroidData])
    assert len(got) == len(expect) > 1000
    for f in ("trigger_nr", "x", "y", "tof", "tot_sum", "size"):
        assert np.array_equal(getattr(got, f), getattr(expect, f)), f
