"""Sardana integration of the Timepix3 device: Pool controllers, macros, set-up and demo.

* ``controllers/`` (the Pool's ``PoolPath``): ``Timepix3TwoDCtrl`` (image + per-point file
  references), ``Timepix3CounterTimerCtrl`` (timer, hits, centroids, triggers, ROI counts),
  ``Timepix3TofCtrl`` (time-of-flight histogram). All three drive one Timepix3 device through
  :class:`tango_tpx.sardana.link.DeviceLink`, which makes them share one acquisition.
* ``macros/`` (the MacroServer's ``MacroPath``): ``tpx3_record``, ``tpx3_status``,
  ``tpx3_window``, ``tpx3_roi``.
* :mod:`tango_tpx.sardana.configure`: ``tango-tpx sardana-setup`` (Pool, MacroServer, Door,
  controllers, elements, measurement group, dummy motor) - idempotent.
* :mod:`tango_tpx.sardana.stack`: start/stop a ``Sardana`` server and run macros on a Door.
* :mod:`tango_tpx.sardana.demo`: ``tango-tpx demo --sardana``.
"""

from __future__ import annotations

from pathlib import Path

#: Directory of the controller modules (goes into the Pool property ``PoolPath``).
CONTROLLER_DIR: Path = Path(__file__).resolve().parent / "controllers"
#: Directory of the macro library (goes into the MacroServer property ``MacroPath``).
MACRO_DIR: Path = Path(__file__).resolve().parent / "macros"
#: Directory that makes ``import tango_tpx`` work (goes into ``PythonPath`` of Pool and MacroServer).
PACKAGE_PARENT: Path = Path(__file__).resolve().parents[2]

#: Default names used by ``sardana-setup`` (server ``Sardana/<instance>``).
DEFAULT_INSTANCE = "demo"
DEFAULT_DEVICE = "tpx3/detector/1"

#: Element names created by ``sardana-setup``: counter/timer axes 1..6, the 2D and 1D channels.
CT_CHANNELS = ("tpx3_time", "tpx3_hits", "tpx3_centroids", "tpx3_triggers", "tpx3_roi_hits",
               "tpx3_roi_centroids")
IMAGE_CHANNEL = "tpx3_image"
TOF_CHANNEL = "tpx3_tof"
MEASUREMENT_GROUP = "tpx3_mg"
DUMMY_MOTOR = "mot01"
