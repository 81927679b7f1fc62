"""HDF5 layout and writer (tango_tpx.io.hdf5): names, dtypes, units, values, completeness."""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter for reading)
import numpy as np
import pytest

from tango_tpx.io import hdf5 as H
from tango_tpx.io.hdf5 import Hdf5Writer, check_layout, is_complete, read_table

# pymepix dataset names that user scripts index by: they must exist.
PYMEPIX_PATHS = [
    "raw/trigger nr", "raw/x", "raw/y", "raw/tof", "raw/tot",
    "centroided/trigger nr", "centroided/x", "centroided/y", "centroided/tof",
    "centroided/tot avg", "centroided/tot max", "centroided/clustersize",
    "timing/timepix/trigger nr", "timing/timepix/event trigger", "timing/timepix/timestamp",
    "triggers/trigger1/time", "triggers/trigger2/time",
    "timing/trainID/timestamp", "timing/trainID/train id", "timing/trainID/beam mode",
]


def make_events(trigger_nr, x, y, tof, tot):
    n = len(x)
    return SimpleNamespace(trigger_nr=np.asarray(trigger_nr, np.int64), x=np.asarray(x, np.uint16),
                           y=np.asarray(y, np.uint16), tof=np.asarray(tof, np.int64),
                           tot=np.asarray(tot, np.uint16), toa=np.zeros(n, np.int64))


def make_centroids(trigger_nr, x, y, tof, tot_sum, tot_avg, tot_max, size):
    return SimpleNamespace(trigger_nr=np.asarray(trigger_nr, np.int64), x=np.asarray(x, np.float32),
                           y=np.asarray(y, np.float32), tof=np.asarray(tof, np.int64),
                           tot_sum=np.asarray(tot_sum, np.uint32), tot_avg=np.asarray(tot_avg, np.float32),
                           tot_max=np.asarray(tot_max, np.uint16), size=np.asarray(size, np.uint32))


def test_layout_tables_are_consistent():
    for path in PYMEPIX_PATHS:
        assert path in H.DATASETS, path
    for name, specs in H.TABLES.items():
        for spec in specs.values():
            assert spec.group == name
            assert spec.group in H.GROUPS
    # honest dtypes, pymepix's file units kept where scripts rely on them
    assert H.DATASETS["raw/x"].dtype == np.uint16 and H.DATASETS["raw/y"].dtype == np.uint16
    assert H.DATASETS["raw/tof"].dtype == np.float64 and H.DATASETS["raw/tof"].unit == "s"
    assert H.DATASETS["raw/tot"].unit == "ns" and H.DATASETS["centroided/tot max"].unit == "ns"
    assert H.DATASETS["centroided/tot avg"].unit == "ns"
    assert H.DATASETS["timing/timepix/timestamp"].unit == "ns"
    assert H.DATASETS["triggers/trigger1/time"].unit == "s"


def test_empty_file_has_full_layout_and_complete_flag(tmp_path):
    p = tmp_path / "empty.h5"
    w = Hdf5Writer(p, {"source_file": "x.raw", "timewalk_file": None})
    w.close()
    assert check_layout(p) == []
    assert is_complete(p)
    with h5py.File(p, "r") as f:
        for path in PYMEPIX_PATHS:
            assert f[path].shape == (0,)
            assert f[path].dtype == H.DATASETS[path].dtype
            assert f[path].attrs["unit"] == H.DATASETS[path].unit
            assert f[path].chunks is not None
            assert f[path].maxshape == (None,)
        assert f.attrs["source_file"] == "x.raw"
        assert f.attrs["timewalk_file"] == ""
        assert f.attrs["layout_version"] == H.LAYOUT_VERSION
        assert f.attrs["software"] == "tango-tpx"
        assert f["raw"].attrs["nr events"] == 0


