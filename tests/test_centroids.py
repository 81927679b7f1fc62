"""Centroids: hand-computed means, DBSCAN (pymepix) mode, process pool, simulator ground truth."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from tango_tpx.processing.centroids import (
    CentroidCalculator,
    Centroids,
    calculate_centroids,
    split_at_triggers,
)
from tango_tpx.processing.clustering import cluster_hits
from tango_tpx.processing.events import Events
from tango_tpx.tpx3.units import UNIT_NS, ns_to_units

NS = 1.0 / UNIT_NS  # fine units per ns


def events(rows) -> Events:
    """rows of (trigger_nr, x, y, tof [fine units], tot [counts]) -> Events (toa = tof)."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return Events(a[:, 0], a[:, 1].astype(np.uint16), a[:, 2].astype(np.uint16), a[:, 3],
                  a[:, 4].astype(np.uint16), a[:, 3].copy())


def well_separated(n_triggers=6, per_trigger=8, seed=3) -> Events:
    """Compact 3x3 clusters of 3..9 hits, 20 px or 10 us apart: every method finds the same ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for trig in range(n_triggers):
        for k in range(per_trigger):
            cx, cy = 10 + 20 * (k % 4), 10 + 20 * (k // 4)
            t0 = int(rng.integers(0, 2000)) * 256 + 10_000 * int(NS) * (k % 3)
            n = int(rng.integers(3, 10))
            for j, (dx, dy) in enumerate([(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (-1, -1), (1, -1)][:n]):
                tot = int(rng.integers(1, 200)) if j else 300
                rows.append((trig, cx + dx, cy + dy, t0 + int(rng.integers(0, 40)) * 256, tot))
    rows.sort(key=lambda r: (r[0], r[3]))
    return events(rows)


def test_weighted_means_by_hand():
    ev = events([(4, 10, 20, 1000, 1), (4, 11, 20, 1100, 3), (4, 10, 21, 1300, 4)])
    c = calculate_centroids(ev)
    assert len(c) == 1
    assert c.trigger_nr.tolist() == [4]
    # x = (10*1 + 11*3 + 10*4) / 8 = 83/8; y = (20 + 60 + 84) / 8 = 20.5
    assert c.x[0] == np.float32(83 / 8) and c.y[0] == np.float32(20.5)
    # tof = (1000 + 3300 + 5200) / 8 = 1187.5 -> rounded half up to 1188 fine units
    assert c.tof.tolist() == [1188]
    assert c.tot_sum.tolist() == [8] and c.tot_max.tolist() == [4] and c.size.tolist() == [3]
    assert c.tot_avg[0] == np.float32(8 / 3)
    assert (c.x.dtype, c.tof.dtype, c.tot_sum.dtype, c.tot_avg.dtype, c.tot_max.dtype, c.size.dtype) == (
        np.float32, np.int64, np.uint32, np.float32, np.uint16, np.uint32)


def test_tot_threshold_min_size_and_output_order():
    rows = [
        (0, 10, 10, 5000, 1), (0, 11, 10, 5100, 3), (0, 10, 11, 5200, 4),  # A: tof 5000..
        (0, 50, 50, 100, 2), (0, 51, 50, 9000, 2), (0, 51, 51, 100, 6),   # B: first hit earlier, mean later
        (0, 90, 90, 200, 7), (0, 91, 90, 220, 7),                          # C: 2 hits
        (1, 10, 10, 10, 5), (1, 11, 10, 10, 5), (1, 12, 10, 10, 5),        # D: next trigger
    ]
    c = calculate_centroids(events(rows))
    # B's 9000 hit is 8900 units (54 ns) after 100: within 200 ns, same cluster;
    # B tof = (100*2 + 9000*2 + 100*6)/10 = 1880; A tof = (5000 + 15300 + 20800)/8 = 5137.5 -> 5138
    assert c.trigger_nr.tolist() == [0, 0, 1]
    assert c.tof.tolist() == [1880, 5138, 10]
    assert c.size.tolist() == [3, 3, 3]
    c2 = calculate_centroids(events(rows), min_cluster_size=2)
    assert c2.tof.tolist() == [210, 1880, 5138, 10]
    # threshold 2 keeps tot > 2 only: A loses its tot-1 hit, B keeps one hit, C stays
    c3 = calculate_centroids(events(rows), tot_threshold=2, min_cluster_size=2)
    assert c3.tof.tolist() == [210, int(np.floor((5100 * 3 + 5200 * 4) / 7 + 0.5)), 10]
    assert c3.x[1] == np.float32((11 * 3 + 10 * 4) / 7)
    assert c3.size.tolist() == [2, 2, 3]


def test_centroid_timewalk_table_uses_tot_max():
    ev = events([(0, 10, 10, 100_000, 2), (0, 11, 10, 100_000, 3), (0, 10, 11, 100_000, 1)])
    lut = np.array([40.0, 20.0, 13.0, 10.0])  # ns for ToT 1..4
    c = calculate_centroids(ev, cent_timewalk_lut=lut)
    assert c.tot_max.tolist() == [3]
    assert c.tof.tolist() == [100_000 - int(ns_to_units(13.0))]  # 13 ns = 2129.92 -> 2130 units
    assert c.tof.tolist() == [100_000 - 2130]


def test_dbscan_and_fast_agree_on_well_separated_clusters():
    ev = well_separated()
    fast = calculate_centroids(ev)
    db = calculate_centroids(ev, algorithm="dbscan")
    assert len(fast) == 6 * 8
    for name in ("trigger_nr", "x", "y", "tof", "tot_sum", "tot_avg", "tot_max", "size"):
        assert np.array_equal(getattr(fast, name), getattr(db, name)), name


def test_dbscan_mode_matches_pymepix_procedure():
    """Independent reference: one DBSCAN over [trigger*eps*1000, x, y, tof_s*1.7e7] and
    numpy weighted means, as pymepix computes them (its tof in s; here back in fine units)."""
    from sklearn.cluster import DBSCAN

    rng = np.random.default_rng(11)
    n = 3000
    trig = np.sort(rng.integers(0, 5, n))
    x = rng.integers(0, 40, n)
    y = rng.integers(0, 40, n)
    tof = rng.integers(0, 400, n) * 256  # 0..625 ns: dense, with noise and touching clusters
    tot = rng.integers(0, 30, n)
    order = np.lexsort((tof, trig))
    trig, x, y, tof, tot = trig[order], x[order], y[order], tof[order], tot[order]
    ev = events(np.column_stack([trig, x, y, tof, tot]))
    got = calculate_centroids(ev, algorithm="dbscan", tot_threshold=3, chunk_size_limit=10**9)

    keep = tot > 3
    tr, xx, yy, tt, ww = trig[keep], x[keep], y[keep], tof[keep], tot[keep].astype(np.float64)
    feats = np.column_stack([tr * 2.0 * 1000, xx, yy, tt * UNIT_NS * 1e-9 * 1.7e7])
    lab = DBSCAN(eps=2.0, min_samples=3).fit(feats).labels_
    ok = lab >= 0
    labs = np.unique(lab[ok])
    ref_x = np.array([np.sum(xx[lab == k] * ww[lab == k]) / np.sum(ww[lab == k]) for k in labs])
    ref_t = np.array([np.sum(tt[lab == k] * ww[lab == k]) / np.sum(ww[lab == k]) for k in labs])
    ref_tr = np.array([tr[lab == k][0] for k in labs])
    ref_size = np.array([np.sum(lab == k) for k in labs])
    o = np.lexsort((ref_t, ref_tr))
    assert len(got) == labs.size > 50
    assert np.array_equal(got.trigger_nr, ref_tr[o])
    assert np.array_equal(got.size, ref_size[o])
    np.testing.assert_allclose(got.x, ref_x[o], rtol=1e-6)
    assert np.max(np.abs(got.tof - ref_t[o])) <= 0.5  # rounded to the nearest fine unit


def test_input_forms_and_bad_input():
    ev = events([(0, 1, 1, 0, 5), (0, 2, 1, 10, 5), (0, 2, 2, 20, 5)])
    as_dict = {k: getattr(ev, k) for k in ("trigger_nr", "x", "y", "tof", "tot")}
    assert calculate_centroids(as_dict).tof.tolist() == calculate_centroids(ev).tof.tolist() == [10]
    assert len(calculate_centroids(Events.empty())) == 0
    assert isinstance(calculate_centroids(Events.empty()), Centroids)
    with pytest.raises(TypeError, match="fields"):
        calculate_centroids({"x": ev.x})
    with pytest.raises(ValueError, match="integer"):
        calculate_centroids(dict(as_dict, tof=ev.tof.astype(float)))
    with pytest.raises(ValueError, match="algorithm"):
        calculate_centroids(ev, algorithm="kmeans")
    with pytest.raises(ValueError, match="tot_threshold"):
        calculate_centroids(ev, tot_threshold=-1)
    with pytest.raises(ValueError, match="has 2 values"):
        calculate_centroids(dict(as_dict, x=ev.x[:2]))
    with pytest.raises(ValueError, match="1-D"):
        calculate_centroids(ev, cent_timewalk_lut=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unknown clustering_args"):
        CentroidCalculator(clustering_args={"epsilonn": 2})


def test_calculator_pymepix_parameters():
    args = {"epsilon": 3.0, "min_samples": 4, "tot_threshold": 2, "cs_max_dist_tof": 5e-8,
            "cs_min_cluster_size": 2, "cs_sensor_size": 256}
    calc = CentroidCalculator(clustering_args=args)
    assert args["epsilon"] == 3.0 and len(args) == 6  # the caller's dict is not consumed
    assert (calc.epsilon, calc.min_samples, calc.tot_threshold, calc.min_cluster_size) == (3.0, 4, 2, 2)
    assert calc.time_window_ns == pytest.approx(50.0) and not calc.dbscan_clustering
    # 50 ns window: hits 60 ns apart split, 40 ns apart join
    ev = events([(0, 1, 1, 0, 5), (0, 2, 1, int(60 * NS), 5), (0, 2, 2, int(100 * NS), 5)])
    assert calc.process(ev).size.tolist() == [2]
    assert len(calc.process(None)) == 0


def test_triggers_processed_keeps_every_nth_trigger():
    rows = [(t, 5, 5, 0, 5) for t in range(6)] + [(t, 6, 5, 10, 5) for t in range(6)] + [(t, 6, 6, 20, 5) for t in range(6)]
    rows.sort(key=lambda r: (r[0], r[3]))
    calc = CentroidCalculator(clustering_args={"triggers_processed": 2})
    assert calc.process(events(rows)).trigger_nr.tolist() == [0, 2, 4]


def test_split_at_triggers_never_splits_an_event():
    trig = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    ranges = split_at_triggers(trig, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == trig.size
    for (a, b), (c, _) in zip(ranges[:-1], ranges[1:]):
        assert b == c and trig[b - 1] != trig[b]
    assert split_at_triggers(np.zeros(10, np.int64), 4) == [(0, 10)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dbscan", [False, True])
def test_one_and_three_processes_give_identical_output(dbscan):
    from tango_tpx.simulator import SimConfig, simulate

    _, truth = simulate(SimConfig(rate_mhits=1.0, duration_s=0.02, seed=4, trigger_hz=1000.0))
    ev = truth_events(truth)
    with CentroidCalculator(number_of_processes=1, dbscan_clustering=dbscan) as one, \
            CentroidCalculator(number_of_processes=3, dbscan_clustering=dbscan, min_hits_per_process=100,
                               worker_kind="processes") as three:
        a = one.process(ev)
        b = three.process(ev)
        assert three._pool is not None  # really ran in the pool
    assert multiprocessing.active_children() == []  # the workers are gone after close
    assert len(a) > 100
    for name in ("trigger_nr", "x", "y", "tof", "tot_sum", "tot_avg", "tot_max", "size"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def truth_hits(truth):
    """(trigger_nr, x, y, tof, tot, toa, particle) of the simulator's hits in readout order,
    each hit (noise too) assigned to the last trigger at or before it, as the PacketProcessor
    does; hits before the first trigger are left out."""
    toa = np.asarray(truth.hits.toa)
    trig = np.searchsorted(truth.trigger_time, toa, side="right") - 1
    ok = trig >= 0
    part = np.asarray(truth.particle)
    # the simulator's own assignment agrees for particle hits
    assert np.array_equal(trig[part >= 0], np.asarray(truth.trigger_nr)[part >= 0])
    trig = trig[ok]
    return (trig, truth.hits.x[ok], truth.hits.y[ok], toa[ok] - truth.trigger_time[trig],
            truth.hits.tot[ok], toa[ok], part[ok])


def truth_events(truth) -> Events:
    """Events (sorted by toa, as the PacketProcessor emits them) from the simulator's truth."""
    trig, x, y, tof, tot, toa, _ = truth_hits(truth)
    o = np.argsort(toa, kind="stable")
    return Events(trig[o], x[o], y[o], tof[o], tot[o], toa[o])


