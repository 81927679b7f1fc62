"""Output side of tango-tpx: the HDF5 layout (one place names every dataset, dtype and unit)
and the offline raw/.tpx3 -> HDF5 conversion (``tango-tpx convert``)."""

from .convert import ConversionError, ConversionInterrupted, ConvertResult, convert_file
from .hdf5 import LAYOUT_VERSION, TABLES, Hdf5Writer, append_to_file, check_layout, is_complete, read_table

__all__ = ["convert_file", "ConvertResult", "ConversionError", "ConversionInterrupted", "Hdf5Writer",
           "append_to_file", "read_table", "is_complete", "check_layout", "TABLES", "LAYOUT_VERSION"]
