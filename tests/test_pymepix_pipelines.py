"""pymepix face, live: the real capture as one UDP datagram through PixelPipeline and
CentroidPipeline (real loopback socket, real processes), unpacked the pymepix way and
compared with an independent computation from the format notes; the logic classes
(PacketProcessor, CentroidCalculator) give the same values as the pipelines."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time

import numpy as np
import pytest

from tango_tpx.device.database import free_port
from tango_tpx.processing.acquisition import CentroidPipeline, PixelPipeline
from tango_tpx.processing.datatypes import MessageType
from tango_tpx.processing.logic.centroid_calculator import CentroidCalculator
from tango_tpx.processing.logic.packet_processor import PacketProcessor

from .conftest import CAPTURES, wait_until
from .test_convert import spec_correct, spec_read_words

CAPTURE = CAPTURES / "centroid_pipeline_test.raw"
needs_capture = pytest.mark.skipif(not CAPTURE.exists(), reason=f"real SPIDR capture not found: {CAPTURE}")
LONGTIME = 2233861246990            # 25 ns ticks, as in pymepix's test of this capture
UNIT_S = 25 / 4096 * 1e-9
NS = 1e-9
WINDOW_NS = 200.0                   # the live fast clustering's time window


# ------------------------------------------------------------------------------------------
# independent reference: numpy straight from the format notes, pymepix's live longtime rule
# (every word corrected with the one longtime; global-time words are not used)
# ------------------------------------------------------------------------------------------
def spec_decode_fixed_longtime(words: np.ndarray, L: int) -> dict:
    hdr = ((words >> np.uint64(60)) & np.uint64(0xF)).astype(np.int64)
    sub = ((words >> np.uint64(56)) & np.uint64(0xF)).astype(np.int64)
    w = (words & np.uint64(0x0FFFFFFFFFFFFFFF)).astype(np.int64)
    p = w[(hdr == 0xA) | (hdr == 0xB)]
    dcol = (p & 0x0FE0000000000000) >> 52
    spix = (p & 0x001F800000000000) >> 45
    pix = (p & 0x0000700000000000) >> 44
    col, row = dcol + pix // 4, spix + (pix & 3)
    data = (p & 0x00000FFFFFFF0000) >> 16
    coarse = (p & 0xFFFF) << 14 | ((data >> 14) & 0x3FFF)
    T = spec_correct(coarse, np.full(len(p), L, np.int64))
    k = (col // 2) % 16
    k = np.where(k == 0, 16, k)
    toa = (T << 12) - ((data & 0xF) << 8) + (k << 8)
    tot = (data >> 4) & 0x3FF
    tm = ((hdr == 6) | (hdr == 4)) & (sub == 0xF)               # TDC1 rising edges
    t = w[tm]
    f = (t >> 5) & 0xF
    t = t[(f >= 1) & (f <= 12)]
    f = (t >> 5) & 0xF
    fine = ((f - 1) << 9) // 12
    trig = (spec_correct((t >> 12) & 0xFFFFFFFF, np.full(len(t), L, np.int64)) << 12) + ((t & 0xE00) | (fine & 0x1FF))
    return dict(x=col, y=row, toa=toa, tot=tot, trig=np.sort(trig))


def spec_events(d: dict, window_s: tuple[float, float]) -> dict:
    idx = np.searchsorted(d["trig"], d["toa"], side="right") - 1
    tof = d["toa"] - d["trig"][np.maximum(idx, 0)]
    ok = (idx >= 0) & (tof * UNIT_S >= window_s[0]) & (tof * UNIT_S <= window_s[1])
    return dict(nr=idx[ok], x=d["x"][ok], y=d["y"][ok], tof=tof[ok], tot=d["tot"][ok])


def spec_centroids(ev: dict) -> np.ndarray:
    """Connected components per trigger (8-neighbourhood, |dt| <= 200 ns, ToT > 0, >= 3 hits),
    ToT-weighted x, y, tof; rows as pymepix: nr, x, y, tof s, tot avg ns, tot max ns, size."""
    win = WINDOW_NS / (25 / 4096)
    rows = []
    for nr in np.unique(ev["nr"]):
        m = np.flatnonzero((ev["nr"] == nr) & (ev["tot"] > 0))
        parent = list(range(len(m)))

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i
        x, y, t, tot = (ev[k][m].astype(np.int64) for k in ("x", "y", "tof", "tot"))
        for i in range(len(m)):
            for j in range(i):
                if abs(x[i] - x[j]) <= 1 and abs(y[i] - y[j]) <= 1 and abs(t[i] - t[j]) <= win:
                    parent[find(i)] = find(j)
        roots = np.array([find(i) for i in range(len(m))])
        for r in np.unique(roots):
            c = roots == r
            if c.sum() < 3:
                continue
            wsum = tot[c].sum()
            rows.append([nr, (x[c] * tot[c]).sum() / wsum, (y[c] * tot[c]).sum() / wsum,
                         (t[c] * tot[c]).sum() / wsum * UNIT_S, tot[c].mean() * 25, tot[c].max() * 25, c.sum()])
    out = np.array(rows, np.float64).reshape(-1, 7).T
    return out[:, np.lexsort((out[3], out[0]))]


@pytest.fixture(scope="module")
def reference():
    words = spec_read_words(CAPTURE)
    return words, spec_decode_fixed_longtime(words, LONGTIME)


# ------------------------------------------------------------------------------------------
# the pipelines, run once per module
# ------------------------------------------------------------------------------------------
def run_pipeline(make, expect: dict[MessageType, int], timeout: float = 150.0) -> dict:
    """Start the pipeline, send the capture (without its 8-byte header) as one datagram,
    wait until ``expect`` rows of each message type arrived, stop; returns type -> payloads."""
    q = mp.Queue()
    port = free_port(kind=socket.SOCK_DGRAM)
    pipe = make(q, ("127.0.0.1", port), mp.Value("L", LONGTIME))
    got: dict = {}

    def rows(t):
        return sum(np.asarray(d).shape[-1] if t == MessageType.CentroidData else len(d[0]) for d in got.get(t, []))

    def drained() -> bool:
        while not q.empty():
            t, d = q.get()
            got.setdefault(t, []).append(d)
        return all(rows(t) >= n for t, n in expect.items())

    pipe.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(CAPTURE.read_bytes()[8:], ("127.0.0.1", port))
        # the decoder holds the last event until the stream ends: stop, then collect the rest
        wait_until(lambda: pipe.counters.get("hits") == 1858, timeout, "the capture to be decoded")
    finally:
        t0 = time.monotonic()
        pipe.stop()
        assert time.monotonic() - t0 < 5.0
    assert pipe.fault() is None
    # generous: a worker that meets a new dtype signature compiles its kernels first
    wait_until(drained, 60.0, f"messages {expect}")
    return got


def cat(payloads: list, n: int) -> list[np.ndarray]:
    return [np.concatenate([p[i] for p in payloads]) for i in range(n)]


@pytest.fixture(scope="module")
def pixel_run(reference):
    _, d = reference
    n_ev = len(spec_events(d, (0, 0.001))["nr"])
    got = run_pipeline(lambda q, a, lt: PixelPipeline(q, a, lt, use_event=True),
                       {MessageType.PixelData: 1858, MessageType.EventData: n_ev})
    return got


@pytest.fixture(scope="module")
def centroid_run(reference):
    _, d = reference
    ev = spec_events(d, (0, 1.0))
    n_c = spec_centroids(ev).shape[1]
    # pymepix's constructor; the event window (ours, keyword) widened so that clusters exist
    got = run_pipeline(lambda q, a, lt: CentroidPipeline(q, a, lt, event_window=(0, 1.0)),
                       {MessageType.PixelData: 1858, MessageType.EventData: len(ev["nr"]),
                        MessageType.CentroidData: n_c})
    return got


def check_pixels(got: dict, d: dict) -> None:
    x, y, toa, tot = cat(got[MessageType.PixelData], 4)          # pymepix: x, y, toa, tot = data
    np.testing.assert_array_equal(x, d["x"])
    np.testing.assert_array_equal(y, d["y"])
    np.testing.assert_array_equal(tot, d["tot"] * 25)            # ns
    assert np.max(np.abs(toa - d["toa"] * UNIT_S)) <= 1 * NS      # s, longtime-extended clock
    assert abs(toa[0] - 55835.4) < 0.1                            # the longtime's epoch, not the stream's


def check_events(got: dict, d: dict, window: tuple[float, float]) -> None:
    ref = spec_events(d, window)
    nr, x, y, tof, tot = cat(got[MessageType.EventData], 5)      # trigger, x, y, tof, tot = data
    o = np.lexsort((y, x, tof, nr))
    r = np.lexsort((ref["y"], ref["x"], ref["tof"], ref["nr"]))
    assert len(nr) == len(ref["nr"]) > 0
    np.testing.assert_array_equal(nr[o], ref["nr"][r])
    np.testing.assert_array_equal(x[o], ref["x"][r])
    np.testing.assert_array_equal(y[o], ref["y"][r])
    np.testing.assert_array_equal(tot[o], ref["tot"][r] * 25)
    assert np.max(np.abs(tof[o] - ref["tof"][r] * UNIT_S)) <= 1 * NS


@needs_capture
@pytest.mark.timeout(300)
def test_pixel_pipeline_sends_pixels_and_events_as_pymepix(pixel_run, reference):
    _, d = reference
    check_pixels(pixel_run, d)
    check_events(pixel_run, d, (0, 0.001))
    assert MessageType.CentroidData not in pixel_run


@needs_capture
@pytest.mark.timeout(300)
def test_centroid_pipeline_sends_pixels_events_and_centroids_as_pymepix(centroid_run, reference):
    _, d = reference
    check_pixels(centroid_run, d)
    check_events(centroid_run, d, (0, 1.0))
    cents = np.concatenate(centroid_run[MessageType.CentroidData], axis=1)
    assert cents.dtype == np.float64 and cents.shape[0] == 7
    cents = cents[:, np.lexsort((cents[3], cents[0]))]
    ref = spec_centroids(spec_events(d, (0, 1.0)))
    assert cents.shape == ref.shape and ref.shape[1] >= 10
    np.testing.assert_array_equal(cents[0], ref[0])                      # trigger nr
    np.testing.assert_allclose(cents[1:3], ref[1:3], rtol=0, atol=1e-4)  # x, y (float32 pixels)
    assert np.max(np.abs(cents[3] - ref[3])) <= 1 * NS                   # tof s
    np.testing.assert_allclose(cents[4], ref[4], rtol=1e-6)              # tot avg ns
    np.testing.assert_array_equal(cents[5:], ref[5:])                    # tot max ns, size


@needs_capture
@pytest.mark.timeout(300)
def test_logic_classes_give_the_pipelines_values(pixel_run, centroid_run, reference):
    words, _ = reference
    chunk = words.tobytes() + np.uint64(LONGTIME).tobytes()           # pymepix: data + longtime
    pp = PacketProcessor(event_window=(0, 0.001))
    events, pixels, timestamps, triggers = pp.process(chunk)
    last = pp.post_process()[0]
    for a, b in zip(pixels, cat(pixel_run[MessageType.PixelData], 4)):
        np.testing.assert_array_equal(a, b)
    parts = [e for e in (events, last) if e is not None]           # released now / at the end
    ev = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    for a, b in zip(ev, cat(pixel_run[MessageType.EventData], 5)):
        np.testing.assert_array_equal(a, b)
    nr, ts = timestamps
    np.testing.assert_array_equal(nr, np.arange(14))
    assert ts.dtype == np.uint64
    assert triggers[0] is not None and len(triggers[0]) == 14 and len(triggers[1]) == 1100 + 1101

    cc = CentroidCalculator(dbscan_clustering=False)        # the live pipelines' clustering
    ev_c = cat(centroid_run[MessageType.EventData], 5)
    cents = cc.process(tuple(ev_c))
    live = np.concatenate(centroid_run[MessageType.CentroidData], axis=1)
    np.testing.assert_array_equal(cents[:, np.lexsort((cents[3], cents[0]))], live[:, np.lexsort((live[3], live[0]))])


@needs_capture
@pytest.mark.timeout(120)
def test_pymepix_example_script_runs():
    """examples/pymepix_centroids.py: a pymepix script with only the package name changed."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = repo / "examples" / "pymepix_centroids.py"
    assert "from tango_tpx.processing import CentroidPipeline, MessageType" in script.read_text()
    r = subprocess.run([sys.executable, str(script), str(CAPTURE)], capture_output=True, text=True, timeout=100,
                       cwd=repo)
    assert r.returncode == 0, r.stderr
    assert "pixels: 1858, first toa 55835.440488025 s" in r.stdout
    assert "centroids: 61," in r.stdout
