"""Live 2x2 quad acquisition: real UDP on loopback, real processes, .tpx3-framed stream."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from tango_tpx.pipeline.acquisition import PixelPipeline
from tango_tpx.pipeline.controller import AcquisitionController
from tango_tpx.pipeline.messages import MessageType
from tango_tpx.simulator import SimConfig, simulate
from tango_tpx.tpx3.codec import Decoder, stream_framing
from tango_tpx.tpx3.hits import PixelHits

from .conftest import wait_for
from .test_pipeline_helpers import drain, free_udp_port, send_datagrams, split


@pytest.fixture(scope="module")
def quad_sim():
    """0.2 s of a 0.5 Mhits/s quad stream (~100k hits over four chips)."""
    return simulate(SimConfig(rate_mhits=0.5, duration_s=0.2, seed=11, quad=True))


def _quadrant_counts(x: np.ndarray, y: np.ndarray) -> list[int]:
    left, low = x < 258, y < 258
    return [int(np.sum(left & low)), int(np.sum(~left & low)), int(np.sum(left & ~low)),
            int(np.sum(~left & ~low))]


def test_stream_framing_by_layout():
    assert stream_framing("single") == "raw" and stream_framing("quad") == "tpx3"
    with pytest.raises(ValueError, match="'single' or 'quad'"):
        stream_framing("2x2")


@pytest.mark.timeout(60)
def test_live_quad_hits_equal_truth_in_all_four_quadrants(quad_sim):
    words, truth = quad_sim
    n_headers = int(np.sum((words & 0xFFFFFFFF) == 0x33585054))  # b"TPX3" little-endian
    assert n_headers > 0
    port = free_udp_port()
    q: queue.Queue = queue.Queue()
    pipe = PixelPipeline(q, ("127.0.0.1", port), None, layout="quad", flush_timeout=0.05,
                         chunk_bytes=256 << 10)
    pipe.start()
    try:
        send_datagrams(port, split(words.tobytes()))
        assert wait_for(lambda: pipe.counters.get("words") >= words.size, 30), pipe.counters.snapshot()
    finally:
        pipe.stop()
    assert pipe.fault() is None
    px = PixelHits.concat([d for t, d in drain(q) if t == MessageType.PixelData])
    assert len(px) == len(truth.hits)
    for f in ("x", "y", "toa", "tot", "chip"):
        assert np.array_equal(getattr(px, f), getattr(truth.hits, f)), f
    counts = _quadrant_counts(px.x, px.y)
    assert min(counts) > 0.15 * len(px), counts
    c = pipe.counters.snapshot()
    assert c["malformed_words"] == 0 and c["hits"] == len(truth.hits)
    # the same words decoded offline (file path) give the same hits
    off = Decoder(framing="tpx3", layout="quad").decode(words)
    assert np.array_equal(off.pixels.x, px.x) and np.array_equal(off.pixels.toa, px.toa)


@pytest.mark.timeout(60)
def test_controller_quad_preview_has_all_quadrants(quad_sim):
    words, truth = quad_sim
    port = free_udp_port()
    with AcquisitionController(udp_port=port, layout="quad", preview_period_s=0.2) as ctl:
        ctl.start()
        try:
            send_datagrams(port, split(words.tobytes()))
            assert wait_for(lambda: ctl.counters()["hits"] >= len(truth.hits), 30), ctl.counters()
            time.sleep(0.5)                         # one preview period after the last hit
            image = ctl.preview()[0]
        finally:
            ctl.stop()
        c = ctl.counters()
    assert image.shape == (516, 516)
    assert c["malformed_words"] == 0 and c["hits"] == len(truth.hits)
    ys, xs = np.nonzero(image)
    assert all(n > 0 for n in _quadrant_counts(xs, ys)), _quadrant_counts(xs, ys)