def test_values_converted_to_file_units(tmp_path):
    p = tmp_path / "v.h5"
    ev = make_events([0, 0, 3], [1, 255, 7], [2, 0, 255], [4096, 0, 4096 * 40_000_000], [1, 1023, 7])
    ce = make_centroids([0, 3], [1.5, 7.25], [2.0, 255.0], [4096 * 4, 409600], [10, 1023], [5.0, 2.5], [6, 1023],
                        [2, 1])
    with Hdf5Writer(p) as w:
        w.append_events(ev)
        w.append_centroids(ce)
    raw = read_table(p, "raw")
    np.testing.assert_array_equal(raw["trigger nr"], [0, 0, 3])
    np.testing.assert_array_equal(raw["x"], [1, 255, 7])
    np.testing.assert_array_equal(raw["y"], [2, 0, 255])
    # 4096 fine units = 25 ns; 4096 * 40e6 units = 1 s
    np.testing.assert_allclose(raw["tof"], [25e-9, 0.0, 1.0], rtol=1e-15, atol=0)
    np.testing.assert_array_equal(raw["tot"], [25, 25575, 175])
    assert raw["tot"].dtype == np.uint32
    cen = read_table(p, "centroided")
    np.testing.assert_array_equal(cen["trigger nr"], [0, 3])
    np.testing.assert_array_equal(cen["x"], np.float32([1.5, 7.25]))
    np.testing.assert_allclose(cen["tof"], [100e-9, 2.5e-6], rtol=1e-15)
    np.testing.assert_array_equal(cen["tot avg"], np.float32([125.0, 62.5]))
    np.testing.assert_array_equal(cen["tot max"], [150, 25575])
    np.testing.assert_array_equal(cen["tot sum"], [250, 25575])
    np.testing.assert_array_equal(cen["clustersize"], [2, 1])
    with h5py.File(p, "r") as f:
        assert f["raw"].attrs["nr events"] == 2  # triggers 0 and 3
        assert f["centroided"].attrs["nr events"] == 2


def test_triggers_and_timing(tmp_path):
    p = tmp_path / "t.h5"
    trig = SimpleNamespace(channel=np.array([1, 2, 1, 2, 1], np.uint8),
                           rising=np.array([True, True, False, False, True]),
                           time=np.array([4096, 8192, 4096 * 40, 4096 * 80, 4096 * 40_000_000], np.int64),
                           counter=np.array([1, 1, 1, 1, 2], np.uint16), chip=np.zeros(5, np.uint8))
    table = SimpleNamespace(trigger_nr=np.array([0, 1], np.int64),
                            time=np.array([164, 4096 * 40_000_000 + 2048], np.int64),
                            counter=np.array([4095, 0], np.uint16))
    with Hdf5Writer(p) as w:
        w.append_triggers(trig)
        w.append_trigger_table(table)
        w.append_train_ids(np.array([10**18], np.uint64), np.array([123456789]))
        frames = np.array([(10**18 + 5, 7, 0xA5)],
                          dtype=[("timestamp_ns", "<u8"), ("train_id", "<u8"), ("beam_mode", "<u4")])
        w.append_train_ids(frames)
    t1 = read_table(p, "triggers/trigger1")["time"]
    t2 = read_table(p, "triggers/trigger2")["time"]
    np.testing.assert_allclose(t1, [25e-9, -1e-6, 1.0], rtol=1e-15)
    np.testing.assert_allclose(t2, [50e-9, -2e-6], rtol=1e-15)
    tp = read_table(p, "timing/timepix")
    np.testing.assert_array_equal(tp["trigger nr"], [0, 1])
    # 164 units = 1.0009 ns -> 1 ns; 1 s + 2048 units (12.5 ns) -> rounds half up to 1e9 + 13
    np.testing.assert_array_equal(tp["timestamp"], np.array([1, 1_000_000_013], np.uint64))
    np.testing.assert_allclose(tp["event trigger"], [164 * 25 / 4096 * 1e-9, 1.0 + 12.5e-9], rtol=1e-15)
    np.testing.assert_array_equal(tp["tdc counter"], [4095, 0])
    tid = read_table(p, "timing/trainID")
    np.testing.assert_array_equal(tid["timestamp"], np.array([10**18, 10**18 + 5], np.uint64))
    np.testing.assert_array_equal(tid["train id"], [123456789, 7])
    np.testing.assert_array_equal(tid["beam mode"], [0, 0xA5])


