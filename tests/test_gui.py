"""The Timepix3 window against the real system: embedded Tango database + ``TangoTpx`` server
process + simulated SPIDR data over UDP on loopback; Qt offscreen, driven through its own widgets.

One database and one server for the module (summary period 0.5 s); each test that needs data
runs the simulator in a thread and stops it at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PyQt5.QtWidgets", reason="PyQt5 or the system libraries Qt needs (libgl1, libglib2.0-0, "
                    "libfontconfig1: see the README's GUI section) are missing")
pytest.importorskip("pyqtgraph")
tango = pytest.importorskip("tango")
from tango import DevState  # noqa: E402

from tango_tpx.device.database import free_port  # noqa: E402

from .conftest import wait_until  # noqa: E402
from .tangosystem import DEVICE, DeviceSystem  # noqa: E402
from .test_pipeline_helpers import pid_alive  # noqa: E402

PERIOD_S = 0.5


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = DeviceSystem(tmp_path_factory.mktemp("gui"), summary_period=PERIOD_S, timeout_ms=15000)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def app():
    from tango_tpx.gui.app import make_app

    return make_app()


def pump(app, seconds: float) -> None:
    """Run the Qt event loop for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def wait_gui(app, pred, timeout: float, what: str):
    """Run the Qt loop until ``pred()`` is truthy (returned) or fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def state(dev):
    """The device's state, None while it cannot answer (a command may hold it for seconds)."""
    try:
        return dev.state()
    except tango.DevFailed:
        return None


@pytest.fixture
def dev(system):
    d = system.proxy
    if state(d) == DevState.FAULT:
        d.Init()
    wait_until(lambda: state(d) in (DevState.ON, DevState.RUNNING), 60, "the device ON (armed)")
    if d.state() == DevState.RUNNING:
        d.Stop()
        wait_until(lambda: state(d) == DevState.ON, 30, "the device ON after Stop")
    d.EventWindowStart = 0.0
    d.EventWindowEnd = 10.0
    yield d
    try:
        if d.state() == DevState.RUNNING:
            d.Stop()
        wait_until(lambda: state(d) == DevState.ON, 30, "the device ON after Stop")
    except tango.DevFailed:
        pass


@pytest.fixture
def window(app, system):
    from tango_tpx.gui.window import TpxWindow

    w = TpxWindow(system.url).start()
    try:
        wait_gui(app, lambda: w.link.is_connected and w.header.state is not None, 30, "the GUI to connect")
        yield w
    finally:
        w.close()
        assert not w.link._thread.is_alive()
        w.deleteLater()
        pump(app, 0.05)


@pytest.fixture
def simulator(system):
    from tango_tpx.device.demo import _start_simulator

    stop = threading.Event()
    result: dict = {}
    thread = _start_simulator(0.2, 3600.0, 7, system.udp_port, stop, result)
    yield result
    stop.set()
    thread.join(10)
    assert "error" not in result, result


