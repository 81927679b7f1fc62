"""Train IDs wired into the live system: AcquisitionController + SimulatedReceiver on
a real pty, the side file next to the raw recording, the HDF5 file made from it, the Tango
device's TrainId attribute and Status, and ``tango-tpx demo --trainid``.

Every test uses a real pty (the simulated receiver) and real threads/processes, all with
hard timeouts. Frame rates are 50-100 Hz (not XFEL's 10 Hz) to keep the tests short.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tango_tpx.device.database import free_port
from tango_tpx.pipeline.controller import TRAIN_COUNTER_KEYS, AcquisitionController
from tango_tpx.tpx3.encode import encode_pixels, encode_tdc, quantize_pixel_toa, quantize_tdc_time
from tango_tpx.tpx3.units import ns_to_units
from tango_tpx.io.trainid import TRAINID_DATASETS, TRAINID_LAYOUT, append_to_hdf5, read_hdf5
from tango_tpx.trainid import SimFaults, SimulatedReceiver, read_side_file, side_file_path

from .conftest import wait_until

START_ID = 2_000_000_000


def _stream(n_triggers: int, hits_per_trigger: int, seed: int, t0_ms: float = 1.0) -> np.ndarray:
    """Time-ordered pixel + TDC1 words: triggers 1 ms apart from ``t0_ms`` ms, hits 10..500 us
    after each trigger (so every hit is an event of the default 0..1 ms window)."""
    rng = np.random.default_rng(seed)
    t_trig = quantize_tdc_time(ns_to_units(1e6 * (t0_ms + np.arange(n_triggers))))
    dt = ns_to_units(rng.uniform(1e4, 5e5, (n_triggers, hits_per_trigger)))
    toa = quantize_pixel_toa((t_trig[:, None] + dt).ravel())
    n = toa.size
    pix = encode_pixels(rng.integers(0, 256, n), rng.integers(0, 256, n), toa, rng.integers(1, 200, n))
    tdc = encode_tdc(np.ones(n_triggers, np.int64), np.ones(n_triggers, bool), t_trig,
                     1 + np.arange(n_triggers))
    t_all = np.concatenate([toa, t_trig])
    return np.concatenate([pix, tdc])[np.argsort(t_all, kind="stable")]


def _send(words: np.ndarray, port: int, payload_bytes: int = 8192) -> None:
    data = words.astype("<u8").tobytes()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(0, len(data), payload_bytes):
            s.sendto(data[i:i + payload_bytes], ("127.0.0.1", port))
            time.sleep(0.001)


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "TrainIdReader" and t.is_alive()]


# --------------------------------------------------------------------------- layout

def test_trainid_layout_is_the_io_hdf5_layout(tmp_path: Path):
    """One definition of names, dtypes and units: trainid's columns match io/hdf5's."""
    h5py = pytest.importorskip("h5py")
    from tango_tpx.io.hdf5 import TRAINID

    by_name = {"timestamp": "timestamp", "train_id": "train id", "beam_mode": "beam mode"}
    for col, key in by_name.items():
        dtype, unit, _doc = TRAINID_LAYOUT[col]
        spec = TRAINID[key]
        assert TRAINID_DATASETS[col] == spec.path
        assert np.dtype(dtype) == spec.dtype
        assert unit == spec.unit, col
    assert TRAINID["train id"].unit == "" and TRAINID["timestamp"].unit == "ns"
    with h5py.File(tmp_path / "t.h5", "w") as f:
        append_to_hdf5(f, [(5, START_ID, 1)])
        assert f["timing/trainID/train id"].attrs["unit"] == ""
        assert f["timing/trainID/beam mode"].attrs["unit"] == ""
        assert f["timing/trainID/timestamp"].attrs["unit"] == "ns"


# --------------------------------------------------------------------------- controller

@pytest.mark.timeout(20)
def test_controller_counts_faults_exactly(tmp_path: Path):
    """Every byte the simulator writes is read (reader connected before it starts): frames,
    CRC errors, garbage, repeats and the gaps they leave are counted exactly; IDs in order."""
    sim = SimulatedReceiver(rate_hz=100, start_train_id=START_ID, max_frames=60, link_dir=str(tmp_path),
                            faults=SimFaults(bad_crc_every=7, garbage_every=5, repeat_every=11,
                                             bad_hex_every=23))
    ctl = AcquisitionController(udp_port=free_port(kind=socket.SOCK_DGRAM))
    try:
        assert ctl.train_id == -1 and ctl.counters()["train_status"] == ""
        ctl.set_train_id_source(sim.path)
        wait_until(lambda: ctl.train_status.startswith("connected"), 5, "the reader to connect")
        sim.start()
        assert sim.done.wait(5)
        c = sim.counts
        wait_until(lambda: ctl.counters()["train_frames"] == len(c.sent_ids), 5, "all frames")
        time.sleep(0.1)
        k = ctl.counters()
        assert set(TRAIN_COUNTER_KEYS) <= set(k)
        ids = ctl.train_history()["train_id"]
        assert ids.tolist() == c.sent_ids                       # in order, nothing invented
        # hand count for 60 ticks: bad CRC at 7,14,..,56 (8); bad hex at 23 and 46 (2);
        # garbage before 5,10,..,60 (12); repeats at 11,22,33,44,55 (5, all valid frames)
        assert (c.bad_crc, c.bad_hex, c.repeated) == (8, 2, 5)
        assert len(c.sent_ids) == 60 - 8 - 2
        assert k["train_errors"] == 10
        assert k["train_garbage_bytes"] == c.garbage_bytes == 12 * len(SimFaults().garbage)
        assert k["train_repeated"] == 5
        assert k["train_missed"] == 10          # each bad frame leaves a gap of one ID
        assert k["train_id"] == ctl.train_id == START_ID + 59
        assert k["train_beam_mode"] == 1 and k["train_connected"] == 1
        assert k["train_disconnects"] == 0 and k["train_reconnects"] == 0
        assert abs(k["train_host_time_ns"] - time.time_ns()) < 5e9
        ctl.reset_counters()                    # train counters restart, the latest ID stays
        k = ctl.counters()
        assert (k["train_frames"], k["train_errors"], k["train_missed"], k["train_id"]) == \
            (0, 0, 0, START_ID + 59)
        with pytest.raises(ValueError, match="bad USB source"):
            ctl.set_train_id_source("usb:zz:1")  # can never work: clear error, old source kept
        assert ctl.train_id == START_ID + 59 and ctl.train_status.startswith("connected")
        ctl.set_train_id_source("")              # off
        assert ctl.train_id == -1 and ctl.train_status == "" and not _reader_threads()
    finally:
        ctl.close()
        sim.stop()
    assert not _reader_threads()


@pytest.mark.timeout(60)
def test_controller_side_file_unplug_replug_and_hdf5(tmp_path: Path):
    """Running acquisition + recording + train IDs: the side file holds exactly the frames
    received while the raw file was open, unplugging is reported and the acquisition goes
    on, replugging reconnects, and the HDF5 made from the recording has timing/trainID."""
    h5py = pytest.importorskip("h5py")
    # the simulator exists before the pipeline forks its stages (they must not keep the pty)
    sim = SimulatedReceiver(rate_hz=50, start_train_id=START_ID, link_dir=str(tmp_path))
    port = free_port(kind=socket.SOCK_DGRAM)
    ctl = AcquisitionController(udp_port=port)
    ctl.event_window = (0.0, 1e-3)
    raw = tmp_path / "run.raw"
    try:
        ctl.set_train_id_source(sim.path, reconnect_min_s=0.05, reconnect_max_s=0.2)
        ctl.start()
        sim.start()
        wait_until(lambda: ctl.counters()["train_frames"] >= 5, 10, "first train IDs")
        words1 = _stream(20, 50, seed=1)
        n1 = int(np.count_nonzero((words1 >> np.uint64(60)) == 0xB))
        _send(words1, port)
        wait_until(lambda: ctl.counters()["hits"] == n1, 15, "hits of batch 1")

        t_open0 = time.time_ns()
        full = ctl.open_file(raw)
        t_open1 = time.time_ns()
        assert full == str(raw) and side_file_path(raw).exists()
        words2 = _stream(20, 50, seed=2, t0_ms=30.0)
        n2 = int(np.count_nonzero((words2 >> np.uint64(60)) == 0xB))
        _send(words2, port)
        f0 = ctl.counters()["train_frames"]
        wait_until(lambda: ctl.counters()["hits"] == n1 + n2, 15, "hits of batch 2")
        wait_until(lambda: ctl.counters()["train_frames"] >= f0 + 15, 10, "frames while recording")
        t_close0 = time.time_ns()
        ctl.close_file()
        t_close1 = time.time_ns()
        side = read_side_file(raw)
        assert ctl.counters()["train_side_frames"] == len(side) >= 15
        hist = ctl.train_history()
        # the side file is one contiguous run of the received frames ...
        i0 = int(np.flatnonzero(hist["train_id"] == side["train_id"][0])[0])
        assert np.array_equal(hist[i0:i0 + len(side)], side)
        assert (np.diff(side["train_id"].astype(np.int64)) == 1).all()
        # ... received while the file was open: all inside [open call, close return], and
        # every frame received between open return and close call is in it
        assert (side["timestamp_ns"] >= t_open0).all() and (side["timestamp_ns"] <= t_close1).all()
        inside = hist[(hist["timestamp_ns"] > t_open1) & (hist["timestamp_ns"] < t_close0)]
        assert np.isin(inside["train_id"], side["train_id"]).all()
        # closed: frames after close do not go in
        wait_until(lambda: ctl.counters()["train_frames"] >= f0 + len(side) + 5, 10, "frames after close")
        assert len(read_side_file(raw)) == len(side)

        # ---- unplug: reported, acquisition goes on
        last_before = ctl.train_id
        sim.unplug()
        wait_until(lambda: ctl.train_status.startswith("disconnected"), 5, "disconnected status")
        k = ctl.counters()
        assert k["train_connected"] == 0 and k["train_disconnects"] == 1
        assert k["train_status"].startswith("disconnected: serial ")
        words3 = _stream(10, 50, seed=3, t0_ms=60.0)
        n3 = int(np.count_nonzero((words3 >> np.uint64(60)) == 0xB))
        _send(words3, port)
        wait_until(lambda: ctl.counters()["hits"] == n1 + n2 + n3, 15, "hits while unplugged")
        assert ctl.running and ctl.fault() is None
        time.sleep(0.2)
        assert ctl.train_id == last_before                      # nothing invented meanwhile
        # ---- replug: reconnects, IDs go on (with the trains missed while unplugged)
        sim.replug()
        wait_until(lambda: ctl.counters()["train_reconnects"] == 1, 5, "reconnect")
        wait_until(lambda: ctl.train_id > last_before + 2, 5, "train IDs after replug")
        assert ctl.train_status.startswith("connected")
        ids = ctl.train_history()["train_id"].astype(np.int64)
        assert (np.diff(ids) > 0).all()
        assert ctl.counters()["train_missed"] >= sim.counts.unplugged_ticks > 0
        assert ctl.counters()["train_errors"] == 0
    finally:
        ctl.close()
        sim.stop()
    assert not _reader_threads() and not ctl.running

    # ---- HDF5 of the recording: the converter picks up <raw>.trainid.csv -> timing/trainID
    from tango_tpx.io.convert import convert_file

    h5 = tmp_path / "run.h5"
    res = convert_file(raw, h5)
    assert res.hits == n2 and res.train_ids == len(side)
    with h5py.File(h5, "r") as f:
        got = read_hdf5(f)
        assert np.array_equal(got, side)      # same frames, same order, same host times
        assert f[TRAINID_DATASETS["train_id"]].attrs["unit"] == ""
        assert f[TRAINID_DATASETS["timestamp"]].attrs["unit"] == "ns"


@pytest.mark.timeout(30)
def test_controller_usbtrainid_process_mode(tmp_path: Path):
    """process=True reads in a USBTrainID child process; close() ends it (no orphan)."""
    sim = SimulatedReceiver(rate_hz=100, start_train_id=START_ID, link_dir=str(tmp_path))
    ctl = AcquisitionController(udp_port=free_port(kind=socket.SOCK_DGRAM))
    try:
        ctl.set_train_id_source(sim.path, process=True)
        reader = ctl._train_reader
        wait_until(lambda: ctl.train_status.startswith("connected"), 15, "the child to connect")
        sim.start()
        wait_until(lambda: ctl.counters()["train_frames"] >= 10, 10, "frames from the child")
        ids = ctl.train_history()["train_id"].astype(np.int64)
        assert (np.diff(ids) == 1).all() and ids[0] >= START_ID
        assert reader.is_alive()
    finally:
        ctl.close()
        sim.stop()
    assert not reader.is_alive()


# --------------------------------------------------------------------------- Tango device

@pytest.mark.timeout(60)
def test_device_train_id_attribute_events_and_status(tmp_path: Path):
    tango = pytest.importorskip("tango")
    from tango import DevState
    from tango.test_context import DeviceTestContext

    from tango_tpx.device.timepix3 import Timepix3

    link = tmp_path / "ttyTRAINID"   # the receiver is "plugged in" after the server started
    props = {"UdpPort": free_port(kind=socket.SOCK_DGRAM), "SummaryPeriod": 0.2, "DataStreamAddress": "",
             "TrainIdSource": str(link)}
    sim = None
    with DeviceTestContext(Timepix3, properties=props, process=True, timeout=30) as d:
        d.set_timeout_millis(15000)
        got: list[int] = []
        lock = threading.Lock()

        def on_event(ev):
            if not ev.err and ev.attr_value is not None:
                with lock:
                    got.append(int(ev.attr_value.value))

        sid = d.subscribe_event("TrainId", tango.EventType.CHANGE_EVENT, on_event)
        try:
            wait_until(lambda: d.state() == DevState.ON, 60, "the armed pipeline (ON)")
            assert d.TrainId == -1
            wait_until(lambda: "train-ID receiver disconnected:" in d.status(), 10, "'not there yet' in Status")
            sim = SimulatedReceiver(rate_hz=50, start_train_id=START_ID, link_dir=str(tmp_path)).start()
            # train IDs flow while ON, as change events
            wait_until(lambda: len([v for v in got if v >= START_ID]) >= 3, 15, "TrainId change events")
            d.Start()
            assert d.state() == DevState.RUNNING
            wait_until(lambda: "train-ID receiver connected" in d.status(), 5, "connected in Status")
            with lock:
                n_before = len(got)
            wait_until(lambda: len(got) >= n_before + 3, 10, "TrainId events while RUNNING")
            with lock:
                vals = [v for v in got if v >= 0]
            assert vals == sorted(vals) and vals[-1] > vals[0] >= START_ID
            assert d.TrainId >= vals[-1]
            # unplugged: Status says so, State stays RUNNING
            sim.unplug()
            wait_until(lambda: "train-ID receiver disconnected:" in d.status(), 10, "disconnected Status")
            assert d.state() == DevState.RUNNING
            frozen = d.TrainId
            sim.replug()
            wait_until(lambda: d.TrainId > frozen, 10, "TrainId after replug")
            wait_until(lambda: "train-ID receiver connected" in d.status(), 5, "reconnected Status")
            assert d.state() == DevState.RUNNING
            d.Stop()
            wait_until(lambda: d.state() == DevState.ON, 10, "ON after Stop")
        finally:
            d.unsubscribe_event(sid)
            if sim is not None:
                sim.stop()


# --------------------------------------------------------------------------- demo

@pytest.mark.timeout(150)
def test_demo_with_trainid_exits_0(tmp_path: Path):
    from tango_tpx.device.database import stop_process_group

    pytest.importorskip("tango")
    proc = subprocess.Popen([sys.executable, "-m", "tango_tpx.cli", "demo", "--trainid", "--duration", "2",
                             "--rate", "0.02", "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        out, _ = proc.communicate(timeout=130)
    finally:
        stop_process_group(proc)
    assert proc.returncode == 0, out
    m = re.search(r"train IDs: last on the device (\d+), (\d+) in \S+ \((\d+)\.\.(\d+), in order: True\)", out)
    assert m, out
    last, n, first_id, last_id = (int(g) for g in m.groups())
    assert n >= 5 and last_id - first_id + 1 == n and last >= last_id >= 1_000_000_000
    assert re.search(r"\| train 1\d{9}", out), out       # live lines show the TrainId events
    raw = next((tmp_path / "data").glob("demo-*.raw"))
    assert len(read_side_file(raw)) == n


@pytest.mark.timeout(60)
def test_device_faults_on_a_source_that_can_never_work():
    """A missing path is 'not plugged in yet' (ON, Status says disconnected); a malformed
    source is a configuration error (FAULT naming the property)."""
    pytest.importorskip("tango")
    from tango import DevState
    from tango.test_context import DeviceTestContext

    from tango_tpx.device.timepix3 import Timepix3

    props = {"UdpPort": free_port(kind=socket.SOCK_DGRAM), "SummaryPeriod": 0.2, "DataStreamAddress": "",
             "TrainIdSource": "usb:zz:1"}
    with DeviceTestContext(Timepix3, properties=props, process=True, timeout=30) as d:
        assert d.state() == DevState.FAULT
        assert "TrainIdSource property 'usb:zz:1' cannot be used" in d.status()
        assert "bad USB source" in d.status()
