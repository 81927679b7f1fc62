"""Helpers shared by the batch, section, append and Dask tests: seeded simulator inputs and
dataset-by-dataset comparison of HDF5 outputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from tango_tpx.io.hdf5 import DATASETS

#: Small read chunks and batches, so that small inputs still have many chunks, batches and sections.
KW = {"chunk_words": 1 << 13, "batch_hits": 15000}


def sim_words(seed: int, duration_s: float = 0.08, rate_mhits: float = 1.5) -> np.ndarray:
    """SPIDR words of a seeded simulated acquisition (~rate x duration M hits, 1 kHz triggers)."""
    from tango_tpx.simulator import SimConfig, simulate

    words, _ = simulate(SimConfig(rate_mhits=rate_mhits, duration_s=duration_s, seed=seed, trigger_hz=1000.0))
    return words


#: Header wall clock of the test files (ns since the Unix epoch): one fixed value, so that the
#: pieces of a stream and the whole stream give the same ``timing/timepix/timestamp``.
HEADER_TIME_NS = 1_700_000_000_000_000_000


def write_raw(path: Path, words: np.ndarray, time_ns: int = HEADER_TIME_NS) -> Path:
    """A pymepix .raw file (with header ``time_ns``) holding ``words``."""
    from tango_tpx.tpx3.files import RawFileWriter

    with RawFileWriter(path, time_ns=time_ns) as w:
        w.write(words)
    return path


def sim_file(path: Path, seed: int, **kw) -> Path:
    """A seeded simulated .raw file."""
    return write_raw(path, sim_words(seed, **kw))


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of the layout, read with plain h5py (deflate: no plugin needed)."""
    with h5py.File(path, "r") as f:
        return {p: f[p][()] for p in DATASETS}


def assert_same_datasets(a: Path, b: Path) -> None:
    """The two files hold the same values in every dataset of the layout, bit for bit."""
    da, db = datasets(a), datasets(b)
    for p in DATASETS:
        assert da[p].dtype == db[p].dtype, p
        np.testing.assert_array_equal(da[p], db[p], err_msg=f"{a.name} vs {b.name}: {p}")


def is_complete(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return bool(f.attrs.get("complete", False))