@pytest.mark.timeout(120)
def test_simulated_particles_are_found():
    from tango_tpx.simulator import SimConfig, simulate

    _, truth = simulate(SimConfig(rate_mhits=2.0, duration_s=0.05, seed=7, trigger_hz=1000.0))
    ev = truth_events(truth)
    cen = calculate_centroids(ev)  # defaults: fast, 200 ns, 8-neighbourhood, min size 3
    p = truth.particles
    wanted = np.flatnonzero(np.asarray(p.n_hits) >= 3)
    assert wanted.size > 1000
    # match each particle to a centroid of its trigger within 2 ns and 0.5 px
    key_c = cen.trigger_nr * (1 << 40) + cen.tof
    order = np.argsort(key_c)
    key_c = key_c[order]
    two_ns = ns_to_units(2.0)
    found = 0
    for i in wanted:
        k = int(p.trigger_nr[i]) * (1 << 40) + int(p.tof[i])
        lo, hi = np.searchsorted(key_c, [k - two_ns, k + two_ns + 1])
        cand = order[lo:hi]
        if np.any((np.abs(cen.x[cand] - p.x[i]) <= 0.5) & (np.abs(cen.y[cand] - p.y[i]) <= 0.5)):
            found += 1
    assert found / wanted.size >= 0.99, f"found {found} of {wanted.size}"
    # noise alone never makes a cluster of the minimum size
    trig, x, y, tof, tot, toa, part = truth_hits(truth)
    labels = cluster_hits(trig, x, y, tof, tot, min_cluster_size=3)
    clustered = labels >= 0
    has_particle = np.zeros(labels.max() + 1, bool)
    np.logical_or.at(has_particle, labels[clustered], part[clustered] >= 0)
    assert (part < 0).sum() > 1000  # there is noise to test with
    assert has_particle.all(), f"{(~has_particle).sum()} clusters made of noise only"
    # and the readout order (unsorted) gives the same centroids
    again = calculate_centroids(Events(trig, x, y, tof, tot, toa))
    for name in ("trigger_nr", "x", "y", "tof", "tot_sum", "size"):
        assert np.array_equal(getattr(again, name), getattr(cen, name)), name
