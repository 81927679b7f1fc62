"""Typed processing settings: validation, HDF5 attributes, the clustering registry, live
values and the data_queue message that says which settings version made its data."""

from __future__ import annotations

import math
import pickle

import h5py
import numpy as np
import pytest

from tango_tpx.io.convert import convert_file
from tango_tpx.io.settingsattrs import settings_from_attrs
from tango_tpx.pipeline.livesettings import LiveSettings, LiveValues
from tango_tpx.pipeline.messages import MessageType, QueueMessage
from tango_tpx.processing import settings as S
from tango_tpx.processing.centroids import Centroids, calculate_centroids
from tango_tpx.processing.events import Events
from tango_tpx.processing.settings import (
    ClusteringBackend,
    ClusteringConfig,
    DetectorLayout,
    EventWindow,
    TimeWalk,
    clustering_keys,
    register_clustering,
)
from tango_tpx.simulator import SimConfig, SpidrSimulator
from tango_tpx.tpx3.files import RawFileWriter


@pytest.mark.parametrize("make, match", [
    (lambda: ClusteringConfig(algorithm="kmeans"), r"one of \('fast', 'dbscan'.*got 'kmeans'"),
    (lambda: ClusteringConfig(radius=-1), r"radius must be an integer >= 0 \(px\)"),
    (lambda: ClusteringConfig(radius=1.5), r"radius must be an integer"),
    (lambda: ClusteringConfig(time_window_ns=-1.0), r"time_window_ns must be >= 0.0 .*\(ns\)"),
    (lambda: ClusteringConfig(min_cluster_size=0), r"min_cluster_size must be an integer >= 1 \(hits\)"),
    (lambda: ClusteringConfig(tot_threshold=1024), r"tot_threshold must be an integer 0..1023 \(ToT counts of 25 ns\)"),
    (lambda: ClusteringConfig(eps=0.0), r"eps must be > 0.0"),
    (lambda: EventWindow(2e-3, 1e-3), r"0 <= start <= end \(s"),
    (lambda: EventWindow(-1.0, 1e-3), r"event window start must be >= 0.0"),
    (lambda: EventWindow(float("nan"), 1e-3), r"event window start"),
    (lambda: DetectorLayout("hex"), r"layout must be 'single' or 'quad'.*516 x 516 px.*got 'hex'"),
    (lambda: TimeWalk(pixel_lut=np.zeros((2, 2))), r"1-D table of finite ns per ToT bin"),
])
def test_bad_settings_raise_value_errors_that_say_what_is_allowed(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_settings_are_frozen_normalised_and_round_trip_through_attrs():
    c = ClusteringConfig(algorithm=" DBSCAN ", tot_threshold=np.int64(5))
    assert (c.algorithm, c.min_cluster_size, c.tot_threshold) == ("dbscan", 1, 5)   # dbscan keeps every cluster
    assert ClusteringConfig().min_cluster_size == 3
    with pytest.raises(AttributeError):
        c.radius = 4
    w = EventWindow.from_ns(1000.0, math.inf)
    assert w.as_tuple() == (1e-6, math.inf) and w.start_ns == pytest.approx(1000.0)
    d = DetectorLayout("quad")
    assert (d.frame_size_px, d.frame_shape, d.live_framing) == (516, (516, 516), "tpx3")
    t = TimeWalk(centroid_lut=[3.0, 2.0, 1.0], centroid_file="c.npy")
    for obj in (c, ClusteringConfig(radius=2, time_window_ns=350.0), w, d, t, TimeWalk()):
        assert type(obj).from_attrs(obj.to_attrs()) == obj
    assert ClusteringConfig.from_pymepix({"epsilon": 3.0, "cs_max_dist_tof": 1e-7, "min_samples": 4}, dbscan=True,
                                         tot_threshold=2) == ClusteringConfig("dbscan", time_window_ns=100.0, eps=3.0,
                                                                              min_samples=4, tot_threshold=2)


def _events() -> Events:
    # two triggers, a 3-hit cluster in each and one lone hit
    trig = np.array([0, 0, 0, 1, 1, 1, 1], np.int64)
    x = np.array([10, 11, 10, 50, 51, 50, 200], np.uint16)
    y = np.array([10, 10, 11, 50, 50, 51, 200], np.uint16)
    tof = np.array([100, 104, 108, 100, 105, 110, 100], np.int64) * 4096    # 25 ns steps
    tot = np.array([5, 6, 7, 5, 5, 5, 9], np.uint16)
    return Events(trig, x, y, tof, tot, tof)


def _raw_file(tmp_path):
    words, _ = SpidrSimulator(SimConfig(rate_mhits=0.2, duration_s=0.05, seed=3)).simulate()
    src = tmp_path / "s.raw"
    with RawFileWriter(src, time_ns=1) as f:
        f.write(words)
    return src


@pytest.mark.timeout(120)
def test_a_registered_backend_plugs_in_without_edits_elsewhere(tmp_path):
    calls = []

    def one_per_trigger(arrays, config, tw_units) -> Centroids:
        trig, x, y, tof, tot = arrays
        calls.append(config)
        first = np.flatnonzero(np.r_[True, trig[1:] != trig[:-1]])
        n = first.size
        return Centroids(trig[first], x[first].astype(np.float32), y[first].astype(np.float32), tof[first],
                         np.ones(n, np.uint32), np.ones(n, np.float32), np.ones(n, np.uint16), np.ones(n, np.uint32))

    register_clustering("first-hit", ClusteringBackend(one_per_trigger, 1, "test backend"))
    try:
        # the converter runs it too: one centroid per trigger with events
        src, out = _raw_file(tmp_path), tmp_path / "first-hit.h5"
        convert_file(src, out, clustering=ClusteringConfig(algorithm="first-hit"), event_window=(0.0, 1e-3))
        with h5py.File(out, "r") as f:
            assert f.attrs["clustering_algorithm"] == "first-hit"
            trig = f["centroided/trigger nr"][()]
            assert np.array_equal(trig, np.unique(f["raw/trigger nr"][()])) and trig.size > 10
        calls.clear()
        assert "first-hit" in clustering_keys()
        cfg = ClusteringConfig(algorithm="first-hit", radius=4)
        cents = calculate_centroids(_events(), cfg)
        assert cents.trigger_nr.tolist() == [0, 1] and calls == [cfg]
        # the built-in backends dispatch through the same registry
        fast = calculate_centroids(_events(), ClusteringConfig())
        assert fast.size.tolist() == [3, 3]
        assert calculate_centroids(_events(), "fast").size.tolist() == [3, 3]
    finally:
        S._REGISTRY.pop("first-hit", None)
    with pytest.raises(ValueError, match="lower-case"):
        register_clustering("Bad Key", ClusteringBackend(one_per_trigger))


def test_live_values_compose_the_typed_settings_and_survive_the_shared_block():
    v = LiveValues().with_(event_window=(1e-6, math.inf), radius=3, tot_threshold=4, roi=(1, 2, 3, 4, 5, 6))
    assert v.window == EventWindow(1e-6, math.inf) and v.clustering == ClusteringConfig(radius=3, tot_threshold=4)
    assert (v.event_window, v.radius, v.tot_threshold, v.min_cluster_size) == ((1e-6, math.inf), 3, 4, 3)
    live = LiveSettings()
    assert live.version == 1
    assert live.publish(v) == 2 and live.version == 2
    g, back = live.read()
    assert g == 4 and back == v
    with pytest.raises(ValueError, match="event_window"):
        v.with_(event_window=(2.0, 1.0))
    with pytest.raises(ValueError, match="unknown live settings"):
        v.with_(radiuss=2)


def test_queue_messages_stay_pymepix_pairs_and_say_the_settings_version():
    m = QueueMessage(MessageType.EventData, (1, 2), 7)
    t, d = m
    assert (t, d, len(m), m.settings_version) == (MessageType.EventData, (1, 2), 2, 7)
    assert m == (MessageType.EventData, (1, 2))
    back = pickle.loads(pickle.dumps(m))                              # multiprocessing queues pickle
    assert back == m and back.settings_version == 7


@pytest.mark.timeout(120)
def test_conversion_attributes_come_from_the_settings_objects(tmp_path):
    src = _raw_file(tmp_path)
    lut = tmp_path / "cent.npy"
    np.save(lut, np.linspace(5.0, 0.0, 50))
    cfg = ClusteringConfig(radius=2, time_window_ns=300.0, tot_threshold=1)
    window = EventWindow(0.0, 1e-3)
    convert_file(src, tmp_path / "s.h5", clustering=cfg, event_window=window, cent_timewalk_file=lut)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        attrs = dict(f.attrs)
    w, layout, c, tw = settings_from_attrs(attrs)
    assert (w, layout, c) == (window, DetectorLayout("single"), cfg)
    assert tw.centroid_file == str(lut.resolve()) and np.array_equal(tw.centroid_lut, np.load(lut))
    assert attrs["clustering_radius_px"] == 2 and attrs["clustering_time_window_ns"] == 300.0
