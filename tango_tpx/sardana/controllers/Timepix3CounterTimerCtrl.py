"""Timepix3 counter/timer controller: the per-acquisition counts of a Timepix3 device.

Axes (``sardana-setup`` names): 1 ``tpx3_time`` the timer (AcquisitionElapsed, s),
2 ``tpx3_hits`` (AcquisitionHits), 3 ``tpx3_centroids`` (AcquisitionCentroids),
4 ``tpx3_triggers`` (AcquisitionTriggersDone, TDC1 rising edges), 5 ``tpx3_roi_hits`` (RoiHits),
6 ``tpx3_roi_centroids`` (RoiCentroids). Values grow while the acquisition runs (the Pool
reads counters in its loop) and are final when the device is back ON.
"""

from __future__ import annotations

from sardana.pool.controller import CounterTimerController

from tango_tpx.sardana.ctrlbase import TIMEPIX3_CTRL_PROPERTIES, Timepix3CtrlMixin, checked

#: Device attribute read for each axis (1-based).
AXIS_ATTRIBUTES = ("AcquisitionElapsed", "AcquisitionHits", "AcquisitionCentroids", "AcquisitionTriggersDone",
                   "RoiHits", "RoiCentroids")


class Timepix3CounterTimerCtrl(Timepix3CtrlMixin, CounterTimerController):
    """Timer and counters of one Timepix3 device (see the module docstring for the axes)."""

    gender = "Timepix3"
    model = "Timepix3/SPIDR"
    organization = "tango-tpx"
    MaxDevice = len(AXIS_ATTRIBUTES)
    default_timer = 1
    ctrl_properties = dict(TIMEPIX3_CTRL_PROPERTIES)

    def __init__(self, inst, props, *args, **kwargs):
        CounterTimerController.__init__(self, inst, props, *args, **kwargs)
        self._init_timepix3()
        self._values: dict[int, float] = {}

    def AddDevice(self, axis: int) -> None:  # noqa: N802
        if not 1 <= axis <= len(AXIS_ATTRIBUTES):
            raise ValueError(f"{self.GetName()}: axis {axis} does not exist (1..{len(AXIS_ATTRIBUTES)}: "
                             f"{', '.join(AXIS_ATTRIBUTES)})")

    def PreReadAll(self) -> None:  # noqa: N802
        self._values = {}

    @checked
    def ReadAll(self) -> None:  # noqa: N802
        values = self.link.read(*AXIS_ATTRIBUTES)
        self._values = {i: values[name] for i, name in enumerate(AXIS_ATTRIBUTES, start=1)}

    @checked
    def ReadOne(self, axis: int):  # noqa: N802
        if axis not in self._values:
            self.ReadAll()
        value = self._values[axis]
        return float(value) if axis == 1 else int(value)
