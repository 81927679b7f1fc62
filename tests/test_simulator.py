"""SPIDR simulator: determinism, truth consistency, word order, rollover, counters, UDP, files, CLI."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from tango_tpx.simulator import SimConfig, SpidrSimulator, Truth, simulate
from tango_tpx.simulator import cli as sim_cli
from tango_tpx.tpx3.files import inspect_file, iter_words, read_words
from tango_tpx.tpx3.units import UNIT_NS

EPOCH_UNITS = (1 << 30) << 12  # the 30-bit coarse counter rolls over here (fine units)
SMALL = dict(rate_mhits=0.2, duration_s=0.02, seed=3)


def hdr_of(words: np.ndarray) -> np.ndarray:
    return (words >> np.uint64(60)).astype(np.int64)


def sort_hits(h):
    return h.take(np.lexsort((h.tot, h.y, h.x, h.chip, h.toa)))


def spec_pixels(words: np.ndarray):
    """Chip-local x, double column and 30-bit coarse time of pixel words (spec masks)."""
    dcol = ((words >> np.uint64(52)) & np.uint64(0xFE)).astype(np.int64)
    coarse = (((words & np.uint64(0xFFFF)) << np.uint64(14)) | ((words >> np.uint64(30)) & np.uint64(0x3FFF))).astype(np.int64)
    return dcol, coarse


@pytest.fixture(scope="module")
def small():
    return simulate(SimConfig(**SMALL, tdc2=True))


def test_deterministic(small):
    words, truth = small
    again, truth2 = simulate(SimConfig(**SMALL, tdc2=True))
    assert np.array_equal(words, again)
    assert np.array_equal(truth.hits.toa, truth2.hits.toa)
    other, _ = simulate(SimConfig(**dict(SMALL, seed=4), tdc2=True))
    assert not np.array_equal(words[: len(other)], other[: len(words)])
    # iter_blocks gives the same stream in pieces
    blocks = list(SpidrSimulator(SimConfig(**SMALL, tdc2=True)).iter_blocks())
    assert len(blocks) == 2 and np.array_equal(np.concatenate(blocks), words)


def test_counts_match_truth(small):
    words, truth = small
    h = hdr_of(words)
    assert (h == 0xB).sum() == len(truth.hits)
    assert (h == 0x6).sum() == len(truth.triggers)
    n_trig = len(truth.trigger_time)
    assert n_trig == 20  # 1 kHz for 20 ms
    assert (truth.triggers.channel == 1).sum() == 2 * n_trig  # rising + falling
    assert (truth.triggers.channel == 2).sum() == 2 * n_trig  # tdc2=True
    # one global-time pair at the start (+ its two 0x71 control words)
    assert (words[:4] >> np.uint64(56)).tolist() == [0x44, 0x71, 0x45, 0x71]
    assert len(truth.global_times) == 1 and truth.n_control_words == 2
    # per-hit truth is consistent with the particle table
    sig = truth.particle >= 0
    assert np.array_equal(sig, truth.trigger_nr >= 0)
    n_hits = np.bincount(truth.particle[sig], minlength=len(truth.particles))
    assert np.array_equal(n_hits, truth.particles.n_hits)
    tot_sum = np.bincount(truth.particle[sig], weights=truth.hits.tot[sig], minlength=len(truth.particles))
    assert np.array_equal(tot_sum, truth.particles.tot_sum)
    assert np.array_equal(truth.particles.trigger_nr[truth.particle[sig]], truth.trigger_nr[sig])
    # ToT-weighted centroid recomputed independently
    w = truth.hits.tot[sig].astype(float)
    cx = np.bincount(truth.particle[sig], weights=w * truth.hits.x[sig]) / tot_sum
    assert np.allclose(cx, truth.particles.x)
    # hit rate and noise share close to the request (Poisson: 4000 hits expected)
    assert abs(len(truth.hits) - 4000) < 600  # sd ~170 (particle counts and sizes vary)
    assert abs((~sig).sum() - 200) < 60


def test_tof_peaks_and_trigger_association(small):
    _, truth = small
    p = truth.particles
    tof_ns = p.tof_true * UNIT_NS
    assert np.all(np.abs(tof_ns[p.electron] - 30) < 15)
    ions = tof_ns[~p.electron]
    near = np.min(np.abs(ions[:, None] - np.array([1500, 2800, 4200, 6100])[None, :]), axis=1)
    assert near.max() < 6 * 25
    # every signal hit lies after its trigger, within the event window
    sig = truth.particle >= 0
    dt = truth.hits.toa[sig] - truth.trigger_time[truth.trigger_nr[sig]]
    assert dt.min() > 0 and dt.max() * UNIT_NS < 7000
    # time walk: low-ToT pixels of a cluster come later on average
    low = truth.hits.tot[sig] <= 5
    rel = truth.hits.toa[sig] - (truth.trigger_time[truth.trigger_nr[sig]] + p.tof_true[truth.particle[sig]])
    assert rel[low].mean() > rel[~low].mean() + 5 / UNIT_NS


def test_clusters_do_not_touch(small):
    _, truth = small
    sig = truth.particle >= 0
    h = truth.hits.take(sig)
    part = truth.particle[sig]
    trig = truth.trigger_nr[sig]
    sep = 500 / UNIT_NS
    for t in np.unique(trig):
        m = trig == t
        x, y, toa, pp = h.x[m].astype(int), h.y[m].astype(int), h.toa[m], part[m]
        near = (np.abs(x[:, None] - x[None, :]) <= 1) & (np.abs(y[:, None] - y[None, :]) <= 1) \
            & (np.abs(toa[:, None] - toa[None, :]) < sep)
        assert not np.any(near & (pp[:, None] != pp[None, :]))
    # but some clusters are close: not trivially far apart
    p = truth.particles
    m = p.trigger_nr == p.trigger_nr[0]
    d = np.hypot(p.x[m][:, None] - p.x[m][None, :], p.y[m][:, None] - p.y[m][None, :])
    assert np.sort(d + np.eye(m.sum()) * 1e9, axis=1)[:, 0].min() < 8


def test_word_order_per_double_column(small):
    words, truth = small
    px = words[hdr_of(words) == 0xB]
    dcol, coarse = spec_pixels(px)
    toa = truth.hits.toa
    assert np.any(np.diff(toa) < 0)  # not globally time-sorted
    # readout blocks of 100 us (aligned to the start, t = 0) come out one after the other ...
    block = toa // int(round(100e3 / UNIT_NS))
    assert np.all(np.diff(block) >= 0)
    # ... and within a block the words run by double column, then time
    n_blocks = 0
    for b in np.unique(block):
        m = block == b
        d, t = dcol[m], toa[m]
        assert np.all(np.diff(d) >= 0)
        assert np.all(np.diff(t)[np.diff(d) == 0] >= 0)
        n_blocks += 1
    assert n_blocks > 100
    # the truth time is what the word encodes: T = (toa + (FToA << 8) - (k << 8)) >> 12
    ftoa = ((px >> np.uint64(16)) & np.uint64(0xF)).astype(np.int64)
    k = (dcol // 2) % 16
    k[k == 0] = 16
    assert np.array_equal(((toa + (ftoa << 8) - (k << 8)) >> 12) & ((1 << 30) - 1), coarse)


def test_decoder_reproduces_truth_single(small):
    codec = pytest.importorskip("tango_tpx.tpx3.codec")
    words, truth = small
    d = codec.Decoder(framing="raw", layout="single").decode(words)
    a, b = sort_hits(d.pixels), sort_hits(truth.hits)
    for f in ("x", "y", "toa", "tot", "chip"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    for f in ("channel", "rising", "time", "counter", "chip"):
        assert np.array_equal(getattr(d.triggers, f), getattr(truth.triggers, f)), f
    assert d.counts.control == truth.n_control_words and d.counts.other == 0 and d.counts.ambiguous_time == 0


def test_quad_decodes_and_spans_chips():
    codec = pytest.importorskip("tango_tpx.tpx3.codec")
    words, truth = simulate(SimConfig(rate_mhits=0.3, duration_s=0.01, seed=8, quad=True, payload_bytes=1024))
    info_chunks = words[(words & np.uint64(0xFFFFFFFF)) == np.uint64(0x33585054)]
    assert len(info_chunks) > 4
    assert np.all(((info_chunks >> np.uint64(48)) & np.uint64(0xFFFF)) <= 1016)
    assert np.bincount(truth.hits.chip, minlength=4).min() > 100
    assert truth.hits.x.max() <= 513 and not np.isin(truth.hits.x, [256, 257]).any()
    d = codec.Decoder(framing="tpx3", layout="quad").decode(words)
    a, b = sort_hits(d.pixels), sort_hits(truth.hits)
    for f in ("x", "y", "toa", "tot", "chip"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert np.array_equal(d.triggers.time, truth.triggers.time)
    assert d.counts.framing_errors == 0 and d.counts.global_lsb == 4  # one pair per chip


def test_rollover_near_26_8_s():
    codec = pytest.importorskip("tango_tpx.tpx3.codec")
    cfg = SimConfig(rate_mhits=0.02, duration_s=0.6, seed=1, trigger_hz=200, start_time_s=26.5)
    words, truth = simulate(cfg)
    toa = truth.hits.toa
    assert toa.min() < EPOCH_UNITS < toa.max()  # the stream crosses the rollover
    _, coarse = spec_pixels(words[hdr_of(words) == 0xB])
    assert coarse.max() > (1 << 30) - 5_000_000 and coarse.min() < 5_000_000  # 30-bit field wrapped
    d = codec.Decoder().decode(words)
    a, b = sort_hits(d.pixels), sort_hits(truth.hits)
    assert np.array_equal(a.toa, b.toa) and np.array_equal(a.x, b.x)
    assert np.array_equal(d.triggers.time, truth.triggers.time)


def test_trigger_counter_wraps():
    cfg = SimConfig(rate_mhits=0.05, duration_s=0.05, seed=2, trigger_hz=50_000, noise_fraction=0.5)
    words, truth = simulate(cfg)
    tr = truth.triggers
    rise1 = tr.take((tr.channel == 1) & tr.rising)
    fall1 = tr.take((tr.channel == 1) & ~tr.rising)
    n = len(rise1)
    assert n == 2500
    # as on real captures the counter counts every edge: rising 2k, falling 2k + 1, modulo 4096
    assert np.array_equal(rise1.counter, (2 * np.arange(n)) % 4096)
    assert np.array_equal(fall1.counter, (2 * np.arange(n) + 1) % 4096)
    assert np.any(np.diff(rise1.counter.astype(int)) < 0)  # wrapped
    assert np.array_equal(rise1.time, truth.trigger_time)
    # period 20 us: falling edge at most half a period later
    assert np.all((fall1.time - rise1.time) * UNIT_NS <= 10_000)
    # rising edges only: counter steps by one
    _, t2 = simulate(SimConfig(rate_mhits=0.01, duration_s=0.01, seed=2, trigger_hz=500_000, falling_edges=False))
    assert t2.triggers.counter[4095] == 4095 and t2.triggers.counter[4096] == 0


def test_no_triggers_all_noise():
    words, truth = simulate(SimConfig(rate_mhits=0.1, duration_s=0.01, seed=1, trigger_hz=0))
    assert len(truth.triggers) == 0 and len(truth.particles) == 0
    assert np.all(truth.particle == -1) and abs(len(truth.hits) - 1000) < 150


def test_config_errors(tmp_path):
    for bad in (dict(duration_s=0), dict(payload_bytes=100), dict(noise_fraction=2), dict(image="x")):
        with pytest.raises(ValueError):
            SpidrSimulator(SimConfig(**bad))
    with pytest.raises(ValueError, match="tpx3"):
        SpidrSimulator(SimConfig(quad=True, duration_s=0.001)).write_file(tmp_path / "q.raw")
    with pytest.raises(ValueError, match=".raw or .tpx3"):
        SpidrSimulator(SimConfig(duration_s=0.001)).write_file(tmp_path / "q.bin")


def test_write_raw_and_tpx3_files(tmp_path):
    cfg = SimConfig(rate_mhits=0.1, duration_s=0.02, seed=5, tdc2=True)
    words, truth = simulate(cfg)
    res = SpidrSimulator(cfg).write_file(tmp_path / "a.raw", truth_path=tmp_path / "a.npz", time_ns=1_700_000_000 * 10**9)
    info = inspect_file(tmp_path / "a.raw")
    assert info.header_time_ns == 1_700_000_000 * 10**9 and info.n_words == len(words)
    assert res["bytes"] == 8 + 8 * len(words) == (tmp_path / "a.raw").stat().st_size
    assert np.array_equal(np.concatenate(list(iter_words(tmp_path / "a.raw", chunk_words=1000))), words)
    t2 = Truth.load(tmp_path / "a.npz")
    assert np.array_equal(t2.hits.toa, truth.hits.toa) and np.array_equal(t2.particles.x, truth.particles.x)
    assert np.array_equal(t2.triggers.counter, truth.triggers.counter)
    with pytest.raises(FileExistsError):
        SpidrSimulator(cfg).write_file(tmp_path / "a.raw")
    # single-chip .tpx3: chunk headers around the same words
    SpidrSimulator(cfg).write_file(tmp_path / "a.tpx3")
    info = inspect_file(tmp_path / "a.tpx3")
    assert info.framing == "tpx3"
    tw = read_words(tmp_path / "a.tpx3")
    is_hdr = np.zeros(len(tw), bool)
    i = 0
    while i < len(tw):
        is_hdr[i] = True
        assert int(tw[i]) & 0xFFFFFFFF == 0x33585054 and (int(tw[i]) >> 48) <= 8192 - 8
        i += 1 + (int(tw[i]) >> 48) // 8
    assert np.array_equal(tw[~is_hdr], words)


@pytest.mark.timeout(60)
def test_udp_loopback_receives_everything():
    cfg = SimConfig(rate_mhits=0.2, duration_s=0.05, seed=9)
    words, _ = simulate(cfg)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    port = rx.getsockname()[1]
    got: list[bytes] = []
    total = 8 * len(words)

    def receive():
        n = 0
        try:
            while n < total:
                data = rx.recv(65536)
                got.append(data)
                n += len(data)
        except socket.timeout:
            pass

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    try:
        res = SpidrSimulator(cfg).send_udp("127.0.0.1", port, payload_bytes=4096)
        th.join(10)
    finally:
        rx.close()
    assert res["bytes"] == total and res["datagrams"] == len(got)
    assert all(len(g) % 8 == 0 and len(g) <= 4096 for g in got)
    assert np.array_equal(np.frombuffer(b"".join(got), "<u8"), words)
    assert res["hits"] == (hdr_of(words) == 0xB).sum() and res["triggers"] == 50
    assert 0.03 < res["seconds"] < 5  # paced to 50 ms of detector time


@pytest.mark.timeout(30)
def test_udp_stops_on_event():
    cfg = SimConfig(rate_mhits=0.01, duration_s=30.0, seed=1)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    res = SpidrSimulator(cfg).send_udp("127.0.0.1", 9, stop_event=stop)  # discard port: nobody listens
    assert res["stopped"] and res["seconds"] < 3


def test_cli_file_and_summary(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sim_cli.add_parser(sub)
    out = tmp_path / "c.raw"
    args = parser.parse_args(["simulate", "--rate", "0.1", "--duration", "0.01", "--seed", "7",
                              "--tdc2", "--output", str(out), "--truth", str(tmp_path / "c.npz")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    truth = Truth.load(tmp_path / "c.npz")
    assert f"{len(truth.hits)} hits" in text and "10 triggers" in text
    words, _ = simulate(SimConfig(rate_mhits=0.1, duration_s=0.01, seed=7, tdc2=True))
    assert np.array_equal(read_words(out), words)
    args = parser.parse_args(["simulate", "--rate", "0.1", "--duration", "0.01", "--seed", "7", "--output", str(out)])
    assert args.func(args) == 1  # exists
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--rate", "1", "--duration", "1", "--seed", "1", "--udp", "nohost"])
    with pytest.raises(SystemExit):  # --udp and --output are exclusive
        parser.parse_args(["simulate", "--rate", "1", "--duration", "1", "--seed", "1", "--udp", "h:1", "--output", "x.raw"])


def test_quad_tpx3_file_decodes(tmp_path):
    codec = pytest.importorskip("tango_tpx.tpx3.codec")
    cfg = SimConfig(rate_mhits=0.2, duration_s=0.01, seed=4, quad=True, tdc2=True)
    sim = SpidrSimulator(cfg)
    sim.write_file(tmp_path / "q.tpx3", truth_path=tmp_path / "q.npz")
    info = inspect_file(tmp_path / "q.tpx3")
    assert (info.kind, info.framing, info.trailing_bytes) == ("tpx3", "tpx3", 0)
    truth = Truth.load(tmp_path / "q.npz")
    dec = codec.Decoder(framing="tpx3", layout="quad")
    parts = [dec.decode(w) for w in iter_words(tmp_path / "q.tpx3", chunk_words=777)]  # cut anywhere
    pix = type(parts[0].pixels).concat([p.pixels for p in parts])
    a, b = sort_hits(pix), sort_hits(truth.hits)
    for f in ("x", "y", "toa", "tot", "chip"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert sum(len(p.triggers) for p in parts) == len(truth.triggers) == 40
    assert sim.stats["hits"] == len(truth.hits)


@pytest.mark.timeout(60)
def test_udp_quad_datagrams_are_whole_chunks():
    cfg = SimConfig(rate_mhits=0.1, duration_s=0.01, seed=6, quad=True, payload_bytes=2048)
    words, _ = simulate(cfg)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    try:
        res = SpidrSimulator(cfg).send_udp("127.0.0.1", rx.getsockname()[1], as_fast_as_possible=True)
        got = [rx.recv(65536) for _ in range(res["datagrams"])]
    finally:
        rx.close()
    assert np.array_equal(np.frombuffer(b"".join(got), "<u8"), words)
    for g in got:  # every datagram starts with a chunk header and holds whole chunks
        assert g[:4] == b"TPX3" and len(g) <= 2048
        i = 0
        while i < len(g):
            assert g[i:i + 4] == b"TPX3"
            i += 8 + int.from_bytes(g[i + 6:i + 8], "little")
        assert i == len(g)


def test_config_json_roundtrip():
    cfg = SimConfig(rate_mhits=2.5, seed=11, quad=True, tof_peaks_ns=((1000.0, 5.0, 1.0),))
    assert SimConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.timeout(120)
def test_tango_tpx_simulate_command(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cmd.tpx3"
    proc = subprocess.run([sys.executable, "-m", "tango_tpx.cli", "simulate", "--rate", "0.05", "--duration", "0.01",
                           "--seed", "2", "--quad", "--output", str(out)], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert "hits" in proc.stdout and "triggers" in proc.stdout
    words, _ = simulate(SimConfig(rate_mhits=0.05, duration_s=0.01, seed=2, quad=True))
    assert np.array_equal(read_words(out), words)


def test_rate_is_honoured():
    sim = SpidrSimulator(SimConfig(rate_mhits=1.0, duration_s=0.1, seed=12))
    n = sum(int((hdr_of(w) == 0xB).sum()) for w in sim.iter_blocks())
    assert n == sim.stats["hits"]
    assert abs(n - 100_000) < 3_000  # sd ~900
    assert abs(sim.stats["noise_hits"] - 5_000) < 300
    assert sim.stats["dropped_particles"] == 0 and sim.stats["triggers"] == 100
