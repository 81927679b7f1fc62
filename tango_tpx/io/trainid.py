"""European XFEL train IDs in HDF5: ``timing/trainID/{timestamp, train id, beam mode}``.

Names, dtypes and units come from the one definition of the layout
(:data:`tango_tpx.io.hdf5.TRAINID`); the frames come from the receiver's parser
(:mod:`tango_tpx.trainid.protocol`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..trainid.protocol import TRAINID_DTYPE, TrainFrame, TrainIdLog, frames_to_array
from .hdf5 import TRAINID as _HDF5_TRAINID

#: HDF5 group holding the train-ID datasets.
TRAINID_GROUP = "timing/trainID"
# Names, dtypes and units come from the one definition of the HDF5 layout.
_HDF5_NAME = {"timestamp": "timestamp", "train_id": "train id", "beam_mode": "beam mode"}
#: Dataset paths (relative to the file root) by column.
TRAINID_DATASETS: dict[str, str] = {col: _HDF5_TRAINID[name].path for col, name in _HDF5_NAME.items()}
#: (dtype, unit, description) per column, from :data:`tango_tpx.io.hdf5.TRAINID`.
TRAINID_LAYOUT: dict[str, tuple[str, str, str]] = {
    col: (np.dtype(_HDF5_TRAINID[name].dtype).str, _HDF5_TRAINID[name].unit, _HDF5_TRAINID[name].description)
    for col, name in _HDF5_NAME.items()}
_COLUMN_FIELD = {"timestamp": "timestamp_ns", "train_id": "train_id", "beam_mode": "beam_mode"}


def append_to_hdf5(h5file, frames: Iterable[TrainFrame] | np.ndarray | TrainIdLog,
                   chunk: int = 4096) -> int:
    """Append ``frames`` to the :data:`TRAINID_DATASETS` of an open h5py File/Group
    (created resizable on first use, ``unit`` and ``description`` attributes set).
    Returns the number of frames appended."""
    arr = frames_to_array(frames)
    datasets = {}
    for col, path in TRAINID_DATASETS.items():
        dtype, unit, doc = TRAINID_LAYOUT[col]
        if path in h5file:
            ds = h5file[path]
        else:
            ds = h5file.create_dataset(path, shape=(0,), maxshape=(None,), dtype=dtype,
                                       chunks=(chunk,))
            ds.attrs["unit"] = unit
            ds.attrs["description"] = doc
        datasets[col] = ds
    sizes = {ds.shape[0] for ds in datasets.values()}
    if len(sizes) != 1:
        raise ValueError(f"train-ID datasets in {h5file.name} have unequal lengths {sorted(sizes)}")
    if not len(arr):
        return 0
    n0 = sizes.pop()
    for col, ds in datasets.items():
        ds.resize((n0 + len(arr),))
        ds[n0:] = arr[_COLUMN_FIELD[col]]
    return len(arr)


def read_hdf5(h5file) -> np.ndarray:
    """Read the train-ID datasets of an open h5py File/Group into a TRAINID_DTYPE array."""
    if TRAINID_DATASETS["train_id"] not in h5file:
        return np.zeros(0, TRAINID_DTYPE)
    cols = {col: h5file[path][()] for col, path in TRAINID_DATASETS.items()}
    out = np.zeros(len(cols["train_id"]), TRAINID_DTYPE)
    for col, values in cols.items():
        out[_COLUMN_FIELD[col]] = values
    return out
