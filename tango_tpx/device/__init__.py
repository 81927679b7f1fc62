"""The Tango layer of tango-tpx: the ``Timepix3`` device, its server and helpers.

``Timepix3`` lives in :mod:`tango_tpx.device.timepix3` (imported lazily here so that
``import tango_tpx.device`` does not need a working PyTango); the embedded database and
dsconfig registration in :mod:`tango_tpx.device.database`; the live demo in
:mod:`tango_tpx.device.demo`.
"""

from __future__ import annotations

__all__ = ["Timepix3"]


def __getattr__(name: str):
    if name == "Timepix3":
        from tango_tpx.device.timepix3 import Timepix3

        return Timepix3
    raise AttributeError(name)
