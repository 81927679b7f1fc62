"""Timepix3 1D controller: the time-of-flight histogram of each acquisition.

One axis (``tpx3_tof``): ``AcquisitionTofHistogram`` of the device (hits per bin; the bin
centres, ns, are ``AcquisitionTofAxis`` and are also available as the axis attribute
``TofAxis``). Shares the acquisition with the other Timepix3 controllers of the
measurement group.
"""

from __future__ import annotations

import numpy as np
from sardana.pool.controller import Description, FGet, OneDController, Type

from tango_tpx.sardana.ctrlbase import TIMEPIX3_CTRL_PROPERTIES, Timepix3CtrlMixin, checked


class Timepix3TofCtrl(Timepix3CtrlMixin, OneDController):
    """ToF histogram of one Timepix3 device."""

    gender = "Timepix3"
    model = "Timepix3/SPIDR"
    organization = "tango-tpx"
    MaxDevice = 1
    ctrl_properties = dict(TIMEPIX3_CTRL_PROPERTIES)
    axis_attributes = {
        "TofAxis": {Type: (float,), FGet: "get_tof_axis",
                    Description: "bin centres of the histogram, ns"},
    }

    def __init__(self, inst, props, *args, **kwargs):
        OneDController.__init__(self, inst, props, *args, **kwargs)
        self._init_timepix3()

    def AddDevice(self, axis: int) -> None:  # noqa: N802
        if axis != 1:
            raise ValueError(f"{self.GetName()}: only axis 1 exists (the ToF histogram)")

    @checked
    def get_tof_axis(self, axis: int):
        return np.asarray(self.link.read("AcquisitionTofAxis")["AcquisitionTofAxis"], dtype=float)

    def GetAxisPar(self, axis: int, parameter: str):  # noqa: N802
        if parameter.lower() == "shape":
            return [len(self.get_tof_axis(axis))]
        return super().GetAxisPar(axis, parameter)

    @checked
    def ReadOne(self, axis: int):  # noqa: N802
        return np.asarray(self.link.read("AcquisitionTofHistogram")["AcquisitionTofHistogram"], dtype=float)