@pytest.mark.parametrize("chunk_rows", [1, 3, 8, 1000])
def test_piecewise_appends_equal_one_append(tmp_path, chunk_rows):
    rng = np.random.default_rng(1)
    n = 57
    tn = np.sort(rng.integers(0, 10, n))
    ev = make_events(tn, rng.integers(0, 256, n), rng.integers(0, 256, n), rng.integers(0, 1 << 40, n),
                     rng.integers(0, 1024, n))
    whole, parts = tmp_path / "whole.h5", tmp_path / "parts.h5"
    with Hdf5Writer(whole, chunk_rows=chunk_rows) as w:
        w.append_events(ev)
    cuts = [0, 0, 1, 5, 20, 20, 41, n]
    with Hdf5Writer(parts, chunk_rows=chunk_rows) as w:
        for a, b in zip(cuts[:-1], cuts[1:]):
            w.append_events(SimpleNamespace(**{k: v[a:b] for k, v in vars(ev).items()}))
            assert w.rows("raw") == b
    a, b = read_table(whole, "raw"), read_table(parts, "raw")
    for k in H.RAW:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["x"], ev.x)
    with h5py.File(parts, "r") as f:
        assert f["raw"].attrs["nr events"] == len(np.unique(tn))


def test_existing_file_refused_unless_overwrite(tmp_path):
    p = tmp_path / "exists.h5"
    p.write_bytes(b"not hdf5")
    with pytest.raises(FileExistsError):
        Hdf5Writer(p)
    assert p.read_bytes() == b"not hdf5"
    Hdf5Writer(p, overwrite=True).close()
    assert is_complete(p)


def test_exception_leaves_readable_incomplete_file(tmp_path):
    p = tmp_path / "broken.h5"
    ev = make_events([0, 1], [1, 2], [3, 4], [5, 6], [7, 8])
    with pytest.raises(RuntimeError):
        with Hdf5Writer(p, chunk_rows=4) as w:
            w.append_events(ev)
            raise RuntimeError("boom")
    assert not is_complete(p)
    raw = read_table(p, "raw")  # still readable, buffered rows were written
    np.testing.assert_array_equal(raw["x"], [1, 2])
    with h5py.File(p, "r") as f:
        assert f.attrs["complete"] == np.False_


def test_flush_keeps_file_incomplete(tmp_path):
    p = tmp_path / "f.h5"
    w = Hdf5Writer(p)
    w.append_events(make_events([0], [1], [2], [3], [4]))
    w.flush()
    with h5py.File(p, "r") as f:  # same process: HDF5 shares the open file
        assert f.attrs["complete"] == np.False_
        assert f["raw/x"].shape == (1,)
    w.close()
    assert is_complete(p)


def test_attributes_and_compression(tmp_path):
    p = tmp_path / "a.h5"
    attrs = {"clustering": {"eps": 2.0, "min_samples": 3}, "event_window": (0.0, 1e-3),
             "source_file": tmp_path / "in.raw", "n": 5, "flag": True, "names": ["a", "b"]}
    with Hdf5Writer(p, attrs) as w:
        w.set_attrs(extra="yes")
        with pytest.raises(ValueError):
            w.set_attrs(complete=True)
    with h5py.File(p, "r") as f:
        assert json.loads(f.attrs["clustering"]) == {"eps": 2.0, "min_samples": 3}
        np.testing.assert_array_equal(f.attrs["event_window"], [0.0, 1e-3])
        assert f.attrs["source_file"] == str(tmp_path / "in.raw")
        assert f.attrs["n"] == 5 and bool(f.attrs["flag"]) is True
        assert json.loads(f.attrs["names"]) == ["a", "b"]
        assert f.attrs["extra"] == "yes"
        assert f.attrs["compression"] == "deflate"
        assert f["raw/tof"].compression == "gzip" and not f["raw/tof"].shuffle  # 8-byte: unshuffled
        assert f["raw/x"].compression == "gzip" and f["raw/x"].shuffle
    p1 = tmp_path / "blosc.h5"
    with Hdf5Writer(p1, compression="blosc-lz4") as w:
        w.append_events(make_events([0], [1], [2], [3], [4]))
    with h5py.File(p1, "r") as f:
        filters = f["raw/tof"].id.get_create_plist()
        ids = [filters.get_filter(i)[0] for i in range(filters.get_nfilters())]
        assert 32001 in ids  # Blosc
        assert f.attrs["compression"] == "blosc-lz4"
    p2 = tmp_path / "lzf.h5"
    with Hdf5Writer(p2, compression="lzf") as w:
        w.append_events(make_events([0], [1], [2], [3], [4]))
    with h5py.File(p2, "r") as f:
        assert f["raw/x"].compression == "lzf"
        assert f["raw/x"][0] == 1
    with pytest.raises(ValueError):
        Hdf5Writer(tmp_path / "bad.h5", compression="gzip9000")


