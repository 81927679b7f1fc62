"""The live pipeline's shared-memory rings: :mod:`tango_tpx.runtime.shm` under its pipeline name.

``RawRing``: raw UDP chunks from the receiver to the decoder (a ``RawData`` message carries
``data`` None and meta ``{"ring": slot, "n": nbytes}``); ``MsgRing``: structure-of-arrays
messages (``EventData`` from the decoder to the centroid workers).
"""

from __future__ import annotations

from tango_tpx.runtime.shm import (  # noqa: F401 - re-exported
    FIELD_ALIGN,
    META_BYTES,
    META_FIELDS,
    META_SLOT,
    META_SOA,
    PAGE,
    MsgRing,
    RawRing,
)

__all__ = ["PAGE", "FIELD_ALIGN", "META_SLOT", "META_BYTES", "META_SOA", "META_FIELDS", "RawRing", "MsgRing"]
