"""The fast clustering kernels give the same results as the reference formulation.

* the packed-map union-find pass (:func:`union_pass_packed`) fills the same forest as the
  two-map pass (:func:`_union_pass`), also when the time keys are shifted down mid-stream;
* ``_accumulate`` writes its centroids in (trigger_nr, tof) order, equal to a stable sort of
  the first-hit order, also when the insertion budget runs out (large time-walk table).
"""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.processing import centroids as C
from tango_tpx.processing.clustering import _union_pass, labels_from_parent, union_pass
from tango_tpx.processing.fastcentroids import MAX_WINDOW, fits, union_pass_packed
from tango_tpx.tpx3.units import ns_to_units

FIELDS = ("trigger_nr", "x", "y", "tof", "tot_sum", "tot_avg", "tot_max", "size")


def blobs(n_part: int, seed: int, t_step: int, n_trig: int = 5):
    """Sorted (trig, x, y, t, tot) of small blobs plus noise on a 64x64 frame; times in fine
    units grow by about ``t_step`` per particle."""
    rng = np.random.default_rng(seed)
    size = rng.integers(1, 8, n_part)
    pid = np.repeat(np.arange(n_part), size)
    cx = rng.integers(1, 63, n_part)[pid]
    cy = rng.integers(1, 63, n_part)[pid]
    x = np.clip(cx + rng.integers(-1, 2, pid.size), 0, 63).astype(np.uint16)
    y = np.clip(cy + rng.integers(-1, 2, pid.size), 0, 63).astype(np.uint16)
    t = (np.cumsum(rng.integers(0, 2 * t_step, n_part))[pid] + rng.integers(0, 20000, pid.size)).astype(np.int64)
    trig = np.sort(rng.integers(0, n_trig, pid.size)).astype(np.int64)
    tot = rng.integers(1, 60, pid.size).astype(np.uint16)
    order = np.lexsort((t, trig))
    return trig[order], x[order], y[order], t[order], tot[order]


def reference_forest(trig, x, y, t, tot, thr, radius, window):
    parent = np.empty(t.size, np.int32)
    n = _union_pass(trig, x, y, t, tot, thr, radius, window, int(x.max()) + 1, int(y.max()) + 1, parent)
    return parent, n


@pytest.mark.parametrize("seed,t_step,radius,thr", [(0, 3000, 1, 0), (1, 30000, 2, 10), (2, 500, 0, 0),
                                                    (3, 2 ** 48, 1, 5)])
def test_packed_pass_fills_the_same_forest(seed, t_step, radius, thr):
    trig, x, y, t, tot = blobs(3000, seed, t_step)
    window = int(ns_to_units(200.0))
    ref, n_ref = reference_forest(trig, x, y, t, tot, thr, radius, window)
    parent = np.empty(t.size, np.int32)
    n = union_pass_packed(trig, x, y, t, tot, thr, radius, window, int(x.max()) + 1, int(y.max()) + 1, parent)
    assert n == n_ref
    np.testing.assert_array_equal(parent, ref)
    labels, n_lab = labels_from_parent(parent.copy())
    assert n_lab == n_ref and labels.max() == n_ref - 1


def test_packed_pass_shifts_keys_down_with_live_hits():
    """One trigger whose times run far past the key limit (2^(61 - 12) for 3000 hits) in small
    steps: the map is shifted many times while clusters are open."""
    trig, x, y, t, tot = blobs(600, 4, 1 << 43, n_trig=1)
    assert t.max() - t.min() > 1 << 52
    window = int(ns_to_units(500.0))
    ref, n_ref = reference_forest(trig, x, y, t, tot, 0, 1, window)
    parent, n = union_pass(trig, x, y, t, tot, 0, 1, window, int(x.max()) + 1, int(y.max()) + 1)
    assert n == n_ref
    np.testing.assert_array_equal(parent, ref)


def test_wide_windows_take_the_two_map_pass():
    assert fits(10, MAX_WINDOW) and not fits(10, MAX_WINDOW + 1) and not fits(2 ** 31, 100)
    trig, x, y, t, tot = blobs(500, 5, 3000)
    window = int(ns_to_units(1e7))  # 10 ms, beyond the packed pass
    ref, n_ref = reference_forest(trig, x, y, t, tot, 0, 1, window)
    parent, n = union_pass(trig, x, y, t, tot, 0, 1, window, 64, 64)
    assert n == n_ref
    np.testing.assert_array_equal(parent, ref)


