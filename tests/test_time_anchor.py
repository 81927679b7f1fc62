"""Streams taken up mid-way past the 26.8 s rollover: the decoder, the converter and the
armed live pipeline put every word in its true epoch (no 26.84 s jump at the first
global-time pair).  Values are checked against the simulator's ground truth."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tango_tpx.io import convert_file, read_table
from tango_tpx.pipeline.controller import AcquisitionController
from tango_tpx.simulator import SimConfig, SpidrSimulator, simulate
from tango_tpx.tpx3.codec import EPOCH, Decoder, first_global_time, last_global_time
from tango_tpx.tpx3.encode import TPX3_MAGIC
from tango_tpx.tpx3.files import RawFileWriter, Tpx3FileWriter
from tango_tpx.tpx3.units import UNIT_NS

from .conftest import wait_for
from .test_pipeline_helpers import free_udp_port

#: the detector clock starts 0.69 s before the second 30-bit rollover (53.69 s); global-time
#: pairs at 53, 54 and 55 s
START_S = 53.0
TICKS_PER_S = 40_000_000


def _sim(quad: bool):
    return simulate(SimConfig(rate_mhits=0.05, duration_s=3.0, seed=7, trigger_hz=1000.0,
                              start_time_s=START_S, quad=quad))


@pytest.fixture(scope="module", params=[False, True], ids=["single", "quad"])
def stream(request):
    quad = request.param
    words, truth = _sim(quad)
    return quad, words, truth


def _cuts(words: np.ndarray, quad: bool) -> list[int]:
    """Word indices between the first two global-time pairs (before and after the rollover
    at 53.69 s), on a .tpx3 chunk header for a quad stream."""
    top = (words >> np.uint64(56)) & np.uint64(0xFF)
    pairs = np.flatnonzero(top == 0x44)          # a quad has one pair per chip
    a, b = int(pairs[0]), int(pairs[4 if quad else 1])
    cuts = [int(a + f * (b - a)) for f in (0.05, 0.4, 0.6, 0.9)]
    if quad:
        heads = np.flatnonzero((words & np.uint64(0xFFFFFFFF)) == np.uint64(TPX3_MAGIC))
        cuts = [int(heads[np.searchsorted(heads, c)]) for c in cuts]
    return cuts


def _is_data(words: np.ndarray, quad: bool) -> np.ndarray:
    return (words & np.uint64(0xFFFFFFFF)) != np.uint64(TPX3_MAGIC) if quad else np.ones(len(words), bool)


def _n_pixel_words(words: np.ndarray, quad: bool) -> int:
    hdr = words >> np.uint64(60)
    return int(np.count_nonzero(((hdr == 0xA) | (hdr == 0xB)) & _is_data(words, quad)))


def _n_tdc_words(words: np.ndarray, quad: bool) -> int:
    top = (words >> np.uint64(56)) & np.uint64(0xFF)
    return int(np.count_nonzero(((top >> np.uint64(4)) == 0x6) & _is_data(words, quad)))


def test_slices_past_the_rollover_decode_to_the_true_times(stream):
    quad, words, truth = stream
    layout, framing = ("quad", "tpx3") if quad else ("single", "raw")
    assert truth.hits.toa.min() * UNIT_NS * 1e-9 < 2 * EPOCH * 25e-9 < truth.hits.toa.max() * UNIT_NS * 1e-9
    for cut in _cuts(words, quad):
        part = words[cut:]
        n0, t0 = _n_pixel_words(words[:cut], quad), _n_tdc_words(words[:cut], quad)
        # one piece: the look-ahead anchors on the slice's first pair (54 s)
        d = Decoder(framing, layout).decode(part)
        np.testing.assert_array_equal(d.pixels.toa, truth.hits.toa[n0:])
        np.testing.assert_array_equal(d.pixels.x, truth.hits.x[n0:])
        np.testing.assert_array_equal(d.triggers.time, truth.triggers.time[t0:])
        assert d.counts.ambiguous_time == 0 and d.longtime == truth.global_times[-1]
        # small chunks, the first without a pair: an outside anchor a few s off is enough
        step = 1024
        assert first_global_time(part[:step], framing) < 0
        for off_s in (-5.0, 0.0, 5.0):
            dec = Decoder(framing, layout)
            dec.anchor(int((START_S + 0.5 + off_s) * TICKS_PER_S))
            parts = [dec.decode(part[i:i + step]) for i in range(0, len(part), step)]
            np.testing.assert_array_equal(np.concatenate([p.pixels.toa for p in parts]), truth.hits.toa[n0:])
            np.testing.assert_array_equal(np.concatenate([p.triggers.time for p in parts]),
                                          truth.triggers.time[t0:])


def test_global_time_scans_and_anchor_rules():
    words, truth = _sim(False)
    g = truth.global_times
    assert first_global_time(words) == g[0] and last_global_time(words) == g[-1]
    top = (words >> np.uint64(56)) & np.uint64(0xFF)
    lsb, msb = np.flatnonzero(top == 0x44), np.flatnonzero(top == 0x45)
    assert last_global_time(words[: msb[1]]) == g[0]               # the second pair is not complete
    assert first_global_time(words[lsb[0] + 1:]) == g[1]           # an MSB without its LSB is no pair
    assert first_global_time(words[:0]) == -1 == last_global_time(words[:1])
    # a longtime given by the caller wins over the look-ahead
    assert Decoder(longtime=5 * EPOCH).look_ahead(words) == -1
    assert Decoder().look_ahead(words[lsb[0] + 1:]) == g[1]
    # anchor() is ignored once a pixel was decoded: the chain of the stream goes on
    part = words[lsb[0] + 100: lsb[1]]
    a, b = Decoder(), Decoder()
    a.decode(part[:50])
    b.decode(part[:50])
    b.anchor(7 * EPOCH)
    np.testing.assert_array_equal(a.decode(part[50:]).pixels.toa, b.decode(part[50:]).pixels.toa)


def _tdc1_rising(words: np.ndarray, quad: bool) -> int:
    top = (words >> np.uint64(56)) & np.uint64(0xFF)
    return int(np.count_nonzero((top == 0x6F) & _is_data(words, quad)))


def test_a_recording_started_mid_stream_converts_like_the_whole_stream(stream, tmp_path):
    quad, words, truth = stream
    cut = _cuts(words, quad)[1]                  # 53.4 s: a rollover before the first pair
    paths = {}
    for name, w in (("whole", words), ("slice", words[cut:])):
        if quad:
            src = tmp_path / f"{name}.tpx3"
            with Tpx3FileWriter(src) as f:
                f.write_framed(w)
        else:
            src = tmp_path / f"{name}.raw"
            with RawFileWriter(src, time_ns=1_700_000_000_000_000_000) as f:
                f.write(w)
        out = tmp_path / f"{name}.h5"
        # chunks of 1024 words: the first chunk of the slice holds no global-time pair
        convert_file(src, out, event_window=(0.0, 1e-3), centroiding=False, chunk_words=1024)
        paths[name] = out
    k0 = _tdc1_rising(words[:cut], quad)
    tp = read_table(paths["slice"], "timing/timepix")
    t_true = truth.trigger_time[k0:] * UNIT_NS * 1e-9
    assert len(tp["event trigger"]) == len(t_true) > 1000
    np.testing.assert_allclose(tp["event trigger"], t_true, rtol=0, atol=1e-12)
    assert np.all(np.diff(tp["event trigger"]) > 0)
    t1 = read_table(paths["slice"], "triggers/trigger1")["time"]
    assert np.all(np.abs(t1) > START_S)
    # events from the slice's second trigger on are those of the whole stream
    a, b = read_table(paths["whole"], "raw"), read_table(paths["slice"], "raw")
    ka = a["trigger nr"] >= k0 + 1
    kb = b["trigger nr"] >= 1
    np.testing.assert_array_equal(b["trigger nr"][kb] + k0, a["trigger nr"][ka])
    for col in ("x", "y", "tof", "tot"):
        np.testing.assert_array_equal(b[col][kb], a[col][ka], err_msg=col)
    assert b["tof"].min() >= 0 and b["tof"].max() <= 1e-3


@pytest.mark.timeout(180)
def test_time_bounded_acquisitions_past_the_rollover_on_one_armed_pipeline():
    """The simulator streams from detector time 30 s; time-bounded acquisitions taken up
    while it runs (the first after the receiver saw global times while idle, the next ones
    back to back; the last spans a global-time pair for sure) each hold their detector time
    in the right epoch and one trigger per ms."""
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    results: list = []
    ctl.session.on_done = results.append
    ctl.arm()
    stop = threading.Event()
    sim = SpidrSimulator(SimConfig(rate_mhits=0.05, duration_s=8.0, seed=5, trigger_hz=1000.0,
                                   start_time_s=30.0))
    sender = threading.Thread(target=sim.send_udp, args=("127.0.0.1", port),
                              kwargs={"stop_event": stop}, daemon=True)
    try:
        sender.start()
        time.sleep(1.3)                           # the receiver sees the pairs of 30 s and 31 s
        spans = []
        for k, time_s in enumerate((0.5, 0.5, 1.2)):
            ctl.session.begin(time_s=time_s)
            assert wait_for(lambda: len(results) > k, 20), ctl.fault()
            r = results[-1]
            assert r.error is None and r.reason == "time", r
            n = round(time_s * 1000)
            assert n - 1 <= r.counts["triggers"] <= n + 1, r.counts
            c = ctl.session.counters
            t0_s = c.get("acq_t_start") * UNIT_NS * 1e-9
            t1_s = c.get("acq_t_last") * UNIT_NS * 1e-9
            assert 30.0 < t0_s < t1_s < 38.0, (t0_s, t1_s)
            assert time_s - 0.01 <= ctl.session.elapsed_s() <= time_s + 0.02
            spans.append((t0_s, t1_s))
        # one after the other in detector time, as the host clock took them
        assert all(spans[i][1] < spans[i + 1][0] < spans[i][1] + 2.0 for i in range(2))
        assert spans[0][0] > 31.0 and int(spans[2][0]) < int(spans[2][1])
    finally:
        stop.set()
        sender.join(10)
        ctl.close()
