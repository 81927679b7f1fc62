"""The armed pipeline (no Tango): many acquisitions behind a gate on one set of processes,
exact per-acquisition counts, trigger-bounded files cut at the right word, live clustering
settings that match an offline conversion with the same settings, and a full disk."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tango_tpx.io import convert_file, read_table
from tango_tpx.pipeline import raw2disk
from tango_tpx.pipeline.controller import AcquisitionController
from tango_tpx.pipeline.livesettings import LiveSettings, LiveValues
from tango_tpx.simulator import SimConfig, simulate
from tango_tpx.tpx3.codec import Decoder
from tango_tpx.tpx3.files import iter_words

from .conftest import wait_for
from .test_pipeline_faults import _FullDiskWriter
from .test_pipeline_helpers import child_pids, free_udp_port, send_datagrams, split


def _run(ctl: AcquisitionController, results: list, words: np.ndarray, port: int, **begin) -> object:
    n0 = len(results)
    ctl.session.begin(**begin)
    assert ctl.session.wait_open(5.0)
    send_datagrams(port, split(words.astype("<u8").tobytes(), 8192), pause_every=64)
    if not (begin.get("time_s") or begin.get("triggers")):
        time.sleep(0.5)
        ctl.session.end()
    assert wait_for(lambda: len(results) > n0, 30), ctl.fault()
    return results[-1]


def _file_counts(path) -> tuple[int, int]:
    dec = Decoder()
    parts = [dec.decode(w) for w in iter_words(str(path))]
    return (sum(len(p.pixels) for p in parts),
            sum(int(np.count_nonzero((p.triggers.channel == 1) & p.triggers.rising)) for p in parts))


def test_live_settings_block_round_trip_and_validation():
    live = LiveSettings()
    g0, v0 = live.read()
    assert v0 == LiveValues()
    live.publish(LiveValues().with_(radius=3, event_window=(1e-6, 5e-4), roi=(1, 2, 3, 4, 5, 6)))
    g1, v1 = live.read()
    assert g1 == g0 + 2 and v1.radius == 3 and v1.event_window == (1e-6, 5e-4) and v1.roi == (1, 2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="event_window"):
        LiveValues().with_(event_window=(2e-3, 1e-3))
    with pytest.raises(ValueError, match="min_cluster_size"):
        LiveValues().with_(min_cluster_size=0)


@pytest.mark.timeout(240)
def test_acquisitions_on_one_armed_pipeline_are_exact_and_match_offline(tmp_path):
    words, truth = simulate(SimConfig(rate_mhits=0.3, duration_s=0.6, seed=21, trigger_hz=1000.0))
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    ctl.centroiding = True
    results: list = []
    ctl.session.on_done = results.append
    kids0 = child_pids()
    ctl.arm()
    try:
        kids = child_pids() - kids0
        assert len(kids) == 3                                  # receiver, decoder, 1 worker
        # 1: until end(): every hit and trigger sent
        r = _run(ctl, results, words, port)
        n_trig = int(np.count_nonzero((truth.triggers.channel == 1) & truth.triggers.rising))
        assert r.error is None and r.reason == "stop"
        assert r.counts["hits"] == len(truth.hits) and r.counts["triggers"] == n_trig
        # 2: 50 triggers, recorded: the file is cut before the 51st trigger word
        raw = tmp_path / "a.raw"
        r = _run(ctl, results, words, port, triggers=50, record=str(raw))
        assert r.error is None and r.reason == "triggers" and r.file == str(raw)
        hits, tdc1 = _file_counts(raw)
        assert tdc1 == 50 == r.counts["triggers"] and hits == r.counts["hits"]
        h5 = tmp_path / "a.h5"
        convert_file(raw, h5, event_window=(0.0, 1e-3))
        assert len(read_table(h5, "raw")["x"]) == r.counts["events"]
        assert len(read_table(h5, "centroided")["x"]) == r.counts["centroids"] > 0
        # 3: live clustering settings change the next acquisition exactly like offline
        ctl.set_live(radius=3, min_cluster_size=1, time_window_ns=500.0)
        raw = tmp_path / "b.raw"
        r = _run(ctl, results, words, port, triggers=50, record=str(raw))
        h5 = tmp_path / "b.h5"
        convert_file(raw, h5, event_window=(0.0, 1e-3),
                     clustering_args={"radius": 3, "min_cluster_size": 1, "time_window_ns": 500.0})
        assert len(read_table(h5, "centroided")["x"]) == r.counts["centroids"]
        convert_file(raw, tmp_path / "c.h5", event_window=(0.0, 1e-3))   # the defaults give fewer
        assert len(read_table(tmp_path / "c.h5", "centroided")["x"]) < r.counts["centroids"]
        # 4: time-bounded (detector time): 0.2 s at 1 kHz
        r = _run(ctl, results, words, port, time_s=0.2)
        assert r.reason == "time" and 199 <= r.counts["triggers"] <= 201
        # 5: time-bounded without any data: the host clock ends it
        n0, t0 = len(results), time.monotonic()
        ctl.session.begin(time_s=0.3)
        assert wait_for(lambda: len(results) > n0, 10)
        assert results[-1].reason == "time" and results[-1].counts["hits"] == 0
        assert 0.3 <= time.monotonic() - t0 < 3.0
        assert child_pids() - kids0 == kids                    # the same processes all along
    finally:
        ctl.close()
    assert wait_for(lambda: not (child_pids() - kids0), 10)


@pytest.mark.timeout(120)
def test_full_disk_ends_the_acquisition_with_an_error_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(raw2disk, "RawFileWriter", _FullDiskWriter)  # inherited by the fork
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    results: list = []
    ctl.session.on_done = results.append
    ctl.arm()
    try:
        path = tmp_path / "full.raw"
        ctl.session.begin(record=str(path))
        assert ctl.session.wait_open(5.0)
        for k in range(10):
            send_datagrams(port, [bytes([k]) * 8000])
            time.sleep(0.35)
        assert wait_for(lambda: results, 10)
        assert results[-1].error and "disk full" in results[-1].error and str(path) in results[-1].error
    finally:
        ctl.close()
    assert 8 < path.stat().st_size <= 20_008                  # what was written stays readable


@pytest.mark.timeout(60)
def test_a_recording_that_cannot_open_ends_the_acquisition_with_the_reason(tmp_path):
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    results: list = []
    ctl.session.on_done = results.append
    ctl.arm()
    try:
        path = tmp_path / "missing-dir" / "x.raw"
        ctl.session.begin(record=str(path))
        assert wait_for(lambda: results, 10)
        assert "cannot record to" in results[-1].error and str(path) in results[-1].error
        assert ctl.session.phase == "idle"
        ctl.session.begin()                                   # the pipeline is still usable
        assert ctl.session.wait_open(5.0)
        ctl.session.end()
        assert wait_for(lambda: len(results) == 2, 10) and results[-1].error is None
    finally:
        ctl.close()