def numpy_centroids(trig, x, y, t, tot, labels, min_size, tw_units):
    """Reference centroids with numpy: clusters in first-hit order, then a stable sort."""
    lab = labels[labels >= 0]
    idx = np.flatnonzero(labels >= 0)
    n = int(lab.max()) + 1
    first = idx[np.unique(lab, return_index=True)[1]]
    w = tot[idx].astype(np.int64)
    size = np.bincount(lab, minlength=n)
    wsum = np.zeros(n, np.int64)
    sx = np.zeros(n, np.int64)
    sy = np.zeros(n, np.int64)
    st = np.zeros(n, np.int64)
    tmax = np.zeros(n, np.int64)
    np.add.at(wsum, lab, w)
    np.add.at(sx, lab, x[idx].astype(np.int64) * w)
    np.add.at(sy, lab, y[idx].astype(np.int64) * w)
    np.add.at(st, lab, (t[idx] - t[first][lab]) * w)
    np.maximum.at(tmax, lab, w)
    tof = t[first] + (2 * st + wsum) // (2 * wsum)
    if tw_units.size:
        tof = tof - tw_units[np.clip(tmax - 1, 0, tw_units.size - 1)]
    keep = size >= min_size
    cols = dict(trigger_nr=trig[first], x=(sx / wsum).astype(np.float32), y=(sy / wsum).astype(np.float32),
                tof=tof, tot_sum=wsum.astype(np.uint32), tot_avg=(wsum / size).astype(np.float32),
                tot_max=tmax.astype(np.uint16), size=size.astype(np.uint32))
    cols = {k: v[keep] for k, v in cols.items()}
    order = np.lexsort((cols["tof"], cols["trigger_nr"]))
    return {k: v[order] for k, v in cols.items()}


@pytest.mark.parametrize("lut_ns", [None, np.linspace(150.0, 0.0, 200), np.linspace(5e6, 0.0, 60)])
def test_centroids_come_out_sorted_like_a_stable_sort(lut_ns):
    """The in-kernel ordering equals a stable (trigger_nr, tof) sort of the first-hit order;
    the 5 ms time-walk table reorders far beyond the insertion budget."""
    trig, x, y, t, tot = blobs(4000, 6, 4000)
    window = int(ns_to_units(200.0))
    tw = C._tw_units(lut_ns)
    parent, ncl = union_pass(trig, x, y, t, tot, 0, 1, window, 64, 64)
    labels, _ = labels_from_parent(parent.copy())
    cen = C._sorted_centroids(C._accumulate(parent, True, ncl, trig, x, y, t, tot, 2, tw))
    ref = numpy_centroids(trig, x, y, t, tot, labels, 2, tw)
    assert len(cen) > 1000
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(cen, f), ref[f], err_msg=f)
        assert getattr(cen, f).dtype == ref[f].dtype, f
    # the same through the public entry point
    got = C.calculate_centroids(dict(trigger_nr=trig, x=x, y=y, tof=t, tot=tot), min_cluster_size=2,
                                cent_timewalk_lut=lut_ns)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(got, f), ref[f], err_msg=f)


def test_one_pass_validation_names_the_bad_field():
    trig, x, y, t, tot = blobs(200, 7, 3000)
    good = dict(trigger_nr=trig, x=x, y=y, tof=t, tot=tot)
    assert len(C.calculate_centroids(good, min_cluster_size=1)) > 0
    cases = [(dict(tot=tot.astype(np.int64) - 5), "tot must be >= 0"),
             (dict(x=x.astype(np.int64) - 3), "x pixel coordinates"),
             (dict(y=y.astype(np.int64) + 5000), "y pixel coordinates"),
             (dict(tof=t + (1 << 62)), "within"),
             (dict(x=x.astype(np.float64)), "x must be integer")]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            C.calculate_centroids({**good, **change})


def test_unsorted_and_narrow_typed_input_gives_the_same_centroids():
    trig, x, y, t, tot = blobs(2000, 8, 3000)
    ref = C.calculate_centroids(dict(trigger_nr=trig, x=x, y=y, tof=t, tot=tot))
    perm = np.random.default_rng(1).permutation(t.size)
    other = [C.calculate_centroids(dict(trigger_nr=trig[perm], x=x[perm], y=y[perm], tof=t[perm], tot=tot[perm])),
             C.calculate_centroids(dict(trigger_nr=trig.astype(np.int32), x=x.astype(np.int32),
                                        y=y.astype(np.int64), tof=t, tot=tot.astype(np.int32)))]
    assert len(ref) > 100
    for got in other:
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)


def test_workspace_reuses_per_thread_and_caps_what_it_keeps(monkeypatch):
    import threading

    from tango_tpx.processing import fastcentroids as F

    ws = F.Workspace()
    a = ws.array("parent", 1000, np.int32)
    b = ws.array("parent", 500, np.int32)
    assert a.size == 1000 and b.size == 500 and np.shares_memory(a, b)
    assert not np.shares_memory(ws.array("parent", 2000, np.int32), a)  # grown
    seen = {}
    th = threading.Thread(target=lambda: seen.update(other=ws.array("parent", 10, np.int32)))
    th.start()
    th.join(timeout=30)
    assert not np.shares_memory(seen["other"], ws.array("parent", 10, np.int32))  # one set per thread
    monkeypatch.setattr(F, "WORKSPACE_MAX_BYTES", 4096)
    big = ws.array("sums", 10_000, np.int64)
    assert big.size == 10_000 and "sums" not in ws.arrays
    # repeated calls through the workspace give the same centroids as a fresh run
    trig, x, y, t, tot = blobs(3000, 9, 3000)
    ev = dict(trigger_nr=trig, x=x, y=y, tof=t, tot=tot)
    first = C.calculate_centroids(ev)
    C.calculate_centroids({k: v[: v.size // 2] for k, v in ev.items()})
    again = C.calculate_centroids(ev)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(again, f), getattr(first, f), err_msg=f)
