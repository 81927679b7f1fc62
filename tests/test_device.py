"""Unit tests of the Timepix3 Tango device in a DeviceTestContext child process (no database).

The device runs with the real AcquisitionController. Data are small seeded streams of
encoded pixel and TDC words sent over loopback UDP, so totals and rates can be checked
against the numbers sent. A stage failure is injected by patching the controller's
``fault()`` in this process before the server process is forked from it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

tango = pytest.importorskip("tango")
from tango import DevFailed, DevState  # noqa: E402
from tango.test_context import DeviceTestContext  # noqa: E402

from tango_tpx.device.database import free_port  # noqa: E402
from tango_tpx.device.timepix3 import (  # noqa: E402
    CENTROID_PROCESSES_MAX,
    ClusteringAlgorithm,
    Timepix3,
)
from tango_tpx.pipeline import controller as controller_module  # noqa: E402
from tango_tpx.tpx3.encode import encode_pixels, encode_tdc, quantize_pixel_toa, quantize_tdc_time  # noqa: E402
from tango_tpx.tpx3.units import ns_to_units  # noqa: E402

from .conftest import wait_until  # noqa: E402
from .tangosystem import wait_state  # noqa: E402

PERIOD_S = 0.25


def _desc(exc: DevFailed) -> str:
    return " ".join(e.desc for e in exc.args)


def make_stream(n_hits: int, n_triggers: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Pixel hits at x 10..19, y 30..39 and TDC1 rising edges 1 ms apart, time ordered words.

    Returns the words and the number of hits inside the default event window (0..1 ms after
    a trigger; hits before the first trigger belong to no event).
    """
    rng = np.random.default_rng(seed)
    t_trig = quantize_tdc_time(ns_to_units(1e6 * (1 + np.arange(n_triggers))))
    span = int(t_trig[-1]) + int(ns_to_units(1e6))
    toa = quantize_pixel_toa(np.sort(rng.integers(4096, span, n_hits)))
    x = rng.integers(10, 20, n_hits)
    y = rng.integers(30, 40, n_hits)
    tot = rng.integers(1, 100, n_hits)
    pix = encode_pixels(x, y, toa, tot)
    tdc = encode_tdc(np.ones(n_triggers, np.int64), np.ones(n_triggers, bool), t_trig,
                     1 + np.arange(n_triggers))
    t_all = np.concatenate([toa, t_trig])
    idx = np.searchsorted(t_trig, toa, side="right") - 1
    tof = toa - t_trig[np.maximum(idx, 0)]
    in_window = int(np.count_nonzero((idx >= 0) & (tof <= ns_to_units(1e6))))
    return np.concatenate([pix, tdc])[np.argsort(t_all, kind="stable")], in_window