@pytest.mark.timeout(120)
def test_image_shows_the_devices_preview_and_tof_plot_its_bins(app, dev, window, simulator):
    window.controls.start.click()
    wait_gui(app, lambda: state(dev) == DevState.RUNNING, 15, "RUNNING after Start in the GUI")
    pump(app, 3.0)  # 3 s of simulated data
    # the image equals the device's Preview of the same period (the device may have moved on by one)
    for _ in range(40):
        before = int(dev.Preview.sum())
        pump(app, 0.05)
        shown = window.image.data
        after = int(dev.Preview.sum())
        if shown is not None and int(shown.sum()) > 0 and int(shown.sum()) in (before, after):
            break
        pump(app, 0.2)
    else:
        raise AssertionError(f"image sum {None if shown is None else shown.sum()} vs Preview {before}/{after}")
    assert window.image.data.shape == dev.Preview.shape
    assert window.image.frames >= 2  # updated by events, period after period

    # the ToF plot has the device's bins (axis in µs) and the device's counts
    axis_ns = dev.TofAxis
    assert axis_ns.size > 0
    for _ in range(40):
        h0 = dev.TofHistogram
        pump(app, 0.05)
        hist = window.tof.hist.copy()
        h1 = dev.TofHistogram
        if hist.size and hist.sum() > 0 and any(np.array_equal(hist, h) for h in (h0, h1)):
            break
        pump(app, 0.2)
    else:
        raise AssertionError("the ToF plot never showed the device's histogram")
    np.testing.assert_allclose(window.tof.axis_us * 1000.0, axis_ns)
    x, y = window.tof.curve.getData()
    np.testing.assert_allclose(x, axis_ns / 1000.0)
    assert len(y) == axis_ns.size
    # rates reached the trends and the counters form
    assert len(window.trends.history["HitRate"]) >= 2
    assert window.counters.labels["TotalHits"].value > 0

    # log scale changes the display only
    window.image.log.setChecked(True)
    pump(app, 0.1)
    assert window.image.data.sum() > 0

    # Stop in the GUI puts the device in ON
    window.controls.stop.click()
    wait_gui(app, lambda: state(dev) == DevState.ON, 20, "ON after Stop in the GUI")
    wait_gui(app, lambda: window.header.state == DevState.ON, 10, "the header to show ON")
    assert window.header.state_label.text() == "ON"

    # the acquisition's image (when the device has one): the GUI shows the device's sum
    if "AcquisitionImage" in dev.get_attribute_list():
        window.image.combo.setCurrentIndex(1)
        wait_gui(app, lambda: window.image.data is not None
                 and int(window.image.data.sum()) == int(dev.AcquisitionImage.sum()) > 0, 15,
                 "the acquisition image")


@pytest.mark.timeout(90)
def test_setting_or_dragging_the_window_writes_the_device(app, dev, window):
    tof = window.tof
    wait_gui(app, lambda: tof.end.value() == pytest.approx(10.0), 10, "the window end from the device")
    # type into the spin box and finish the edit
    tof.end.setValue(500.0)
    tof.end.editingFinished.emit()
    wait_gui(app, lambda: dev.EventWindowEnd == pytest.approx(500.0), 10, "EventWindowEnd = 500")
    tof.start.setValue(12.5)
    tof.start.editingFinished.emit()
    wait_gui(app, lambda: dev.EventWindowStart == pytest.approx(12.5), 10, "EventWindowStart = 12.5")
    wait_gui(app, lambda: tuple(round(v, 3) for v in tof.window_region.getRegion()) == (12.5, 500.0), 10,
             "the region to follow the device")
    # drag the region: wholly beyond the old end (the writes must go end first)
    tof.window_region.setRegion((600.0, 900.0))
    wait_gui(app, lambda: (dev.EventWindowStart, dev.EventWindowEnd) == (600.0, 900.0), 10,
             "the dragged window (600, 900) on the device")
    tof.window_region.setRegion((20.0, 300.0))
    wait_gui(app, lambda: (dev.EventWindowStart, dev.EventWindowEnd) == (20.0, 300.0), 10,
             "the dragged window (20, 300) on the device")
    wait_gui(app, lambda: tof.start.value() == 20.0 and tof.end.value() == 300.0, 10, "the spin boxes")
    assert window.errors == []

    # the ROI: drag the rectangle on the image, then its ToF limits on the spectrum
    if "Roi" in dev.get_attribute_list():
        original = list(dev.Roi)
        try:
            wait_gui(app, lambda: window.image._roi_value is not None, 10, "the ROI from the device")
            window.image.roi.setSize((50, 60), finish=False)
            window.image.roi.setPos((10, 20))  # finishes the move: one write
            wait_gui(app, lambda: list(dev.Roi[:4]) == [10, 20, 60, 80], 10, "Roi x/y on the device")
            wait_gui(app, lambda: list(tof._roi_value[:4]) == [10, 20, 60, 80], 10, "Roi back in the GUI")
            tof.roi_region.setRegion((2.0, 5.0))
            wait_gui(app, lambda: list(dev.Roi) == [10, 20, 60, 80, 2.0, 5.0], 10, "Roi ToF on the device")
        finally:
            dev.Roi = original

    # a value the device refuses: its message in the status bar, the GUI goes on
    tof.end.setValue(5.0)  # below the start
    tof.end.editingFinished.emit()
    wait_gui(app, lambda: window.errors, 10, "the refusal")
    what, message = window.errors[-1]
    assert "EventWindowEnd" in what and message
    assert "refused" in window.statusBar().currentMessage()
    assert dev.EventWindowEnd == 300.0
    wait_gui(app, lambda: tof.end.value() == 300.0, 10, "the spin box back at the device's value")


