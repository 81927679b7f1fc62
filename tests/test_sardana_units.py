"""Timepix3 Sardana parts that need no Sardana server: value reference patterns, state
mapping, references, the link to an unreachable device, the macro and controller modules."""

from __future__ import annotations

import importlib.util
import time

import pytest

pytest.importorskip("sardana")

from tango_tpx.device.database import free_port  # noqa: E402
from tango_tpx.sardana import CONTROLLER_DIR, MACRO_DIR  # noqa: E402
from tango_tpx.sardana.link import (  # noqa: E402
    DeviceError,
    DeviceLink,
    SeriesRequest,
    file_reference,
    parse_value_ref_pattern,
    sardana_state,
)


@pytest.mark.parametrize("pattern, expected", [
    ("", SeriesRequest(None, None, False)),
    (None, SeriesRequest(None, None, False)),
    ("file:///data/run7/scan_{index}.raw", SeriesRequest("/data/run7", "scan_", False)),
    ("file:///data/run7/scan_{index:05d}", SeriesRequest("/data/run7", "scan_", False)),
    ("h5file:///data/run7/scan_{index}", SeriesRequest("/data/run7", "scan_", True)),
    ("h5file:///data/run7/scan_{index}.h5::centroided", SeriesRequest("/data/run7", "scan_", True)),
    ("/data/run7/", SeriesRequest("/data/run7", None, False)),
    ("/data/run7/pt", SeriesRequest("/data/run7", "pt", False)),
])
def test_value_ref_pattern_gives_the_file_series(pattern, expected):
    assert parse_value_ref_pattern(pattern) == expected


@pytest.mark.parametrize("pattern, words", [
    ("file://relative/dir/x_{index}", "absolute"),
    ("file:///data/x_{index}_end.raw", "only {index}"),
    ("file:///data/x_{scan}", "only {index}"),
    ("file:///data/x y_{index}", "prefix"),
    ("file:///data/x.raw::/dataset", "expected"),
    ("tiff:///data/x_{index}", "expected"),
])
def test_bad_value_ref_pattern_says_what_is_accepted(pattern, words):
    with pytest.raises(ValueError, match="value reference pattern") as info:
        parse_value_ref_pattern(pattern)
    assert words in str(info.value)


def test_file_reference_schemes():
    assert file_reference("/d/a00001.raw", None, False) == "file:///d/a00001.raw"
    assert file_reference("/d/a00001.raw", None, True) == "h5file:///d/a00001.h5::centroided"
    assert file_reference("/d/a00001.raw", "/e/a00001.h5", True) == "h5file:///e/a00001.h5::centroided"


@pytest.mark.parametrize("state, expected", [
    ("ON", "On"), ("RUNNING", "Moving"), ("MOVING", "Moving"), ("INIT", "Moving"),
    ("FAULT", "Fault"), ("UNKNOWN", "Fault"), ("ALARM", "Fault"),
])
def test_device_state_to_sardana_state(state, expected):
    import tango

    assert sardana_state(getattr(tango.DevState, state), "why") == (expected, "why")


@pytest.mark.timeout(60)
def test_unreachable_device_is_a_clear_fault_not_a_hang():
    port = free_port()  # nothing listens there
    link = DeviceLink(f"tango://127.0.0.1:{port}/tpx3/detector/1", timeout_s=1.0)
    t0 = time.monotonic()
    state, status = link.state()
    assert state == "Fault"
    assert "tpx3/detector/1" in status and ("unreachable" in status or "failed" in status), status
    with pytest.raises(DeviceError, match="tpx3/detector/1"):
        link.load(0.5)
    with pytest.raises(ValueError, match="must be > 0"):
        link.load(0.0)
    assert time.monotonic() - t0 < 20.0


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_controller_modules_declare_their_types_and_properties():
    from sardana.pool.controller import (
        CounterTimerController,
        OneDController,
        Referable,
        TwoDController,
    )

    ct = _load(CONTROLLER_DIR / "Timepix3CounterTimerCtrl.py").Timepix3CounterTimerCtrl
    twod = _load(CONTROLLER_DIR / "Timepix3TwoDCtrl.py").Timepix3TwoDCtrl
    tof = _load(CONTROLLER_DIR / "Timepix3TofCtrl.py").Timepix3TofCtrl
    assert issubclass(ct, CounterTimerController) and ct.MaxDevice == 6
    assert issubclass(twod, TwoDController) and issubclass(twod, Referable)
    assert issubclass(tof, OneDController)
    for klass in (ct, twod, tof):
        assert set(klass.ctrl_properties) == {"Device", "Timeout"}
        assert klass.__doc__