def send_words(words: np.ndarray, port: int, seconds: float, payload_bytes: int = 8192) -> None:
    """Send ``words`` to 127.0.0.1:port in datagrams spread evenly over ``seconds``."""
    data = words.astype("<u8").tobytes()
    chunks = [data[i:i + payload_bytes] for i in range(0, len(data), payload_bytes)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.monotonic()
        for i, c in enumerate(chunks):
            s.sendto(c, ("127.0.0.1", port))
            delay = t0 + (i + 1) * seconds / len(chunks) - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def _context(**props) -> DeviceTestContext:
    base = {"UdpPort": free_port(kind=socket.SOCK_DGRAM), "SummaryPeriod": PERIOD_S, "DataStreamAddress": ""}
    base.update(props)
    return DeviceTestContext(Timepix3, properties=base, process=True, timeout=30)


@pytest.fixture
def udp_port() -> int:
    return free_port(kind=socket.SOCK_DGRAM)


@pytest.fixture
def device(udp_port):
    with _context(UdpPort=udp_port) as proxy:
        wait_state(proxy, DevState.ON, 60)   # armed in the background after start-up
        yield proxy


@pytest.mark.timeout(60)
def test_attributes_defaults_limits_and_errors(device, tmp_path):
    d = device
    assert d.state() == DevState.ON
    assert "ON" in d.status() and "UDP 127.0.0.1:" in d.status() and "armed" in d.status()

    # defaults
    assert d.CentroidProcesses == 1
    assert d.EventWindowStart == 0.0 and d.EventWindowEnd == 1000.0
    assert d.RecordingPath == ""
    assert d.Centroiding is True
    assert d.ClusteringAlgorithm == ClusteringAlgorithm.fast
    assert d.TotThreshold == 0
    assert d.TrainId == -1 and d.RecordingFile == ""

    # metadata users see
    cfg = d.get_attribute_config("EventWindowStart")
    assert cfg.unit == "us" and cfg.label == "Event window start" and cfg.format == "%.3f"
    assert "0 <= start <= end" in cfg.description
    cfg = d.get_attribute_config("CentroidProcesses")
    assert f"1..{CENTROID_PROCESSES_MAX}" in cfg.description
    assert d.get_attribute_config("HitRate").unit == "Hz"
    assert d.get_attribute_config("TofAxis").unit == "ns"
    assert "0..1023" in d.get_attribute_config("TotThreshold").description
    assert list(d.get_attribute_config("ClusteringAlgorithm").enum_labels) == ["fast", "dbscan"]
    writable = {a.name for a in d.attribute_list_query() if a.writable == tango.AttrWriteType.READ_WRITE}
    assert writable == {"CentroidProcesses", "EventWindowStart", "EventWindowEnd", "RecordingPath",
                         "Centroiding", "ClusteringAlgorithm", "TotThreshold", "AcquisitionTime",
                         "AcquisitionTriggers", "FilePrefix", "FileIndex", "AutoRecord", "AutoConvert", "Roi",
                         "ClusterRadius", "ClusterTimeWindow", "MinClusterSize"}
    # ranges are declared so that Taurus and Sardana show them
    for name, lo, hi in (("CentroidProcesses", "1", str(CENTROID_PROCESSES_MAX)), ("TotThreshold", "0", "1023"),
                         ("EventWindowEnd", "0", "1e+06"), ("AcquisitionTime", "0", "86400"),
                         ("MinClusterSize", "1", "1000"), ("ClusterRadius", "0", "16")):
        cfg = d.get_attribute_config(name)
        assert (float(cfg.min_value), float(cfg.max_value)) == (float(lo), float(hi)), name

    # archive events declared on the counters (an archiver needs no code change)
    ev = d.get_attribute_config_ex("TotalHits")[0].events
    assert ev.arch_event.archive_abs_change == "1" and ev.arch_event.archive_period == "10000"
    assert ev.ch_event.abs_change == "1"
    assert d.get_attribute_config_ex("HitRate")[0].events.arch_event.archive_rel_change == "5"

    # good writes read back
    d.CentroidProcesses = CENTROID_PROCESSES_MAX
    assert d.CentroidProcesses == CENTROID_PROCESSES_MAX
    d.EventWindowEnd = 2500.0
    d.EventWindowStart = 12.5
    assert (d.EventWindowStart, d.EventWindowEnd) == (12.5, 2500.0)
    d.Centroiding = False
    assert d.Centroiding is False
    d.ClusteringAlgorithm = ClusteringAlgorithm.dbscan
    assert d.ClusteringAlgorithm == ClusteringAlgorithm.dbscan
    d.TotThreshold = 5
    assert d.TotThreshold == 5
    d.RecordingPath = str(tmp_path)
    assert d.RecordingPath == str(tmp_path.resolve())
    d.RecordingPath = ""
    assert d.RecordingPath == ""

    # bad writes: refused (outside the declared range by Tango itself, the rest by the device
    # with a text naming what is allowed); value unchanged
    for bad in (0, CENTROID_PROCESSES_MAX + 1):
        with pytest.raises(DevFailed) as err:
            d.CentroidProcesses = bad
        assert "CentroidProcesses" in _desc(err.value) and "authorized" in _desc(err.value)
    assert d.CentroidProcesses == CENTROID_PROCESSES_MAX
    with pytest.raises(DevFailed) as err:
        d.EventWindowStart = 3000.0
    assert "must not be after EventWindowEnd (2500.0 us)" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.EventWindowEnd = 10.0
    assert "must not be before EventWindowStart (12.5 us)" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.EventWindowStart = -1.0
    assert "below the minimum authorized" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.EventWindowEnd = 2e6
    assert "above the maximum authorized" in _desc(err.value)
    assert (d.EventWindowStart, d.EventWindowEnd) == (12.5, 2500.0)
    with pytest.raises(DevFailed) as err:
        d.TotThreshold = 1024
    assert "TotThreshold" in _desc(err.value)
    assert d.TotThreshold == 5
    with pytest.raises(DevFailed) as err:
        d.Roi = [10, 0, 5, 5, 0, 1]
    assert "Roi must be 6 numbers" in _desc(err.value) and "x0 <= x1" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.FilePrefix = "../up"
    assert "FilePrefix may hold letters" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.RecordingPath = str(tmp_path / "missing")
    assert "does not exist" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.RecordingPath = "relative/dir"
    assert "absolute" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.RecordingPath = "/proc"  # a directory nobody (not even root) can create files in
    assert "not writable" in _desc(err.value)
    assert d.RecordingPath == ""
    with pytest.raises(DevFailed) as err:
        d.write_attribute("ClusteringAlgorithm", 7)
    assert "ClusteringAlgorithm" in _desc(err.value)  # Tango checks enum labels itself
    assert d.ClusteringAlgorithm == ClusteringAlgorithm.dbscan


@pytest.mark.timeout(90)
def test_state_machine_rates_totals_preview_and_events(device, udp_port):
    d = device
    with pytest.raises(DevFailed) as err:
        d.Stop()
    assert "Stop is not allowed in state ON" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.ResetCounters()
        d.CloseFile()
        d.Stop()
    assert "Stop is not allowed in state ON" in _desc(err.value)

    n_hits, n_trig, seconds = 24_000, 1200, 1.5
    words, n_events = make_stream(n_hits, n_trig, seed=1)
    assert n_hits * 0.99 < n_events < n_hits

    received: list[tuple[str, object, float]] = []
    lock = threading.Lock()

    def on_event(ev):
        if not ev.err and ev.attr_value is not None:
            with lock:
                received.append((ev.attr_value.name.lower(), ev.attr_value.value,
                                 ev.attr_value.time.totime()))

    ids = [d.subscribe_event(name, tango.EventType.CHANGE_EVENT, on_event)
           for name in ("TotalHits", "State", "HitRate", "TofHistogram")]
    archived: list[int] = []
    ids.append(d.subscribe_event("TotalHits", tango.EventType.ARCHIVE_EVENT,
                                 lambda ev: archived.append(ev.attr_value.value) if not ev.err else None))
    ready: list[int] = []
    ids.append(d.subscribe_event("Preview", tango.EventType.DATA_READY_EVENT,
                                 lambda ev: ready.append(ev.ctr) if not ev.err else None))
    try:
        d.Centroiding = False          # re-arms the pipeline (MOVING) without centroid workers
        assert d.state() == DevState.MOVING and "re-arming" in d.status()
        with pytest.raises(DevFailed) as err:
            d.Start()
        assert "Start is not allowed in state MOVING" in _desc(err.value)
        wait_state(d, DevState.ON, 60)
        d.Start()
        assert d.state() == DevState.RUNNING
        assert "RUNNING" in d.status() and f"127.0.0.1:{udp_port}" in d.status()
        with pytest.raises(DevFailed) as err:
            d.Start()
        assert "Start is not allowed in state RUNNING" in _desc(err.value)

        sender = threading.Thread(target=send_words, args=(words, udp_port, seconds))
        sender.start()
        previews = []
        while sender.is_alive():
            time.sleep(PERIOD_S)
            previews.append(d.Preview)
        sender.join()
        wait_until(lambda: d.TotalHits == n_hits, 10, f"{n_hits} hits")
        assert d.TotalTriggers == n_trig
        assert d.BytesReceived == words.size * 8
        assert d.MalformedWords == 0 and d.KernelDrops == 0 and d.LostTriggers == 0
        # HitRate is hits per second over each summary period (counter delta / period). The
        # UDP reader flushes in bursts and a loaded machine decodes in bursts, so single periods
        # vary; the rate integrated over the pushed periods is the number of hits.
        time.sleep(3 * PERIOD_S)   # a period push after the last hit
        with lock:
            pushed = sorted((t, v) for n, v, t in received if n == "hitrate")
        integral = sum(v * (t - t0) for (t0, _), (t, v) in zip(pushed, pushed[1:]))
        assert integral == pytest.approx(n_hits, rel=0.25), pushed
        # a slow start (kernels compiled on first data) may decode everything after the send:
        # the last complete preview period stays on display, so a frame with hits comes
        wait_until(lambda: previews.append(d.Preview) or int(previews[-1].sum()) > 0, 10,
                   "a Preview frame with hits")
        img = max(previews, key=lambda a: int(a.sum()))
        assert img.shape == (256, 256) and img.dtype == np.int32
        assert 0 < img.sum() <= n_hits
        assert img[30:40, 10:20].sum() == img.sum()  # y rows, x columns: only where we hit
        axis, hist = d.TofAxis, d.TofHistogram
        assert axis.size == hist.size > 0 and np.all(np.diff(axis) > 0)

        with lock:
            totals = [v for n, v, _ in received if n == "totalhits"]
            states = [v for n, v, _ in received if n == "state"]
        assert len(totals) >= 4, totals
        assert totals == sorted(totals) and totals[-1] == n_hits
        assert len(archived) >= 4 and archived == sorted(archived)
        assert DevState.RUNNING in states
        assert len(ready) >= 3 and ready == sorted(ready)

        def pushed_hists() -> list[np.ndarray]:
            with lock:
                return [v for n, v, _ in received if n == "tofhistogram" and v is not None and len(v)]
        # events arrived in a pushed ToF histogram
        wait_until(lambda: any(h.sum() > 0 for h in pushed_hists()), 10, "a ToF histogram with events")
        assert all(len(h) == axis.size for h in pushed_hists())

        d.Stop()
        assert d.state() in (DevState.MOVING, DevState.ON)
        wait_state(d, DevState.ON)
        # hits 0..1 ms after a trigger are events (the last one is flushed by Stop)
        wait_until(lambda: d.TotalEvents == n_events, 10, f"{n_events} events, got {d.TotalEvents}")
        d.ResetCounters()
        assert d.TotalHits == 0 and d.TotalTriggers == 0 and d.TotalEvents == 0
        time.sleep(2 * PERIOD_S)
        assert d.HitRate == 0.0
        with lock:
            states = [v for n, v, _ in received if n == "state"]
        assert states[-1] == DevState.ON  # the state change was pushed
    finally:
        for i in ids:
            d.unsubscribe_event(i)


@pytest.mark.timeout(60)
def test_open_file_rules(device, tmp_path, udp_port):
    d = device
    d.Centroiding = False
    wait_state(d, DevState.ON, 60)
    d.Start()
    with pytest.raises(DevFailed) as err:
        d.OpenFile("run1.raw")
    assert "needs RecordingPath" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.OpenFile(str(tmp_path / "missing-dir" / "x.raw"))
    assert "does not exist" in _desc(err.value)
    d.RecordingPath = str(tmp_path)
    full = d.OpenFile("run1.raw")
    assert full == str(tmp_path.resolve() / "run1.raw")
    assert d.RecordingFile == full
    assert full in d.status()
    words, _ = make_stream(500, 10, seed=2)
    send_words(words, udp_port, 0.05)
    wait_until(lambda: d.TotalHits == 500, 10, "500 hits")
    with pytest.raises(DevFailed) as err:
        d.OpenFile("run2.raw")
    assert f"already recording to {full}" in _desc(err.value)
    assert d.RecordingFile == full  # the refusal lost nothing
    assert not (tmp_path / "run2.raw").exists()
    d.CloseFile()                      # answers at once; the file is finished in the background
    assert d.RecordingFile == ""
    assert d.LastFile == full
    wait_until(lambda: os.path.getsize(full) >= words.size * 8, 10, "the closed file")
    size = os.path.getsize(full)
    assert size in (words.size * 8, words.size * 8 + 8)  # with or without the 8-byte header
    with pytest.raises(DevFailed) as err:
        d.OpenFile("run1.raw")
    assert "already exists" in _desc(err.value)
    assert os.path.getsize(full) == size  # untouched
    with pytest.raises(DevFailed) as err:
        d.OpenFile("../outside.raw")
    assert "outside RecordingPath" in _desc(err.value)
    with pytest.raises(DevFailed) as err:
        d.OpenFile("/tmp/elsewhere.raw")
    assert "outside RecordingPath" in _desc(err.value)
    sub = tmp_path / "sub"
    sub.mkdir()
    assert d.OpenFile(str(sub / "abs.raw")) == str(sub.resolve() / "abs.raw")
    d.Stop()  # closes the recording
    wait_state(d, DevState.ON)
    assert d.RecordingFile == ""
    d.CloseFile()  # harmless when nothing is recorded


@pytest.mark.timeout(60)
def test_stage_fault_goes_to_fault_and_init_recovers(tmp_path, monkeypatch):
    flag = tmp_path / "fault"
    original = controller_module.AcquisitionController.fault

    def fault(self):  # patched here, inherited by the forked server process
        return flag.read_text() if flag.exists() else original(self)

    monkeypatch.setattr(controller_module.AcquisitionController, "fault", fault)
    with _context() as d:
        wait_state(d, DevState.ON, 60)
        d.Start()
        flag.write_text("stage 'PacketProcessor' died: ZeroDivisionError: division by zero")
        wait_state(d, DevState.FAULT)
        assert "stage 'PacketProcessor' died: ZeroDivisionError" in d.status()
        assert "Init" in d.status()
        with pytest.raises(DevFailed) as err:
            d.Start()
        assert "not allowed in state FAULT" in _desc(err.value) and "Init" in _desc(err.value)
        with pytest.raises(DevFailed) as err:
            d.ResetCounters()
        assert "state FAULT" in _desc(err.value)
        flag.unlink()
        d.TotThreshold = 7
        d.Init()
        wait_state(d, DevState.ON, 60)
        assert d.TotThreshold == 7  # settings survive Init
        d.Start()
        assert d.state() == DevState.RUNNING
        d.Stop()
        wait_state(d, DevState.ON)


@pytest.mark.timeout(60)
def test_fault_on_busy_udp_port_names_port(udp_port):
    # another process holds the port (not this one: the server process is forked from here)
    holder = subprocess.Popen([sys.executable, "-c", "import socket, sys, time; s = socket.socket(socket.AF_INET, "
                               f"socket.SOCK_DGRAM); s.bind(('127.0.0.1', {udp_port})); print('bound', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        with _context(UdpPort=udp_port) as d:
            wait_state(d, DevState.FAULT, 60)
            assert f"127.0.0.1:{udp_port}" in d.status()
            with pytest.raises(DevFailed) as err:
                d.Start()
            assert "state FAULT" in _desc(err.value)
            holder.kill()
            holder.wait(10)
            d.Init()
            wait_state(d, DevState.ON, 60)
            d.Start()
            assert d.state() == DevState.RUNNING
            d.Stop()
            wait_state(d, DevState.ON)
    finally:
        holder.kill()
        holder.wait(10)


@pytest.mark.timeout(60)
def test_bad_properties_give_fault_with_reason():
    with _context(ChipLayout="hexa") as d:
        assert d.state() == DevState.FAULT
        assert "ChipLayout property must be 'single' or 'quad'" in d.status()
        with pytest.raises(DevFailed) as err:
            d.Start()
        assert "state FAULT" in _desc(err.value)


@pytest.mark.timeout(60)
def test_unusable_train_id_source_gives_fault_naming_property():
    # a path that does not exist yet is a receiver not plugged in (Status says so); a
    # source that can never work is a FAULT naming the property
    with _context(TrainIdSource="usb:zz:1") as d:
        assert d.state() == DevState.FAULT
        assert "TrainIdSource property 'usb:zz:1' cannot be used" in d.status()


@pytest.mark.timeout(60)
def test_quad_layout_preview_shape():
    with _context(ChipLayout="quad") as d:
        wait_state(d, DevState.ON, 60)
        assert d.Preview.shape == (516, 516)