@pytest.mark.timeout(60)
def test_widgets_follow_the_devices_attribute_list(app, dev, window):
    names = {a.name.lower(): a for a in dev.attribute_list_query()}
    checked = 0
    for panel in (window.controls, window.settings):
        for editor in panel.editors:
            info = names.get(editor.name.lower())
            usable = info is not None and info.writable != tango.AttrWriteType.READ
            assert editor.widget.isEnabled() == usable, editor.name
            if info is None:
                assert f"no attribute {editor.name}" in editor.widget.toolTip()
            checked += 1
    assert checked >= 10
    assert window.settings.tot.isEnabled() and window.controls.path.isEnabled()
    for name, label in window.counters.labels.items():
        assert label.isEnabled() == (name.lower() in names), name


@pytest.mark.timeout(120)
def test_screenshot_command_writes_a_png_of_live_data(system, dev, simulator, tmp_path):
    from PyQt5 import QtGui

    dev.Start()
    wait_until(lambda: state(dev) == DevState.RUNNING, 15, "RUNNING")
    out = tmp_path / "gui.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", TANGO_HOST=system.db.tango_host)
    r = subprocess.run([sys.executable, "-m", "tango_tpx.cli", "gui", "--screenshot", str(out),
                        "--after", "3"], env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "screenshot saved" in r.stdout
    img = QtGui.QImage(str(out))
    assert not img.isNull() and img.width() >= 800 and img.height() >= 500
    colours = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
    assert len(colours) > 50  # not one flat colour


@pytest.mark.timeout(90)
def test_missing_device_shows_the_error_and_closes_cleanly(app, system, tmp_path):
    from tango_tpx.gui.window import TpxWindow

    w = TpxWindow(f"tango://{system.db.tango_host}/tpx3/missing/9").start()
    try:
        wait_gui(app, lambda: "cannot reach" in w.header.status.text(), 30, "the connection error")
        assert "tpx3/missing/9" in w.header.status.text()
        assert w.header.state_label.text() == "UNKNOWN"
        assert not w.controls.start.isEnabled() and "not connected" in w.controls.start.toolTip()
        w.controls.start.click()  # disabled: nothing happens
        pump(app, 0.5)
    finally:
        t0 = time.monotonic()
        w.close()
        assert not w.link._thread.is_alive()
        assert time.monotonic() - t0 < 10
        w.deleteLater()
    # the command too, against a database that is not there, exits 0 after its screenshot
    port = free_port()
    out = tmp_path / "missing.png"
    no_display = {k: v for k, v in os.environ.items()
                  if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    cmd = [sys.executable, "-m", "tango_tpx.cli", "gui", f"tango://127.0.0.1:{port}/a/b/c"]
    r = subprocess.run(cmd + ["--screenshot", str(out), "--after", "2"], env=no_display,  # offscreen by itself
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.stat().st_size > 0
    # no display and no screenshot: a clear message, not a Qt abort
    r = subprocess.run(cmd, env=no_display, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no display" in r.stderr and "--screenshot" in r.stderr


@pytest.mark.timeout(150)
def test_reconnects_when_the_device_comes_back(app, system, dev, window):
    system.stop_server()
    try:
        wait_gui(app, lambda: window.header.state_label.text() == "UNKNOWN", 30,
                 "the GUI to notice the lost device")
        assert not window.link.is_connected
        assert "lost" in window.header.status.text() or "cannot reach" in window.header.status.text()
    finally:
        system.start_server()
    wait_gui(app, lambda: window.link.is_connected and window.header.state == DevState.ON, 40,
             "the GUI to reconnect")
    assert window.controls.start.isEnabled()


def test_default_device_is_the_first_timepix3_in_the_database(system):
    from tango_tpx.gui.app import FALLBACK_DEVICE, default_device

    assert default_device(system.db.tango_host) == (DEVICE, "")
    name, note = default_device(f"127.0.0.1:{free_port()}")
    assert name == FALLBACK_DEVICE and "cannot be asked" in note


@pytest.mark.timeout(240)
def test_demo_gui_screenshot_runs_the_system_and_stops_it(tmp_path):
    import re

    out = tmp_path / "demo.png"
    r = subprocess.run([sys.executable, "-m", "tango_tpx.cli", "demo", "--gui", "--rate", "0.2", "--screenshot",
                        str(out), "--after", "4", "--workdir", str(tmp_path / "demo")],
                       env=dict(os.environ, QT_QPA_PLATFORM="offscreen"), capture_output=True, text=True,
                       timeout=200, start_new_session=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.stat().st_size > 10_000
    m = re.search(r"server pid (\d+), database pid (\d+)", r.stdout)
    assert m, r.stdout
    for pid in map(int, m.groups()):  # nothing left behind
        assert not pid_alive(pid), pid


@pytest.mark.timeout(30)
def test_widgets_of_attributes_the_device_lacks_are_disabled_with_a_reason(app):
    from tango_tpx.gui.link import AttrInfo
    from tango_tpx.gui.window import TpxWindow

    def info(name, writable=True, is_array=False):
        return AttrInfo(name, writable, is_array, "", name, "", None, None, ())

    w = TpxWindow("tango://127.0.0.1:1/a/b/c")  # never started: no connection is tried
    try:
        assert not w.tof.start.isEnabled() and "not connected" in w.tof.start.toolTip()
        # a device without the acquisition settings, AcquisitionImage and Roi attributes
        attrs = {a.name.lower(): a for a in (info("EventWindowStart"), info("EventWindowEnd"),
                                              info("TotalHits", writable=False), info("Preview", False, True))}
        w.link.connected.emit(attrs)
        pump(app, 0.05)
        assert w.tof.start.isEnabled() and w.tof.end.isEnabled()
        assert not w.controls.acq_time.isEnabled()
        assert "this device has no attribute AcquisitionTime" in w.controls.acq_time.toolTip()
        assert not w.controls.start.isEnabled() and "no command Start" in w.controls.start.toolTip()
        assert w.counters.labels["TotalHits"].isEnabled() and not w.counters.labels["RoiHits"].isEnabled()
        assert w.counters.labels["RoiHits"].text() == "n/a"
        assert not w.image.combo.model().item(1).isEnabled()  # AcquisitionImage
        assert not w.image.roi.isVisible() and not w.tof.roi_region.isVisible()
        w.link.value.emit("totalhits", 1234567)
        w.link.value.emit("eventwindowend", 250.0)
        pump(app, 0.05)
        assert w.counters.labels["TotalHits"].text() == "1\u2009234\u2009567"
        assert w.tof.end.value() == 250.0
        w.link.disconnected.emit("lost tango://127.0.0.1:1/a/b/c: gone")
        pump(app, 0.05)
        assert w.header.status.text().endswith("gone") and not w.tof.start.isEnabled()
    finally:
        w.close()
        w.deleteLater()