def test_macros_have_docstrings_and_typed_parameters():
    from sardana.macroserver.macro import Type

    for name in ("Float", "String", "Integer"):  # registered by a running MacroServer
        if not hasattr(Type, name):
            Type.addType(name)
    module = _load(MACRO_DIR / "tpx3_macros.py")
    expected = {"tpx3_record": ["seconds", "name"], "tpx3_status": [], "tpx3_window": ["start_us", "end_us"],
                "tpx3_roi": ["x0", "y0", "x1", "y1", "tof0_us", "tof1_us"]}
    for name, params in expected.items():
        macro = getattr(module, name)
        assert macro.__doc__ and len(macro.__doc__.strip()) > 40
        assert [p[0] for p in macro.param_def] == params
        assert all(p[1] in ("Float", "String", "Integer") and p[3] for p in macro.param_def)


def test_unsupported_synchronisation_is_refused_with_its_name():
    from sardana.pool import AcqSynch

    ct = _load(CONTROLLER_DIR / "Timepix3CounterTimerCtrl.py").Timepix3CounterTimerCtrl
    ctrl = ct("tpx3_ctctrl_test", {"Device": f"tango://127.0.0.1:{free_port()}/tpx3/detector/1",
                                   "Timeout": 1.0})
    ctrl.SetCtrlPar("synchronization", AcqSynch.SoftwareGate)
    assert ctrl.GetCtrlPar("synchronization") == AcqSynch.SoftwareGate
    for mode in (AcqSynch.HardwareTrigger, AcqSynch.HardwareGate, AcqSynch.HardwareStart, AcqSynch.SoftwareStart):
        with pytest.raises(ValueError, match=mode.name):
            ctrl.SetCtrlPar("synchronization", mode)
    assert ctrl.GetCtrlPar("synchronization") == AcqSynch.SoftwareGate



def test_nxscan_recorder_understands_the_references():
    """Sardana's NXscan recorder parses h5file references with its own URI pattern: ours must
    give it the file and the dataset (else it keeps strings instead of a virtual dataset)."""
    import os
    import re

    from sardana.macroserver.recorders.h5storage import NXscanH5_FileRecorder

    pattern = NXscanH5_FileRecorder().pattern
    m = re.match(pattern, file_reference("/data/run7/scan_00003.raw", None, True))
    assert m is not None
    assert os.path.normpath(m.group("filepath")) == "/data/run7/scan_00003.h5"
    assert m.group("dataset") == "centroided"
    m = re.match(pattern, file_reference("/data/run7/scan_00003.raw", None, False))
    assert m is not None and m.group("scheme") == "file"


@pytest.mark.timeout(60)
def test_a_fault_is_refused_at_prepare_and_a_failed_load_or_start_is_the_channels_fault():
    """PrepareOne refuses a device in Fault; LoadOne and StartAll never raise into the Pool (the
    Pool's software acquisition would stay busy for good): the channels report Fault with the
    reason until the next measurement prepares."""
    from sardana import State

    ct = _load(CONTROLLER_DIR / "Timepix3CounterTimerCtrl.py").Timepix3CounterTimerCtrl
    ctrl = ct("tpx3_ctctrl_fault", {"Device": f"tango://127.0.0.1:{free_port()}/tpx3/detector/1",
                                    "Timeout": 1.0})
    with pytest.raises(DeviceError, match="tpx3/detector/1 is in Fault"):
        ctrl.PrepareOne(1, 0.5, 1, 0.0, 1)
    assert ctrl.link.failure is None
    ctrl.LoadOne(1, 0.5, 1, 0.0)                     # writing AcquisitionTime fails: no exception
    assert ctrl.StateOne(2) == (State.Fault, ctrl.link.failure)
    assert "tpx3/detector/1" in ctrl.link.failure and "unreachable" in ctrl.link.failure
    ctrl.LoadOne(1, 0.0, 1, 0.0)                     # a bad integration time: no exception either
    assert "must be > 0" in ctrl.StateOne(1)[1]
    ctrl.link.integration_time = 0.5
    ctrl.StartAll()                                  # this point starts nothing and says why
    state, status = ctrl.StateOne(2)
    assert state == State.Fault and "must be > 0" in status, status
    with pytest.raises(DeviceError):
        ctrl.PrepareOne(1, 0.5, 1, 0.0, 1)           # the next measurement: the device's own state again
    state, status = ctrl.StateOne(2)
    assert state == State.Fault and "unreachable" in status and "must be > 0" not in status, status
