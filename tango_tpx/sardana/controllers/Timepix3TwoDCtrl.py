"""Timepix3 2D controller: the hits-per-pixel image of each acquisition and a reference to its file.

One axis (``tpx3_image``). Per point:

* ``PrepareOne`` refuses a device in Fault, then writes AcquisitionTime and the file series
  from the channel's value reference settings:
  enabled -> ``AutoRecord`` on, ``RecordingPath``/``FilePrefix`` from the pattern (see
  :func:`tango_tpx.sardana.link.parse_value_ref_pattern`), ``AutoConvert`` for ``h5file://``;
  disabled -> ``AutoRecord`` off;
* ``LoadOne`` sets ``AcquisitionTime`` (the integration time, s);
* ``StartAll`` starts the bounded acquisition (or joins the one the counters started);
  ``StateOne`` is Moving until the device is back ON (file closed);
* ``ReadOne`` returns ``AcquisitionImage`` (hits per pixel, 256x256 or 516x516);
* ``RefOne`` returns ``file://<LastFile>`` or, with AutoConvert,
  ``h5file://<the .h5 beside it>::centroided``;
* ``StopOne``/``AbortOne`` stop the acquisition and close the file.
"""

from __future__ import annotations

import numpy as np
from sardana.pool.controller import Referable, TwoDController

from tango_tpx.sardana.ctrlbase import TIMEPIX3_CTRL_PROPERTIES, Timepix3CtrlMixin, checked
from tango_tpx.sardana.link import parse_value_ref_pattern


class Timepix3TwoDCtrl(Timepix3CtrlMixin, TwoDController, Referable):
    """Image and per-point file reference of one Timepix3 device."""

    gender = "Timepix3"
    model = "Timepix3/SPIDR"
    organization = "tango-tpx"
    MaxDevice = 1
    ctrl_properties = dict(TIMEPIX3_CTRL_PROPERTIES)

    def __init__(self, inst, props, *args, **kwargs):
        TwoDController.__init__(self, inst, props, *args, **kwargs)
        self._init_timepix3()
        self._ref_enabled = False
        self._ref_pattern = ""
        self._shape: list[int] | None = None

    def AddDevice(self, axis: int) -> None:  # noqa: N802
        if axis != 1:
            raise ValueError(f"{self.GetName()}: only axis 1 exists (the image)")

    # -- value references ----------------------------------------------------------------------
    def SetAxisPar(self, axis: int, parameter: str, value) -> None:  # noqa: N802
        name = parameter.lower()
        if name == "value_ref_enabled":
            self._ref_enabled = bool(value)
        elif name == "value_ref_pattern":
            parse_value_ref_pattern(value)  # refuse a bad pattern when it is set
            self._ref_pattern = value or ""
        else:
            super().SetAxisPar(axis, parameter, value)

    def GetAxisPar(self, axis: int, parameter: str):  # noqa: N802
        name = parameter.lower()
        if name == "shape":
            return self._image_shape()
        if name == "value_ref_enabled":
            return self._ref_enabled
        if name == "value_ref_pattern":
            return self._ref_pattern
        return super().GetAxisPar(axis, parameter)

    @checked
    def _image_shape(self) -> list[int]:
        if self._shape is None:
            image = self.link.read("AcquisitionImage")["AcquisitionImage"]
            shape = np.shape(image) if image is not None and np.size(image) else (256, 256)
            self._shape = [int(shape[1]), int(shape[0])]  # Sardana: [x size, y size]
        return self._shape

    # -- acquisition ---------------------------------------------------------------------------
    @checked
    def PrepareOne(self, axis: int, value: float, repetitions: int, latency: float,  # noqa: N802
                   nb_starts: int) -> None:
        self.link.check_ready()
        request = parse_value_ref_pattern(self._ref_pattern) if self._ref_enabled else None
        self.link.prepare_series(request)
        if value > 0:  # the integration time (LoadOne sets it again before each start)
            self.link.load(value)

    @checked
    def ReadOne(self, axis: int):  # noqa: N802
        image = self.link.read("AcquisitionImage")["AcquisitionImage"]
        return np.asarray(image)

    @checked
    def RefOne(self, axis: int) -> str:  # noqa: N802
        return self.link.last_reference()
