"""The default compression's zlib streams: byte planes deflated or stored inside one stream,
decoded by zlib and by HDF5's own shuffle + deflate filters (plain h5py, no hdf5plugin)."""

from __future__ import annotations

import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest

from tango_tpx.io.compress import (
    PLANE_MIN_RATIO,
    ChunkWriter,
    chunk_bytes,
    dataset_kwargs,
    deflate_bytes,
    deflate_chunk,
)

RNG = np.random.default_rng(7)


def _noise(n: int) -> np.ndarray:
    return RNG.integers(0, 256, n, dtype=np.uint8)


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, np.uint8)


@pytest.mark.parametrize("pattern", ["z", "n", "zn", "nz", "znz", "nzn", "nnzz", "zznn", "nznz"])
@pytest.mark.parametrize("plane_bytes", [1, 100, 70000, 140001])
def test_planes_deflated_or_stored_decode_with_zlib(pattern, plane_bytes):
    """Any mix of compressible (z) and random (n) planes, planes larger than one stored block
    (65535 bytes) included, is one valid zlib stream of the input."""
    buf = np.concatenate([_zeros(plane_bytes) if c == "z" else _noise(plane_bytes) for c in pattern])
    out = deflate_bytes(buf, len(pattern))
    assert zlib.decompress(out) == buf.tobytes()
    if plane_bytes >= 70000:
        # random planes are stored (a few bytes of block headers), zero planes nearly vanish
        stored = pattern.count("n") * plane_bytes
        assert stored < len(out) < stored + 1000


def test_plane_choice_follows_the_sample_ratio():
    """A plane that halves under deflate is deflated; one that shrinks less is stored."""
    n = 1 << 16
    halves = RNG.integers(0, 8, n, dtype=np.uint8)    # 3 bits of entropy per byte: shrinks ~2.6x
    barely = np.where(RNG.random(n) < 0.3, 0, _noise(n)).astype(np.uint8)  # shrinks < 2x
    assert len(zlib.compress(barely.tobytes(), 1)) * PLANE_MIN_RATIO > n
    assert len(deflate_bytes(halves)) < n / 2
    assert n <= len(deflate_bytes(barely)) < n + 64


def test_odd_sizes_and_empty_input():
    for buf, planes in [(b"", 1), (b"abc", 2), (_noise(10), 3), (_zeros(7), 7)]:
        assert zlib.decompress(deflate_bytes(buf, planes)) == bytes(buf)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.int64, np.float64])
def test_chunks_read_by_plain_h5py_without_hdf5plugin(tmp_path, dtype):
    """Direct-written chunks (full and partial, random low bytes and constant high bytes)
    decode through HDF5's built-in filters in an interpreter that never imports hdf5plugin."""
    rows, chunk = 300_000, 1 << 17
    vals = (RNG.integers(0, 3000, rows) * 7).astype(dtype)
    p = tmp_path / "c.h5"
    cw = ChunkWriter(threads=2)
    with h5py.File(p, "w") as f:
        d = f.create_dataset("v", shape=(rows,), maxshape=(None,), dtype=dtype, chunks=(chunk,),
                             **dataset_kwargs("deflate", dtype))
        for row in range(0, rows, chunk):
            cw.put(d, row, vals[row:row + chunk], chunk)
        cw.close()
    np.save(tmp_path / "v.npy", vals)
    code = ("import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r'); "
            "assert 'hdf5plugin' not in sys.modules; "
            "assert (f['v'][:] == np.load(sys.argv[2])).all(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(p), str(tmp_path / "v.npy")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_deflate_chunk_is_the_shuffled_chunk():
    vals = np.arange(1000, dtype=np.uint32) * 25
    assert zlib.decompress(deflate_chunk(vals, 1024)) == chunk_bytes(vals, 1024).tobytes()


@pytest.mark.parametrize("threads", [0, 2])
def test_every_default_dataset_is_deflate_and_read_without_hdf5plugin(tmp_path, threads):
    """Every dataset of a default (deflate) file carries HDF5's own deflate filter, and a plain
    h5py that never imports hdf5plugin reads every one of them back exactly."""
    from tango_tpx.io.hdf5 import DATASETS, Hdf5Writer

    n, m = 300_000, 40_000
    trig = np.sort(RNG.integers(0, 5000, n))
    raw = {"trigger nr": trig, "x": RNG.integers(0, 256, n).astype(np.uint16),
           "y": RNG.integers(0, 256, n).astype(np.uint16), "tof": RNG.integers(0, 1 << 24, n) * 6.1e-12,
           "tot": (RNG.integers(1, 400, n) * 25).astype(np.uint32)}
    cen = {"trigger nr": np.sort(RNG.integers(0, 5000, m)), "x": RNG.random(m, np.float32) * 256,
           "y": RNG.random(m, np.float32) * 256, "tof": RNG.random(m) * 1e-3,
           "tot avg": RNG.random(m, np.float32) * 1e4, "tot max": (RNG.integers(1, 400, m) * 25).astype(np.uint32),
           "tot sum": (RNG.integers(1, 4000, m) * 25).astype(np.uint32),
           "clustersize": RNG.integers(3, 30, m).astype(np.uint32)}
    p = tmp_path / "all.h5"
    with Hdf5Writer(p, threads=threads) as w:
        for a in range(0, n, 70_000):   # uneven pieces: partial chunks in the buffers
            w.append_columns("raw", {k: v[a:a + 70_000] for k, v in raw.items()})
        w.append_columns("centroided", cen)
    expect = {f"raw/{k}": v for k, v in raw.items()} | {f"centroided/{k}": v for k, v in cen.items()}
    np.savez(tmp_path / "expect.npz", **{k.replace("/", "|"): v for k, v in expect.items()})
    with h5py.File(p, "r") as f:
        for path in DATASETS:
            assert f[path].compression == "gzip", path
    code = ("import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r'); e = np.load(sys.argv[2]); "
            "assert 'hdf5plugin' not in sys.modules; "
            "[np.testing.assert_array_equal(f[k.replace('|', '/')][:], e[k]) for k in e.files]; print(len(e.files))")
    out = subprocess.run([sys.executable, "-c", code, str(p), str(tmp_path / "expect.npz")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "13", out.stderr