def test_column_length_mismatch_is_an_error(tmp_path):
    with Hdf5Writer(tmp_path / "m.h5") as w:
        with pytest.raises(ValueError):
            w.append_columns("raw", {"trigger nr": np.zeros(2, np.int64), "x": np.zeros(1), "y": np.zeros(2),
                                     "tof": np.zeros(2), "tot": np.zeros(2)})


@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.int64, np.float64])
def test_direct_deflate_chunks_equal_hdf5_filters(tmp_path, dtype, threads):
    """Chunks compressed by tango-tpx and written directly decode, through HDF5's own
    shuffle + deflate filters, to the values; partial last chunks included."""
    from tango_tpx.io.compress import ChunkWriter, dataset_kwargs

    rng = np.random.default_rng(3)
    vals = (rng.integers(0, 1000, 1000) * 3).astype(dtype)
    p = tmp_path / "d.h5"
    cw = ChunkWriter(threads=threads, max_pending=2)
    with h5py.File(p, "w") as f:
        d = f.create_dataset("v", shape=(len(vals),), maxshape=(None,), dtype=dtype, chunks=(128,),
                             **dataset_kwargs("deflate", dtype))
        for row in range(0, len(vals), 128):
            cw.put(d, row, vals[row:row + 128], 128)
        cw.close()
    with h5py.File(p, "r") as f:
        np.testing.assert_array_equal(f["v"][:], vals)


def test_default_output_is_read_without_hdf5plugin(tmp_path):
    """A plain h5py in a fresh interpreter (hdf5plugin never imported) reads the default file."""
    import subprocess
    import sys

    p = tmp_path / "plain.h5"
    with Hdf5Writer(p, chunk_rows=64) as w:
        for k in range(5):
            n = 50 + k
            w.append_events(make_events(np.full(n, k), np.arange(n) % 256, np.arange(n) % 7,
                                        np.arange(n) * 4096, np.full(n, 3)))
    code = ("import sys, h5py; f = h5py.File(sys.argv[1], 'r'); x = f['raw/x'][:]; "
            "assert 'hdf5plugin' not in sys.modules; print(len(x), int(x.sum()), f['raw/tof'][-1])")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n, s, last = out.stdout.split()
    expect = np.concatenate([np.arange(50 + k) % 256 for k in range(5)])
    assert int(n) == len(expect) and int(s) == int(expect.sum())
    assert float(last) == pytest.approx(53 * 4096 * 25 / 4096 * 1e-9)


@pytest.mark.parametrize("compression", ["deflate", "blosc-lz4", "blosc-zstd", "lz4", "lzf", "none"])
def test_every_compression_choice_round_trips(tmp_path, compression):
    from tango_tpx.io.compress import NEEDS_HDF5PLUGIN

    p = tmp_path / f"{compression}.h5"
    n = 300
    with Hdf5Writer(p, compression=compression, chunk_rows=128) as w:
        w.append_events(make_events(np.arange(n) // 7, np.arange(n) % 256, np.arange(n) % 5,
                                    np.arange(n) * 4096, np.full(n, 4)))
    with h5py.File(p, "r") as f:
        assert f.attrs["compression"] == compression
        np.testing.assert_array_equal(f["raw/x"][:], np.arange(n) % 256)
        np.testing.assert_array_equal(f["raw/trigger nr"][:], np.arange(n) // 7)
        plugin = {f[path].id.get_create_plist().get_filter(i)[0]
                  for path in ("raw/x", "raw/tof") for i in range(f[path].id.get_create_plist().get_nfilters())}
    # HDF5's own filters (deflate 1, shuffle 2) and h5py's bundled LZF (32000) need no plugin
    assert (compression in NEEDS_HDF5PLUGIN) == bool(plugin - {1, 2, 32000})
