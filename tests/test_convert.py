"""Offline conversion raw/.tpx3 -> HDF5 (tango_tpx.io.convert, the convert CLI, RawFileSampler).

Values are checked against an independent plain-numpy decode written here from the
format notes (docs/tpx3-spidr-format.md), and against simulator ground truth.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter)
import numpy as np
import pytest

from tango_tpx.io import hdf5 as H
from tango_tpx.io.cli import main as cli_main
from tango_tpx.io.convert import ConversionError, convert_file, partial_path
from tango_tpx.io.hdf5 import check_layout, is_complete, read_table
from tango_tpx.tpx3.encode import (
    encode_control,
    encode_global_time,
    encode_pixels,
    encode_tdc,
    quantize_pixel_toa,
    quantize_tdc_time,
)
from tango_tpx.tpx3.files import RawFileWriter, Tpx3FileWriter, quad_to_frame

from .conftest import CAPTURES
from .test_pipeline_helpers import child_pids, pid_alive

REPO = Path(__file__).resolve().parents[1]
needs_captures = pytest.mark.skipif(not (CAPTURES / "centroid_pipeline_test.raw").exists()
                                    or not (CAPTURES / "out_5sec.raw").exists(),
                                    reason=f"real SPIDR captures not found in {CAPTURES}")
UNIT_S = 25 / 4096 * 1e-9
UNITS_PER_US = 4096 * 40


# ------------------------------------------------------------------------------------------
# independent reference: plain numpy, straight from the format notes
# ------------------------------------------------------------------------------------------
def spec_read_words(path: Path) -> np.ndarray:
    b = path.read_bytes()
    first = int.from_bytes(b[:8], "little")
    # pymepix header: a time_ns (2000..2100) whose top nibble is not a packet type
    has_header = ((first >> 60) & 0xF) not in (0x4, 0x6, 0x7, 0xA, 0xB) and 946684800e9 <= first <= 4102444800e9
    body = b[8:] if has_header else b
    body = body[: len(body) // 8 * 8]
    return np.frombuffer(body, "<u8").astype(np.uint64)


def spec_correct(t: np.ndarray, L: np.ndarray) -> np.ndarray:
    d = ((L >> 28) & 3) - ((t >> 28) & 3)
    base = np.where((d == 1) | (d == -3), L - 0x10000000, np.where((d == -1) | (d == 3), L + 0x10000000, L))
    return (base & 0xFFFFC0000000) | (t & 0x3FFFFFFF)


def spec_decode(words: np.ndarray):
    """-> dict(pixels: x, y, toa [fine units], tot [counts]; tdc: channel, rising, time)."""
    w = words
    hdr = ((w >> np.uint64(60)) & np.uint64(0xF)).astype(np.int64)
    sub = ((w >> np.uint64(56)) & np.uint64(0xF)).astype(np.int64)
    wi = w.astype(np.int64)  # bit 63 set words become negative but we only mask below 60 bits
    # longtime in force at each word: latest LSB/MSB pair; before the first pair use the first pair
    lsb_pos = np.flatnonzero((hdr == 4) & (sub == 4))
    msb_pos = np.flatnonzero((hdr == 4) & (sub == 5))
    pair_L, pair_pos = [], []
    for m in msb_pos:
        prev = lsb_pos[lsb_pos < m]
        if len(prev):
            lsb = (int(w[prev[-1]]) >> 16) & 0xFFFFFFFF
            msb = (int(w[m]) >> 16) & 0xFFFF
            pair_L.append((msb << 32) | lsb)
            pair_pos.append(m)
    assert pair_L, "file has no global time pair"
    pair_L = np.array(pair_L, np.int64)
    k = np.searchsorted(np.array(pair_pos), np.arange(len(w)), side="right") - 1
    L = pair_L[np.maximum(k, 0)]

    pm = (hdr == 0xA) | (hdr == 0xB)
    p = wi[pm] & 0x0FFFFFFFFFFFFFFF
    dcol = (p & 0x0FE0000000000000) >> 52
    spix = (p & 0x001F800000000000) >> 45
    pix = (p & 0x0000700000000000) >> 44
    col = dcol + pix // 4
    row = spix + (pix & 3)
    data = (p & 0x00000FFFFFFF0000) >> 16
    toa_c = (data >> 14) & 0x3FFF
    tot = (data >> 4) & 0x3FF
    ftoa = data & 0xF
    spidr = p & 0xFFFF
    T = spec_correct((spidr << 14) | toa_c, L[pm])
    kk = (col // 2) % 16
    kk = np.where(kk == 0, 16, kk)
    toa = (T << 12) - (ftoa << 8) + (kk << 8)

    tm = (hdr == 6) & np.isin(sub, [0xF, 0xA, 0xE, 0xB]) | (hdr == 4) & np.isin(sub, [0xF, 0xA])
    t = wi[tm] & 0x0FFFFFFFFFFFFFFF
    tsub = sub[tm]
    coarse = (t >> 12) & 0xFFFFFFFF
    f = (t >> 5) & 0xF
    valid = (f >= 1) & (f <= 12)
    fine = ((f - 1) << 9) // 12
    tf = (t & 0xE00) | (fine & 0x1FF)
    ttime = (spec_correct(coarse, L[tm]) << 12) + tf
    channel = np.where(np.isin(tsub, [0xF, 0xA]), 1, 2)
    rising = np.isin(tsub, [0xF, 0xE])
    return dict(x=col, y=row, toa=toa, tot=tot,
                tdc_channel=channel[valid], tdc_rising=rising[valid], tdc_time=ttime[valid])


def spec_events(d, window=(0.0, np.inf)):
    """Assign pixels to the last TDC1 rising edge at or before them; ToF window in s."""
    trig = np.sort(d["tdc_time"][(d["tdc_channel"] == 1) & d["tdc_rising"]])
    idx = np.searchsorted(trig, d["toa"], side="right") - 1
    ok = idx >= 0
    tof = d["toa"] - trig[np.maximum(idx, 0)]
    tof_s = tof * UNIT_S
    ok &= (tof_s >= window[0]) & (tof_s <= window[1])
    return dict(trigger_nr=idx[ok], x=d["x"][ok], y=d["y"][ok], tof=tof[ok], tot=d["tot"][ok],
                toa=d["toa"][ok]), trig


def sort_rows(cols: dict, keys: list[str]) -> dict:
    order = np.lexsort([cols[k] for k in reversed(keys)])
    return {k: np.asarray(v)[order] for k, v in cols.items()}


# ------------------------------------------------------------------------------------------
# synthetic data with known clusters (encoder), for the robustness tests
# ------------------------------------------------------------------------------------------
def synth_words(n_trig=20, clusters=10, seed=0, period_us=1000, t0_ticks=40_000_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = [np.array(encode_global_time(t0_ticks), np.uint64)]
    base = t0_ticks * 4096
    for k in range(n_trig):
        tt = int(quantize_tdc_time(base + (k + 1) * period_us * UNITS_PER_US))
        fall = int(quantize_tdc_time(tt + 50 * UNITS_PER_US))
        out.append(encode_tdc(np.array([1, 1]), np.array([True, False]), np.array([tt, fall]), np.array([k, k])))
        xs, ys, ts, tots = [], [], [], []
        for c in range(clusters):
            n = int(rng.integers(3, 8))
            cx, cy = rng.integers(5, 250, 2)
            tof = int(rng.integers(1, period_us - 10)) * UNITS_PER_US
            xs.append(cx + rng.integers(-1, 2, n))
            ys.append(cy + rng.integers(-1, 2, n))
            ts.append(tt + tof + rng.integers(0, 20 * 256, n))
            tots.append(rng.integers(5, 200, n))
        t = quantize_pixel_toa(np.concatenate(ts))
        o = np.argsort(t, kind="stable")
        out.append(encode_pixels(np.concatenate(xs)[o], np.concatenate(ys)[o], t[o], np.concatenate(tots)[o]))
    return np.concatenate(out)


def write_raw(path: Path, words: np.ndarray, header: bool = True) -> Path:
    with RawFileWriter(path, time_ns=1_700_000_000_000_000_000, header=header) as f:
        f.write(words)
    return path


def all_datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {p: f[p][()] for p in H.DATASETS}


# ------------------------------------------------------------------------------------------
# real captures
# ------------------------------------------------------------------------------------------
@needs_captures
def test_centroid_pipeline_capture_matches_spec(tmp_path):
    src = CAPTURES / "centroid_pipeline_test.raw"
    out = tmp_path / "cpt.h5"
    r = convert_file(src, out)
    assert r.complete and is_complete(out) and check_layout(out) == []
    # counts from the format notes: 1858 pixels, 14+14 TDC1, 1100+1101 TDC2 words
    assert r.hits == 1858
    assert r.word_counts["pixels"] == 1858 and r.word_counts["tdc"] == 14 + 14 + 1100 + 1101
    ref, trig = spec_events(spec_decode(spec_read_words(src)))
    assert len(trig) == 14 and r.triggers == 14
    raw = read_table(out, "raw")
    assert len(raw["x"]) == len(ref["x"]) == r.events
    assert r.events + r.processing["before_first_trigger"] == 1858
    got = sort_rows({"trigger nr": raw["trigger nr"], "tof": raw["tof"], "x": raw["x"], "y": raw["y"],
                     "tot": raw["tot"]}, ["trigger nr", "tof", "x", "y", "tot"])
    exp = sort_rows({"trigger nr": ref["trigger_nr"], "tof": ref["tof"] * UNIT_S, "x": ref["x"], "y": ref["y"],
                     "tot": ref["tot"] * 25}, ["trigger nr", "tof", "x", "y", "tot"])
    np.testing.assert_array_equal(got["trigger nr"], exp["trigger nr"])
    np.testing.assert_array_equal(got["x"], exp["x"])
    np.testing.assert_array_equal(got["y"], exp["y"])
    np.testing.assert_array_equal(got["tot"], exp["tot"])
    assert np.max(np.abs(got["tof"] - exp["tof"])) <= 1e-9
    assert raw["x"].dtype == np.uint16 and raw["tof"].dtype == np.float64 and raw["tot"].dtype == np.uint32
    # rows come sorted by ToA: trigger nr never decreases
    assert np.all(np.diff(raw["trigger nr"]) >= 0)
    # triggers: timing/timepix = the 14 TDC1 rising edges, trigger1/2 = every edge with its sign
    tp = read_table(out, "timing/timepix")
    np.testing.assert_array_equal(tp["trigger nr"], np.arange(14))
    assert np.max(np.abs(tp["event trigger"] - trig * UNIT_S)) <= 1e-9
    np.testing.assert_array_equal(tp["trigger time"], np.rint(trig * 25 / 4096).astype(np.uint64))
    header_ns = int.from_bytes(src.read_bytes()[:8], "little")           # pymepix: header + trigger time
    np.testing.assert_array_equal(tp["timestamp"], np.rint(trig * 25 / 4096).astype(np.uint64) + np.uint64(header_ns))
    d = spec_decode(spec_read_words(src))
    for ch in (1, 2):
        t = read_table(out, f"triggers/trigger{ch}")["time"]
        m = d["tdc_channel"] == ch
        exp_t = np.where(d["tdc_rising"][m], 1, -1) * d["tdc_time"][m] * UNIT_S
        assert len(t) == m.sum() == (28 if ch == 1 else 2201)
        assert np.max(np.abs(t - exp_t)) <= 1e-9
    # centroids: present, inside the sensor, each with >= 3 hits (fast default) and in trigger order
    cen = read_table(out, "centroided")
    assert r.centroids == len(cen["x"]) > 0
    assert np.all((cen["x"] >= 0) & (cen["x"] <= 255)) and np.all(cen["clustersize"] >= 3)
    assert np.all(np.diff(cen["trigger nr"]) >= 0)
    assert cen["clustersize"].sum() <= r.events
    with h5py.File(out, "r") as f:
        assert f.attrs["source_header_time_ns"] == 1667991101711283699  # the 8-byte header
        assert f.attrs["clustering_algorithm"] == "fast"
        np.testing.assert_array_equal(f.attrs["event_window"], [0.0, np.inf])


@needs_captures
def test_out_5sec_capture_matches_spec(tmp_path):
    src = CAPTURES / "out_5sec.raw"
    out = tmp_path / "o5.h5"
    r = convert_file(src, out, number_of_processes=2)
    assert r.complete and is_complete(out)
    wc = r.word_counts
    assert (wc["pixels"], wc["global_lsb"], wc["global_msb"], wc["control"], wc["tdc"]) == (518047, 4, 4, 8, 156)
    assert r.skipped_words == 0  # the 0x71 control words are valid SPIDR words
    ref, trig = spec_events(spec_decode(spec_read_words(src)))
    assert r.triggers == len(trig) == 39
    raw = read_table(out, "raw")
    assert len(raw["x"]) == len(ref["x"])
    got = sort_rows({"trigger nr": raw["trigger nr"], "tof": raw["tof"], "x": raw["x"], "y": raw["y"],
                     "tot": raw["tot"]}, ["trigger nr", "tof", "x", "y", "tot"])
    exp = sort_rows({"trigger nr": ref["trigger_nr"], "tof": ref["tof"] * UNIT_S, "x": ref["x"], "y": ref["y"],
                     "tot": ref["tot"] * 25}, ["trigger nr", "tof", "x", "y", "tot"])
    for k in ("trigger nr", "x", "y", "tot"):
        np.testing.assert_array_equal(got[k], exp[k])
    assert np.max(np.abs(got["tof"] - exp["tof"])) <= 1e-9
    assert raw["tof"].max() < 0.1001  # 10 Hz triggers: ToF up to 100 ms is kept
    with h5py.File(out, "r") as f:
        assert f.attrs["source_header_time_ns"] == -1  # header-less file
        assert f["triggers/trigger1/time"].shape == (78,)
        assert f["triggers/trigger2/time"].shape == (78,)


# ------------------------------------------------------------------------------------------
# simulator ground truth
# ------------------------------------------------------------------------------------------
def _match_truth(cen: dict, parts) -> np.ndarray:
    """Per true particle: True if the nearest centroid of its trigger is within 0.5 px / 2 ns
    and carries the same summed ToT."""
    ct = cen["trigger nr"]
    starts = np.searchsorted(ct, np.arange(int(ct.max()) + 2 if len(ct) else 1))
    ok = np.zeros(len(parts), bool)
    for i in range(len(parts)):
        t = int(parts.trigger_nr[i])
        if t < 0 or t + 1 >= len(starts) or starts[t] == starts[t + 1]:
            continue
        a, b = starts[t], starts[t + 1]
        dx = cen["x"][a:b] - parts.x[i]
        dy = cen["y"][a:b] - parts.y[i]
        dt = cen["tof"][a:b] - parts.tof[i] * UNIT_S
        j = int(np.argmin(dx * dx + dy * dy + (dt / 2e-9) ** 2))
        ok[i] = (abs(dx[j]) <= 0.5 and abs(dy[j]) <= 0.5 and abs(dt[j]) <= 2e-9
                 and cen["tot sum"][a + j] == 25 * int(parts.tot_sum[i]))
    return ok


def test_simulated_file_centroids_match_truth(tmp_path):
    from tango_tpx.simulator import SimConfig, simulate

    words, truth = simulate(SimConfig(rate_mhits=0.3, duration_s=0.2, seed=3, trigger_hz=1000.0))
    src = write_raw(tmp_path / "sim.raw", words)
    parts = truth.particles
    assert len(parts) > 5000
    # every cluster kept (size >= 1): every particle is found
    out = tmp_path / "all.h5"
    r = convert_file(src, out, event_window=(0.0, 1e-3), clustering_args={"min_cluster_size": 1})
    assert r.complete and r.triggers == len(truth.trigger_time)
    ok = _match_truth(read_table(out, "centroided"), parts)
    assert ok.mean() >= 0.99, f"{ok.sum()}/{len(ok)} particles matched within 0.5 px / 2 ns"
    # the fast default drops clusters of < 3 hits: every particle of >= 3 hits is found
    out3 = tmp_path / "default.h5"
    convert_file(src, out3, event_window=(0.0, 1e-3), number_of_processes=2)
    big = np.asarray(parts.n_hits) >= 3
    ok3 = _match_truth(read_table(out3, "centroided"), parts.take(big))
    assert ok3.mean() >= 0.99, f"{ok3.sum()}/{len(ok3)} particles (>= 3 hits) matched"
    # raw rows are exactly the simulated hits after the first trigger (window 0..1 ms)
    raw = read_table(out, "raw")
    hits = truth.hits
    tn = np.searchsorted(truth.trigger_time, hits.toa, side="right") - 1
    tof = hits.toa - truth.trigger_time[np.maximum(tn, 0)]
    keep = (tn >= 0) & (tof <= 40_000 * 4096)
    assert len(raw["x"]) == int(keep.sum())


# ------------------------------------------------------------------------------------------
# determinism across processes and chunkings
# ------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_same_output_for_1_and_2_workers_threads_and_processes(tmp_path):
    src = write_raw(tmp_path / "s.raw", synth_words(60, 30, seed=5))
    a, b = tmp_path / "n1.h5", tmp_path / "n2.h5"
    ra = convert_file(src, a, number_of_processes=1)
    rb = convert_file(src, b, number_of_processes=2, chunk_words=997, batch_hits=300)
    assert ra.centroids > 1000 and ra.centroids == rb.centroids and ra.events == rb.events
    # DBSCAN mode too (it clusters chunks of whole triggers: batching must not matter)
    d1, d2 = tmp_path / "d1.h5", tmp_path / "d2.h5"
    convert_file(src, d1, dbscan=True)
    convert_file(src, d2, dbscan=True, number_of_processes=2, chunk_words=997, batch_hits=300)
    x1, x2 = all_datasets(d1), all_datasets(d2)
    assert len(x1["centroided/x"]) > 1000
    for path in H.DATASETS:
        np.testing.assert_array_equal(x1[path], x2[path], err_msg=path)
    # tiny shared-memory slots: most batches travel pickled instead (the fallback path)
    c = tmp_path / "n3.h5"
    rc = convert_file(src, c, number_of_processes=3, chunk_words=50, batch_hits=10, worker_kind="processes")
    assert rc.centroids == ra.centroids
    da, db, dc = all_datasets(a), all_datasets(b), all_datasets(c)
    for path in H.DATASETS:
        assert da[path].dtype == db[path].dtype == dc[path].dtype, path
        np.testing.assert_array_equal(da[path], db[path], err_msg=path)
        np.testing.assert_array_equal(da[path], dc[path], err_msg=path)


def test_progress_callback_and_no_centroid(tmp_path):
    src = write_raw(tmp_path / "s.raw", synth_words(10, 5, seed=1))
    seen: list[float] = []
    r = convert_file(src, tmp_path / "o.h5", centroiding=False, chunk_words=40, progress_callback=seen.append)
    assert len(seen) >= 5 and seen[-1] == 1.0 and all(b >= a for a, b in zip(seen, seen[1:]))
    assert r.centroids == 0 and r.events > 0
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["centroided/x"].shape == (0,) and f.attrs["clustering_algorithm"] == "none"


def test_event_window_filters_tof(tmp_path):
    src = write_raw(tmp_path / "s.raw", synth_words(10, 20, seed=2))
    r_all = convert_file(src, tmp_path / "all.h5", centroiding=False)
    r_win = convert_file(src, tmp_path / "win.h5", centroiding=False, event_window=(200e-6, 500e-6))
    tof_all = read_table(tmp_path / "all.h5", "raw")["tof"]
    tof_win = read_table(tmp_path / "win.h5", "raw")["tof"]
    expected = np.sort(tof_all[(tof_all >= 200e-6) & (tof_all <= 500e-6)])
    np.testing.assert_array_equal(np.sort(tof_win), expected)
    assert 0 < r_win.events < r_all.events


def test_quad_tpx3_file(tmp_path):
    """Two chips in an ASI .tpx3 file: layout detected as quad, pixels in the 516x516 frame."""
    tt = int(quantize_tdc_time(40_000_000 * 4096 + UNITS_PER_US))
    rng = np.random.default_rng(7)
    hits = {}
    src = tmp_path / "quad.tpx3"
    with Tpx3FileWriter(src) as f:
        lsb, msb = encode_global_time(40_000_000)
        f.write_chip(0, np.array([lsb, msb], np.uint64))
        f.write_chip(0, encode_tdc(1, True, tt, 0).reshape(1))
        for chip in (0, 1):
            x, y = rng.integers(0, 256, 20), rng.integers(0, 256, 20)
            toa = quantize_pixel_toa(tt + rng.integers(1, 500, 20) * UNITS_PER_US)
            tot = rng.integers(1, 100, 20)
            hits[chip] = (x, y, toa, tot)
            f.write_chip(chip, encode_pixels(x, y, toa, tot))
    r = convert_file(src, tmp_path / "quad.h5", centroiding=False)
    assert r.hits == 40 and r.events == 40
    raw = read_table(tmp_path / "quad.h5", "raw")
    ex, ey, etof, etot = [], [], [], []
    for chip, (x, y, toa, tot) in hits.items():
        X, Y = quad_to_frame(x, y, np.full(len(x), chip))
        ex.append(X), ey.append(Y), etof.append((toa - tt) * UNIT_S), etot.append(tot * 25)
    exp = sort_rows({"tof": np.concatenate(etof), "x": np.concatenate(ex), "y": np.concatenate(ey),
                     "tot": np.concatenate(etot)}, ["tof", "x", "y"])
    got = sort_rows({"tof": raw["tof"], "x": raw["x"], "y": raw["y"], "tot": raw["tot"]}, ["tof", "x", "y"])
    for k in ("x", "y", "tot"):
        np.testing.assert_array_equal(got[k], exp[k])
    assert np.max(np.abs(got["tof"] - exp["tof"])) <= 1e-9
    with h5py.File(tmp_path / "quad.h5", "r") as f:
        assert f.attrs["layout"] == "quad" and f.attrs["source_kind"] == "tpx3"


# ------------------------------------------------------------------------------------------
# bad input, CLI behaviour
# ------------------------------------------------------------------------------------------
def run_cli(*args: str) -> int:
    return cli_main(["convert", *map(str, args), "-q"])


def test_truncated_last_word_is_counted(tmp_path, capsys):
    words = synth_words(5, 5, seed=3)
    full = write_raw(tmp_path / "full.raw", words)
    cut = tmp_path / "cut.raw"
    cut.write_bytes(full.read_bytes()[:-3])
    assert run_cli(cut, "-o", tmp_path / "cut.h5") == 0
    assert "5 trailing bytes" in capsys.readouterr().err
    with h5py.File(tmp_path / "cut.h5", "r") as f:
        assert f.attrs["trailing_bytes"] == 5 and f.attrs["complete"]
        assert f["raw/x"].shape[0] == len(words) - 2 - 2 * 5 - 1  # every hit but the cut last one


def test_random_bytes_in_the_middle_are_counted_and_skipped(tmp_path):
    words = synth_words(20, 10, seed=4)
    clean = write_raw(tmp_path / "clean.raw", words)
    b = bytearray(clean.read_bytes())
    mid = len(b) // 2 // 8 * 8
    b[mid:mid + 800] = np.random.default_rng(0).integers(0, 256, 800, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.raw"
    bad.write_bytes(bytes(b))
    r_clean = convert_file(clean, tmp_path / "clean.h5", centroiding=False)
    r = convert_file(bad, tmp_path / "bad.h5", centroiding=False)
    assert r.complete and is_complete(tmp_path / "bad.h5")
    assert r.skipped_words >= 50 and r_clean.skipped_words == 0
    assert r.word_counts["other"] + r.word_counts["tdc_invalid"] == r.skipped_words
    assert r.hits >= r_clean.hits - 100  # at most the 100 overwritten words were lost


@pytest.mark.parametrize("kind", ["empty", "directory", "missing"])
def test_unusable_inputs_give_clear_errors(tmp_path, capsys, kind):
    src = tmp_path / "in.raw"
    if kind == "empty":
        src.write_bytes(b"")
        msg = "empty"
    elif kind == "directory":
        src.mkdir()
        msg = "directory"
    else:
        msg = "no such file"
    out = tmp_path / "o.h5"
    assert run_cli(src, "-o", out) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists() and not partial_path(out).exists()


def test_nothing_convertible_fails_without_output(tmp_path, capsys):
    src = write_raw(tmp_path / "ctl.raw", encode_control(np.full(100, 0x44), np.arange(100)))
    out = tmp_path / "o.h5"
    assert run_cli(src, "-o", out) == 1
    assert "nothing to convert" in capsys.readouterr().err
    assert not out.exists() and not partial_path(out).exists()
    with pytest.raises(ConversionError):
        convert_file(src, out)


def test_force_is_needed_to_replace_output(tmp_path, capsys):
    src = write_raw(tmp_path / "s.raw", synth_words(4, 4, seed=6))
    out = tmp_path / "o.h5"
    out.write_bytes(b"precious")
    assert run_cli(src, "-o", out) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert run_cli(src, "-o", out, "--force") == 0
    assert is_complete(out) and read_table(out, "raw")["x"].size > 0
    assert not partial_path(out).exists()


def test_cli_options_reach_the_file(tmp_path, capsys):
    src = write_raw(tmp_path / "s.raw", synth_words(6, 6, seed=8))
    tw = tmp_path / "tw.npy"
    np.save(tw, np.linspace(50.0, 0.0, 100))
    out = tmp_path / "o.h5"
    rc = run_cli(src, "-o", out, "-n", "2", "--dbscan", "--event-window", "0", "0.0005",
                 "--timewalk", tw, "--cent-timewalk", tw, "--json")
    assert rc == 0
    import json
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"] and summary["output"] == str(out.resolve())
    with h5py.File(out, "r") as f:
        assert f.attrs["clustering_algorithm"] == "dbscan"
        np.testing.assert_array_equal(f.attrs["event_window"], [0.0, 0.0005])
        assert f.attrs["timewalk_file"] == str(tw.resolve()) == f.attrs["cent_timewalk_file"]
        assert f["raw/tof"][()].max() <= 0.0005
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([np.nan, 1.0]))
    assert run_cli(src, "-o", tmp_path / "o2.h5", "--timewalk", bad) == 2
    assert "NaN" in capsys.readouterr().err


def test_rawfilesampler_pymepix_api(tmp_path):
    from tango_tpx.processing.rawfilesampler import RawFileSampler

    src = write_raw(tmp_path / "s.raw", synth_words(8, 8, seed=9))
    seen = []
    out = tmp_path / "rfs.h5"
    out.write_bytes(b"old")  # pymepix replaced an existing output
    s = RawFileSampler(str(src), str(out), number_of_processes=1, progress_callback=seen.append,
                       clustering_args={"min_samples": 3}, dbscan_clustering=True)
    s.run()
    assert is_complete(out) and seen and seen[-1] == 1.0
    ref = tmp_path / "ref.h5"
    convert_file(src, ref, dbscan=True, clustering_args={"min_samples": 3})
    da, db = all_datasets(out), all_datasets(ref)
    for p in H.DATASETS:
        np.testing.assert_array_equal(da[p], db[p], err_msg=p)
    # saveToHDF5 with pymepix tuples appends in file units
    tup = tmp_path / "tup.h5"
    raw = (np.array([0, 1]), np.array([3, 4]), np.array([5, 6]), np.array([1e-6, 2e-6]), np.array([25, 50]))
    clusters = (np.array([0]), np.array([3.5]), np.array([5.5]), np.array([1.5e-6]), np.array([37.5]),
                np.array([50]), np.array([2]))
    s.saveToHDF5(str(tup), raw, clusters, (np.array([0, 1]), np.array([500_000_000, 600_000_000], np.uint64)),
                 np.array([0.5, -0.5]), None)   # pymepix timestamps: uint64 ns
    s.saveToHDF5(str(tup), raw, None, None, None, np.array([0.7]))
    assert check_layout(tup) == [] and is_complete(tup)
    r = read_table(tup, "raw")
    np.testing.assert_array_equal(r["x"], [3, 4, 3, 4])
    np.testing.assert_array_equal(r["tot"], [25, 50, 25, 50])
    c = read_table(tup, "centroided")
    assert c["tot sum"][0] == 75 and c["clustersize"][0] == 2
    tp = read_table(tup, "timing/timepix")
    np.testing.assert_array_equal(tp["timestamp"], [500_000_000, 600_000_000])
    np.testing.assert_array_equal(read_table(tup, "triggers/trigger2")["time"], [0.7])


# ------------------------------------------------------------------------------------------
# interruption: Ctrl-C, SIGTERM, SIGKILL
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_input(tmp_path_factory) -> Path:
    """~0.6 M hits: DBSCAN needs several seconds for it."""
    return write_raw(tmp_path_factory.mktemp("slow") / "slow.raw", synth_words(300, 400, seed=11))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_conversion_leaves_no_complete_looking_file(tmp_path, slow_input, sig):
    out = tmp_path / "o.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "tango_tpx.io.cli", "convert", str(slow_input), "-o", str(out),
                             "--dbscan", "-n", "2", "--chunk-words", "20000", "--batch-hits", "20000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.decode() for ln in proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        # wait until the work is under way: progress reported (every 10 %) and the workers run
        while time.monotonic() < deadline and not (any("%" in ln for ln in lines) and len(child_pids(proc.pid)) >= 2):
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        workers = child_pids(proc.pid)
        assert proc.poll() is None, "conversion finished before it could be interrupted"
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=30)
        reader.join(timeout=10)
        err = "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert not out.exists(), "an interrupted conversion must not leave the final output"
    part = partial_path(out)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        if part.exists():  # may be unreadable, but it is named .partial and never complete
            assert not is_complete(part)
    else:
        assert rc == 130, err
        assert "interrupted" in err
        assert part.exists() and not is_complete(part)
        with h5py.File(part, "r") as f:  # readable, says why
            assert f.attrs["complete"] == np.False_
            assert f.attrs["interrupted"] == ("Ctrl-C (SIGINT)" if sig == signal.SIGINT else "SIGTERM")
            assert f["triggers/trigger1/time"].shape[0] > 0  # what was read is there
    # no orphan workers
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in workers), "worker processes outlived the converter"


# ------------------------------------------------------------------------------------------
# trigger-aligned batches == the sequential PacketProcessor
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [(0.0, np.inf), (0.0, 3e-6), (2e-6, 5e-6)])
def test_batched_events_equal_sequential_packet_processor(tmp_path, window):
    from tango_tpx.processing.events import Events, PacketProcessor
    from tango_tpx.simulator import SimConfig, simulate
    from tango_tpx.tpx3.codec import Decoder
    from tango_tpx.tpx3.files import iter_words

    words, _ = simulate(SimConfig(rate_mhits=0.5, duration_s=0.03, seed=4, trigger_hz=2000.0))
    src = write_raw(tmp_path / "sim.raw", words)
    out = tmp_path / "o.h5"
    r = convert_file(src, out, centroiding=False, event_window=window, chunk_words=3000, batch_hits=1000,
                     number_of_processes=2)
    dec, pp = Decoder(), PacketProcessor(event_window=window)
    parts = [pp.process(dec.decode(w)).events for w in iter_words(src, chunk_words=7777)]
    ev = Events.concat(parts + [pp.flush().events])
    raw = read_table(out, "raw")
    assert len(ev) == len(raw["x"]) == r.events > 1000
    assert r.processing["outside_window"] > 1000 or window[1] == np.inf
    np.testing.assert_array_equal(raw["trigger nr"], ev.trigger_nr)
    np.testing.assert_array_equal(raw["x"], ev.x)
    np.testing.assert_array_equal(raw["y"], ev.y)
    np.testing.assert_array_equal(raw["tot"], ev.tot.astype(np.uint32) * 25)
    np.testing.assert_array_equal(raw["tof"], ev.tof * UNIT_S)
    for k in ("triggers", "before_first_trigger", "outside_window", "late_pixels", "lost_triggers"):
        assert r.processing[k] == pp.stats[k], k


def test_converter_segmenter_memory_stays_bounded_without_triggers_and_with_rare_triggers():
    from tango_tpx.io.batching import process_batch
    from tango_tpx.processing.segmenter import INF, Segmenter
    from tango_tpx.tpx3.hits import PixelHits, Triggers

    slack = 4096 * 40 * 1000  # 1 ms
    step = 4096 * 40          # one pixel per us
    state = {"window_units": (0, INF), "calc": None}

    def pixels(k: int) -> PixelHits:
        t = (np.arange(100) + 100 * k) * step
        return PixelHits(np.zeros(100, np.uint16), np.zeros(100, np.uint16), t, np.ones(100, np.uint16),
                         np.zeros(100, np.uint8))

    # no trigger at all: pixels older than the reorder window go out in batches of no event
    s = Segmenter((0, INF), slack, min_pixels=100)
    before = 0
    for k in range(50):
        s.add_pixels(pixels(k))
        batch = s.release()
        if batch is not None:
            r = process_batch(batch, state)
            assert len(r.raw["x"]) == 0
            before += r.stats["before_first_trigger"]
        assert s.held_pixels <= 100 + 1000 + 100  # batch_hits + reorder window (1000 us) + one chunk
    assert before == 5000 - s.held_pixels
    # one trigger, window 500 us: pixels past its window end go out (outside the window)
    state["window_units"] = (0, 500 * step)
    s = Segmenter((0, 500 * step), slack, min_pixels=100)
    s.add_triggers(Triggers(np.ones(1, np.uint8), np.ones(1, np.bool_), np.zeros(1, np.int64),
                            np.zeros(1, np.uint16), np.zeros(1, np.uint8)))
    events = outside = 0
    for k in range(50):
        s.add_pixels(pixels(k))
        batch = s.release()
        if batch is not None:
            r = process_batch(batch, state)
            events, outside = events + len(r.raw["x"]), outside + r.stats["outside_window"]
        assert s.held_pixels <= 501 + 1000 + 100
    r = process_batch(s.release(final=True), state)
    events, outside = events + len(r.raw["x"]), outside + r.stats["outside_window"]
    assert events == 501 and outside == 5000 - 501 and s.held_pixels == 0


def _in_fresh_interpreter(script: str, *args: str, timeout: float = 90) -> str:
    """Run ``script`` in a new single-threaded interpreter (the fork/shared-memory path of the
    converter's pool is taken only there; this test process runs Tango and Qt threads); its
    stdout, or AssertionError with its stderr."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


_FAILING_WORKER = r"""
import multiprocessing, sys
from pathlib import Path
import tango_tpx.io.pool as pool
from tango_tpx.io.cli import main as cli_main
from tango_tpx.io.convert import convert_file, partial_path

assert pool.single_threaded()
def boom(batch, state, out=None):
    raise ValueError("boom in batch")
pool.process_batch = boom            # forked workers inherit the patch
src, out = sys.argv[1], Path(sys.argv[2])
for kind in ("threads", "processes"):
    try:
        convert_file(src, out, number_of_processes=2, worker_kind=kind)
    except RuntimeError as exc:
        assert "boom in batch" in str(exc), exc
    else:
        raise AssertionError(f"no error from a failing worker ({kind})")
    assert not out.exists() and not partial_path(out).exists()
print("cli", cli_main(["convert", src, "-o", str(out), "-n", "2"]))
assert not out.exists() and not partial_path(out).exists()
assert not multiprocessing.active_children()
"""


@pytest.mark.timeout(120)
def test_failing_worker_gives_clear_error_and_no_output(tmp_path):
    src = write_raw(tmp_path / "s.raw", synth_words(6, 6, seed=12))
    out = _in_fresh_interpreter(_FAILING_WORKER, str(src), str(tmp_path / "o.h5"))
    assert "cli 1" in out


def test_single_chip_tpx3_equals_raw(tmp_path):
    from tango_tpx.simulator import SimConfig, simulate

    words, _ = simulate(SimConfig(rate_mhits=0.3, duration_s=0.02, seed=13, trigger_hz=1000.0))
    raw_src = write_raw(tmp_path / "s.raw", words, header=False)
    tpx3_src = tmp_path / "s.tpx3"
    with Tpx3FileWriter(tpx3_src) as f:
        f.write_chip(0, words, chunk_bytes=8192)
    a, b = tmp_path / "raw.h5", tmp_path / "tpx3.h5"
    ra, rb = convert_file(raw_src, a), convert_file(tpx3_src, b, number_of_processes=2)
    assert ra.hits == rb.hits > 1000 and rb.word_counts["chunk_headers"] > 0
    da, db = all_datasets(a), all_datasets(b)
    for path in H.DATASETS:
        np.testing.assert_array_equal(da[path], db[path], err_msg=path)
    with h5py.File(b, "r") as f:
        assert f.attrs["layout"] == "single" and f.attrs["source_kind"] == "tpx3"


@pytest.mark.timeout(120)
def test_threaded_caller_uses_a_safe_start_method(tmp_path):
    """From a process with other threads the workers are not forked (pickled transport): same output."""
    import tango_tpx.io.pool as conv

    src = write_raw(tmp_path / "s.raw", synth_words(20, 10, seed=14))
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    convert_file(src, a)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert not conv.single_threaded()
        convert_file(src, b, number_of_processes=2, chunk_words=500, batch_hits=200, worker_kind="processes")
    finally:
        stop.set()
        t.join()
    da, db = all_datasets(a), all_datasets(b)
    for path in H.DATASETS:
        np.testing.assert_array_equal(da[path], db[path], err_msg=path)


_SLOTS = r"""
import json, sys
import tango_tpx.io.pool as pool
from tango_tpx.runtime.pool import OrderedPool
from tango_tpx.io.convert import convert_file

assert pool.single_threaded()
sent = {"slot": 0, "pickled": 0}
orig = OrderedPool.close
def close(self, terminate=False):
    for k, v in self.sent.items():
        sent[k] += v
    self.sent = {k: 0 for k in self.sent}
    orig(self, terminate)
OrderedPool.close = close
r = convert_file(sys.argv[1], sys.argv[2], number_of_processes=2, chunk_words=500, batch_hits=200,
                 worker_kind="processes")
print(json.dumps(dict(sent, centroids=r.centroids)))
"""


@pytest.mark.timeout(120)
def test_single_threaded_caller_uses_shared_memory_slots(tmp_path):
    src = write_raw(tmp_path / "s.raw", synth_words(20, 10, seed=15))
    sent = json.loads(_in_fresh_interpreter(_SLOTS, str(src), str(tmp_path / "o.h5")).splitlines()[-1])
    assert sent["slot"] >= 3 and sent["pickled"] == 0 and sent["centroids"] > 0


# ------------------------------------------------------------------------------------------
# train IDs from the live pipeline's side file
# ------------------------------------------------------------------------------------------
def test_train_id_side_file_is_written_to_timing_trainid(tmp_path, capsys):
    from tango_tpx.trainid.protocol import side_file_path

    src = write_raw(tmp_path / "rec.raw", synth_words(5, 3, seed=7))
    side = side_file_path(src)
    assert side.name == "rec.raw.trainid.csv"
    # hand-written rows: host time (ns since the epoch), train id, beam mode word
    side.write_text("timestamp_ns,train_id,beam_mode\n"
                    "1700000000000000000,1000001,0\n"
                    "1700000000100000000,1000002,7\n"
                    "18446744073709551615,18446744073709551614,4294967295\n", encoding="ascii")
    r = convert_file(src, tmp_path / "auto.h5")
    assert r.train_ids == 3 and not r.warnings
    with h5py.File(tmp_path / "auto.h5", "r") as f:
        g = f["timing/trainID"]
        assert g["timestamp"].dtype == np.uint64 and g["train id"].dtype == np.uint64
        assert g["beam mode"].dtype == np.uint32
        assert g["timestamp"][()].tolist() == [1700000000000000000, 1700000000100000000, 2**64 - 1]
        assert g["train id"][()].tolist() == [1000001, 1000002, 2**64 - 2]
        assert g["beam mode"][()].tolist() == [0, 7, 2**32 - 1]
        assert g["timestamp"].attrs["unit"] == "ns" and g["train id"].attrs["unit"] == ""
        assert f.attrs["trainid_file"] == str(side.resolve()) and f.attrs["trainid_rows"] == 3
    assert check_layout(tmp_path / "auto.h5") == []

    # explicit --trainid FILE (another name, another folder) wins over the side file
    other = tmp_path / "elsewhere"
    other.mkdir()
    explicit = other / "beamtime.trainid.csv"
    explicit.write_text("timestamp_ns,train_id,beam_mode\n5,42,1\n", encoding="ascii")
    assert run_cli(str(src), "-o", str(tmp_path / "cli.h5"), "-q", "--trainid", str(explicit)) == 0
    with h5py.File(tmp_path / "cli.h5", "r") as f:
        assert f["timing/trainID/train id"][()].tolist() == [42]
        assert f["timing/trainID/timestamp"][()].tolist() == [5]
        assert f.attrs["trainid_file"] == str(explicit.resolve()) and f.attrs["trainid_rows"] == 1

    # explicit but missing / malformed: clear error, no output; trainid_file=False: none
    capsys.readouterr()
    assert run_cli(str(src), "-o", str(tmp_path / "x.h5"), "-q", "--trainid", str(other / "no.trainid.csv")) == 2
    assert "train-ID file not found" in capsys.readouterr().err
    bad = other / "bad.trainid.csv"
    bad.write_text("timestamp_ns,train_id,beam_mode\n1,2\n", encoding="ascii")
    assert run_cli(str(src), "-o", str(tmp_path / "x.h5"), "-q", "--trainid", str(bad)) == 1
    assert "expected 3 columns" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists() and not partial_path(tmp_path / "x.h5").exists()
    r = convert_file(src, tmp_path / "none.h5", trainid_file=False)
    with h5py.File(tmp_path / "none.h5", "r") as f:
        assert f["timing/trainID/train id"].shape == (0,) and f.attrs["trainid_file"] == ""

    # a malformed side file found next to the input is skipped with a warning
    side.write_text("not,a,header\n1,2,3\n", encoding="ascii")
    r = convert_file(src, tmp_path / "skip.h5")
    assert r.train_ids == 0 and any("side file" in w and "skipped" in w for w in r.warnings)
    with h5py.File(tmp_path / "skip.h5", "r") as f:
        assert f["timing/trainID/train id"].shape == (0,) and f.attrs["trainid_rows"] == 0
