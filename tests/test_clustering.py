"""Fast connected-component clustering and time-walk tables (hand-built hits)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tango_tpx.processing.clustering import (
    DEFAULT_TIME_WINDOW_NS,
    cluster_hits,
    label_sorted,
    sort_order,
)
from tango_tpx.processing.timewalk import (
    correct_centroid_tof,
    correct_pixel_toa,
    load_timewalk_lut,
    lut_to_units,
    save_timewalk_lut,
)
from tango_tpx.tpx3.units import UNIT_NS, ns_to_units

NS = 1.0 / UNIT_NS  # fine units per ns (163.84)


def hits(rows):
    """rows of (trigger_nr, x, y, t_ns[, tot]) -> arrays (t in fine units)."""
    a = np.array([r if len(r) == 5 else (*r, 10) for r in rows], dtype=np.float64)
    return (a[:, 0].astype(np.int64), a[:, 1].astype(np.uint16), a[:, 2].astype(np.uint16),
            ns_to_units(a[:, 3]), a[:, 4].astype(np.uint16))


def partition(labels):
    """Canonical form of a labelling: the set of frozensets of hit indices (noise apart)."""
    groups: dict[int, set] = {}
    for i, lab in enumerate(labels):
        if lab >= 0:
            groups.setdefault(int(lab), set()).add(i)
    return {frozenset(g) for g in groups.values()}


def brute_force_labels(trig, x, y, t, tot, radius, window_units, tot_threshold=0):
    """Independent O(n^2) reference: every pair tested, scipy connected components."""
    keep = tot > tot_threshold
    idx = np.flatnonzero(keep)
    tr, xx, yy, tt = trig[idx].astype(np.int64), x[idx].astype(np.int64), y[idx].astype(np.int64), t[idx]
    adj = ((tr[:, None] == tr[None, :]) & (np.abs(xx[:, None] - xx[None, :]) <= radius)
           & (np.abs(yy[:, None] - yy[None, :]) <= radius) & (np.abs(tt[:, None] - tt[None, :]) <= window_units))
    i, j = np.nonzero(adj)
    _, lab = connected_components(coo_matrix((np.ones(i.size), (i, j)), shape=(idx.size, idx.size)), directed=False)
    out = np.full(trig.size, -1, np.int64)
    out[idx] = lab
    return out


def test_two_blobs_touching_merge_and_apart_split():
    blob_a = [(0, 10, 10, 100.0), (0, 11, 10, 101.0), (0, 10, 11, 103.0)]
    touching = blob_a + [(0, 12, 10, 102.0), (0, 13, 11, 104.0)]  # (12,10) touches (11,10)
    lab = cluster_hits(*hits(touching))
    assert lab.tolist() == [0, 0, 0, 0, 0]
    gap = blob_a + [(0, 13, 10, 102.0), (0, 14, 11, 104.0)]  # column 12 empty: no contact
    lab = cluster_hits(*hits(gap))
    assert lab.tolist() == [0, 0, 0, 1, 1]
    # touching in space but 1 us later: two clusters
    late = blob_a + [(0, 12, 10, 1102.0), (0, 13, 11, 1104.0)]
    assert cluster_hits(*hits(late)).tolist() == [0, 0, 0, 1, 1]


def test_diagonal_neighbours_and_radius():
    assert cluster_hits(*hits([(0, 5, 5, 0.0), (0, 6, 6, 1.0)])).tolist() == [0, 0]
    assert cluster_hits(*hits([(0, 5, 5, 0.0), (0, 4, 6, 1.0)])).tolist() == [0, 0]
    assert cluster_hits(*hits([(0, 5, 5, 0.0), (0, 7, 7, 1.0)])).tolist() == [0, 1]
    assert cluster_hits(*hits([(0, 5, 5, 0.0), (0, 7, 7, 1.0)]), radius=2).tolist() == [0, 0]
    # radius 0: only the same pixel
    assert cluster_hits(*hits([(0, 5, 5, 0.0), (0, 5, 5, 1.0), (0, 5, 6, 1.0)]), radius=0).tolist() == [0, 0, 1]


def test_same_pixel_far_apart_in_time():
    rows = [(0, 3, 3, 0.0), (0, 3, 3, 1000.0), (0, 3, 3, 1100.0)]
    assert cluster_hits(*hits(rows)).tolist() == [0, 1, 1]
    # the window is inclusive, in ns: exactly 200 ns connects, one fine unit more does not
    trig, x, y, _, tot = hits([(0, 3, 3, 0.0), (0, 4, 3, 0.0)])
    w = int(ns_to_units(DEFAULT_TIME_WINDOW_NS))
    assert cluster_hits(trig, x, y, np.array([0, w]), tot).tolist() == [0, 0]
    assert cluster_hits(trig, x, y, np.array([0, w + 1]), tot).tolist() == [0, 1]
    assert cluster_hits(trig, x, y, np.array([0, 50 * 164]), tot, time_window_ns=40.0).tolist() == [0, 1]


def test_two_events_with_same_positions_stay_apart():
    rows = [(7, 20, 20, 50.0), (7, 21, 20, 51.0), (8, 20, 20, 50.0), (8, 21, 20, 51.0)]
    assert cluster_hits(*hits(rows)).tolist() == [0, 0, 1, 1]
    # interleaved input order: labels come back in input order, numbered by first hit
    order = [2, 0, 3, 1]
    trig, x, y, t, tot = hits(rows)
    lab = cluster_hits(trig[order], x[order], y[order], t[order], tot[order])
    assert lab.tolist() == [1, 0, 1, 0]


def test_chains_are_transitive():
    # a snake of pixels, each 150 ns after the previous: the ends are 600 ns and 4 px apart
    rows = [(0, 10 + k, 10, 150.0 * k) for k in range(5)]
    assert cluster_hits(*hits(rows)).tolist() == [0] * 5
    # a later hit joining two earlier clusters merges them (union of components)
    rows = [(0, 10, 10, 0.0), (0, 12, 10, 1.0), (0, 11, 11, 2.0)]
    assert cluster_hits(*hits(rows)).tolist() == [0, 0, 0]


def test_tot_threshold_and_min_size():
    # the middle hit bridges the two ends; with tot 2 it is cut by tot_threshold=2
    rows = [(0, 10, 10, 0.0, 5), (0, 11, 10, 1.0, 2), (0, 12, 10, 2.0, 5), (0, 30, 30, 0.0, 9)]
    assert cluster_hits(*hits(rows)).tolist() == [0, 0, 0, 1]
    # labels follow (trigger, time) order: the (30, 30) hit at 0 ns comes before (12, 10) at 2 ns
    assert cluster_hits(*hits(rows), tot_threshold=2).tolist() == [0, -1, 2, 1]
    assert cluster_hits(*hits(rows), min_cluster_size=2).tolist() == [0, 0, 0, -1]
    assert cluster_hits(*hits(rows), min_cluster_size=4).tolist() == [-1, -1, -1, -1]
    assert cluster_hits(*hits(rows), tot_threshold=2, min_cluster_size=2).tolist() == [-1, -1, -1, -1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_hits(seed):
    rng = np.random.default_rng(seed)
    n = 400
    trig = rng.integers(0, 3, n)
    x = rng.integers(0, 12, n).astype(np.uint16)
    y = rng.integers(0, 12, n).astype(np.uint16)
    t = rng.integers(0, ns_to_units(3000.0), n)
    tot = rng.integers(0, 6, n).astype(np.uint16)
    for radius, window_ns, thr in ((1, 200.0, 0), (2, 80.0, 2), (0, 500.0, 0)):
        got = cluster_hits(trig, x, y, t, tot, radius=radius, time_window_ns=window_ns, tot_threshold=thr)
        ref = brute_force_labels(trig, x, y, t, tot, radius, int(ns_to_units(window_ns)), thr)
        assert partition(got) == partition(ref)
        assert np.array_equal(got < 0, ref < 0)


def test_labels_in_first_hit_order_on_sorted_input():
    trig, x, y, t, tot = hits([(0, 1, 1, 0.0), (0, 50, 50, 1.0), (0, 2, 1, 2.0), (1, 50, 50, 0.0)])
    labels, n = label_sorted(trig, x, y, t, tot, 0, 1, int(ns_to_units(200.0)), 51, 51)
    assert n == 3
    assert labels.tolist() == [0, 1, 0, 2]


def test_sort_order_paths_are_stable_and_correct():
    rng = np.random.default_rng(5)
    trig = np.sort(rng.integers(0, 20, 2000))
    t = rng.integers(0, 1000, 2000)  # many ties
    assert sort_order(np.arange(5), np.zeros(5, np.int64)) is None  # already sorted
    order = sort_order(trig, t)
    assert np.array_equal(order, np.lexsort((t, trig)))
    # spans too large for one int64 key: the lexsort fallback, same answer
    big_trig = trig.astype(np.int64) << 35
    big_t = t.astype(np.int64) << 35
    assert np.array_equal(sort_order(big_trig, big_t), np.lexsort((big_t, big_trig)))
    # negative times (tof before the trigger) are fine
    assert np.array_equal(sort_order(trig, t - 500), np.lexsort((t, trig)))
    # keys over 32 bits (a 2^30-unit span per trigger, 2000 triggers): the wide-key passes
    wide_trig = np.sort(rng.integers(0, 2000, 50_000))
    wide_t = rng.integers(0, 1 << 30, 50_000)
    wide_t[::7] = wide_t[1::7][: wide_t[::7].size]          # ties
    assert np.array_equal(sort_order(wide_trig, wide_t), np.lexsort((wide_t, wide_trig)))


def test_extreme_times_keep_exact_arithmetic():
    """Times spanning +-2^61 fine units (internal keys are rebased to avoid overflow)."""
    lo, hi = -(1 << 61) + 10, (1 << 61) - 100
    rows_t, trig, x = [], [], []
    for k in range(4):
        rows_t += [lo, hi, hi + 50, hi + 60]
        trig += [k] * 4
        x += [1, 1, 2, 9]
    t = np.array(rows_t, np.int64)
    y = np.ones(t.size, np.uint16)
    lab = cluster_hits(np.array(trig), np.array(x, np.uint16), y, t)
    assert lab.tolist() == [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 10, 11]
    with pytest.raises(ValueError, match="2\\^61"):
        cluster_hits(np.zeros(2, np.int64), np.ones(2, np.uint16), y[:2], np.array([0, 1 << 62]))


def test_bad_input_is_rejected_clearly():
    trig, x, y, t, tot = hits([(0, 1, 1, 0.0), (0, 2, 1, 1.0)])
    with pytest.raises(ValueError, match="same length"):
        cluster_hits(trig[:1], x, y, t)
    with pytest.raises(ValueError, match="radius"):
        cluster_hits(trig, x, y, t, radius=-1)
    with pytest.raises(ValueError, match="time_window_ns"):
        cluster_hits(trig, x, y, t, time_window_ns=float("nan"))
    with pytest.raises(ValueError, match="tot_threshold"):
        cluster_hits(trig, x, y, t, tot, tot_threshold=-1)
    with pytest.raises(ValueError, match="pixel coordinates"):
        cluster_hits(trig, np.array([1, -2]), y, t)
    with pytest.raises(ValueError, match="integer pixel"):
        cluster_hits(trig, x.astype(float), y, t)
    assert cluster_hits(trig[:0], x[:0], y[:0], t[:0]).size == 0
    # no ToT given: every hit counts
    assert cluster_hits(trig, x, y, t).tolist() == [0, 0]


# ------------------------------------------------------------------------------------------
# time-walk tables
# ------------------------------------------------------------------------------------------
def test_timewalk_lut_roundtrip_and_units(tmp_path):
    lut = np.array([30.0, 20.0, 10.0])
    path = tmp_path / "tw.npy"
    save_timewalk_lut(path, lut)
    loaded = load_timewalk_lut(path)
    assert loaded.dtype == np.float64 and loaded.tolist() == [30.0, 20.0, 10.0]
    # 30 ns = 4915.2 fine units -> 4915; 20 ns = 3276.8 -> 3277; 10 ns = 1638.4 -> 1638
    assert lut_to_units(lut).tolist() == [4915, 3277, 1638]


def test_correct_pixel_toa_indexes_tot_minus_one_and_clamps():
    lut = np.array([30.0, 20.0, 10.0])
    toa = np.array([100_000, 100_000, 100_000, 100_000, 100_000], np.int64)
    tot = np.array([1, 2, 3, 0, 7], np.uint16)  # 0 and 7 are outside the table: clamped
    assert correct_pixel_toa(toa, tot, lut).tolist() == [
        100_000 - 4915, 100_000 - 3277, 100_000 - 1638, 100_000 - 4915, 100_000 - 1638]
    tof = np.array([5000, -5000], np.int64)
    assert correct_centroid_tof(tof, np.array([2, 3]), lut).tolist() == [5000 - 3277, -5000 - 1638]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 2)), "1-D"),
    (np.array([1.0, np.nan]), "NaN"),
    (np.array([1.0, np.inf]), "NaN/inf"),
    (np.zeros(0), "empty"),
    (np.zeros(2000), "10 bits"),
    (np.array(["a", "b"]), "numeric"),
])
def test_bad_timewalk_tables_raise_value_error(tmp_path, bad, match):
    path = tmp_path / "bad.npy"
    np.save(path, bad)
    with pytest.raises(ValueError, match=match):
        load_timewalk_lut(path)


def test_timewalk_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_timewalk_lut(tmp_path / "missing.npy")
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match="npy"):
        load_timewalk_lut(junk)
