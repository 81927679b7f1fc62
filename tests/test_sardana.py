"""Timepix3 through Sardana: real Pool, MacroServer and Door processes on the embedded database,
the real TangoTpx server and the simulator streaming UDP on loopback.

One system (database, server, simulator, Sardana) is shared by the module: it takes
20-40 s to start on two cores. Every test leaves the device ON and the measurement
group as ``sardana-setup`` made it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sardana")
h5py = pytest.importorskip("h5py")
tango = pytest.importorskip("tango")

from tango_tpx.sardana import CT_CHANNELS, IMAGE_CHANNEL, MEASUREMENT_GROUP  # noqa: E402
from tango_tpx.sardana.demo import reference_path, scan_references  # noqa: E402
from tango_tpx.sardana.system import SardanaSystem  # noqa: E402

from .conftest import wait_for, wait_until  # noqa: E402

#: Simulated hit rate (hits/s) - low, the machine is shared.
RATE_HZ = 0.2e6

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = SardanaSystem(tmp_path_factory.mktemp("sardana"), rate_mhits=RATE_HZ / 1e6)
    try:
        s.start()
        missing = [a for a in ("AcquisitionTime", "AutoRecord", "LastFile", "AcquisitionHits")
                   if a.lower() not in {n.lower() for n in s.device.get_attribute_list()}]
        if missing:
            pytest.skip(f"the Timepix3 device has no bounded acquisitions / file series yet "
                        f"(missing attributes {', '.join(missing)})")
        yield s
    finally:
        s.close()


@pytest.fixture
def door(system):
    dev = system.device
    if dev.state() != tango.DevState.ON:
        dev.Init()
    wait_until(lambda: dev.state() == tango.DevState.ON, 30, "device ON")
    yield system.door
    if system.door.state() == "RUNNING":
        system.door.abort()
    wait_until(lambda: dev.state() not in (tango.DevState.RUNNING, tango.DevState.MOVING), 30, "device idle")


def _run_ok(door, command: str, timeout: float = 180.0):
    result = door.run(command, timeout=timeout)
    assert result.ok, f"{command}: door {result.state}\n" + "\n".join(result.output + result.errors)
    return result


def _ct_values(output: list[str]) -> dict[str, float]:
    """``{channel: value}`` from the lines ``ct`` prints (``   tpx3_hits = 98765.0``)."""
    values = {}
    for line in output:
        m = re.match(r"\s*(\w+)\s*=\s*([-+0-9.eE]+)\s*$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def _hits_in(path: Path) -> int:
    """Pixel hits in a raw file, decoded from its words."""
    from tango_tpx.tpx3.codec import Decoder
    from tango_tpx.tpx3.files import inspect_file, iter_words

    dec = Decoder(framing=inspect_file(str(path)).framing)
    return sum(len(dec.decode(words).pixels) for words in iter_words(str(path)))


def _last_scan(system):
    return scan_references(system.scan_dir / "tpx3_scans.h5")


def test_ct_counts_grow_with_time_at_the_simulated_rate(system, door):
    half = _ct_values(_run_ok(door, "ct 0.5").output)
    full = _ct_values(_run_ok(door, "ct 1.0").output)
    assert set(CT_CHANNELS) <= set(half) and set(CT_CHANNELS) <= set(full), half
    for seconds, values in ((0.5, half), (1.0, full)):
        assert values["tpx3_hits"] > 0
        assert values["tpx3_hits"] == pytest.approx(RATE_HZ * seconds, rel=0.10), values
        assert values["tpx3_time"] == pytest.approx(seconds, rel=0.10), values
        assert values["tpx3_triggers"] == pytest.approx(1000 * seconds, rel=0.10), values
        assert 0 < values["tpx3_centroids"] < values["tpx3_hits"]
    assert full["tpx3_hits"] > half["tpx3_hits"]


def test_software_gate_counts_and_software_start_is_refused(system, door):
    mg = MEASUREMENT_GROUP
    try:
        _run_ok(door, ["set_meas_conf", "Synchronization", "Gate", [], mg])
        values = _ct_values(_run_ok(door, "ct 0.3").output)
        assert values["tpx3_hits"] > 0 and values["tpx3_triggers"] > 0, values
        _run_ok(door, ["set_meas_conf", "Synchronization", "Start", [], mg])
        result = door.run("ct 0.3", timeout=60)
        assert not result.ok
        assert any("SoftwareStart is not supported" in line for line in result.errors), result.errors
    finally:
        _run_ok(door, ["set_meas_conf", "Synchronization", "Trigger", [], mg])
    assert system.device.state() == tango.DevState.ON


def test_ascan_writes_nxscan_with_one_existing_file_per_point(system, door):
    result = _run_ok(door, "ascan mot01 0 1 4 0.5")
    assert any(line.split()[:3] == ["#Pt", "No", "mot01"] for line in result.output), result.output
    entry, refs = _last_scan(system)
    assert len(refs) == 5 and len(set(refs)) == 5, refs
    paths = [reference_path(r) for r in refs]
    assert all(r.startswith("file://") and r.endswith(".raw") for r in refs), refs
    assert all(p.exists() for p in paths), refs
    with h5py.File(system.scan_dir / "tpx3_scans.h5", "r") as f:
        hits = f[f"{entry}/measurement/tpx3_hits"][()]
        mot = f[f"{entry}/measurement/mot01"][()]
    np.testing.assert_allclose(mot, [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    for path, counted in zip(paths, hits):
        in_file = _hits_in(path)
        assert in_file > 0
        assert in_file == counted, (path, in_file, counted)  # the file holds exactly the point's hits
    image = tango.DeviceProxy(system.url(IMAGE_CHANNEL)).read_attribute("Value").value
    assert image.shape == (256, 256) and int(image.sum()) == int(hits[-1])  # last point's image


def test_h5file_reference_with_autoconvert_becomes_a_dataset_of_the_scan_file(system, door):
    pattern = f"h5file://{system.data_dir}/conv_{{index}}"
    _run_ok(door, ["set_meas_conf", "ValueRefPattern", pattern, [IMAGE_CHANNEL], MEASUREMENT_GROUP])
    try:
        _run_ok(door, "ascan mot01 0 1 2 0.3")
    finally:  # back to the device's RecordingPath and FilePrefix, no conversion
        _run_ok(door, ["set_meas_conf", "ValueRefPattern", f"file://{system.data_dir}/", [IMAGE_CHANNEL],
                       MEASUREMENT_GROUP])
    entry, refs = _last_scan(system)
    assert len(refs) == 3 and len(set(refs)) == 3, refs
    for ref in refs:
        assert ref.startswith("h5file://") and ref.endswith(".h5::centroided"), ref
        assert Path(ref[len("h5file://"):].split("::")[0]).name.startswith("conv_")
    with h5py.File(system.scan_dir / "tpx3_scans.h5", "r") as f:
        ds = f[f"{entry}/measurement/{IMAGE_CHANNEL}"]
        assert ds.is_virtual and ds.shape[0] == 3
    for ref in refs:  # the conversions run in the background after each point
        path = reference_path(ref)

        def converted():
            try:
                with h5py.File(path, "r") as h5:
                    return bool(h5.attrs.get("complete")) and "centroided" in h5
            except OSError:
                return False

        wait_until(converted, 120, f"{path} converted")


def test_door_abort_mid_point_leaves_device_on_and_file_closed(system, door):
    dev = system.device
    before = dev.LastFile
    door.start("ascan mot01 0 1 3 4.0")
    wait_until(lambda: dev.state() == tango.DevState.RUNNING, 60, "the first point acquiring")
    time.sleep(1.0)
    door.abort()
    wait_until(lambda: dev.state() == tango.DevState.ON, 30, "device ON after the abort")
    assert dev.RecordingFile == ""
    last = Path(dev.LastFile)
    assert str(last) != before and last.exists()
    assert _hits_in(last) > 0  # closed and readable
    assert door.state() in ("ON", "ALARM")


def test_macros_print_what_they_did(system, door):
    out = _run_ok(door, "tpx3_window 0 500").output
    assert out == ["tpx3_window: 0 .. 500 us"]
    out = _run_ok(door, "tpx3_roi 0 0 127 255 0 1000").output
    assert out == ["tpx3_roi: x 0..127 px, y 0..255 px, ToF 0..1000 us"]
    try:
        out = _run_ok(door, "tpx3_record 1 macro_").output
    finally:
        _run_ok(door, "tpx3_window 0 1000")
        _run_ok(door, "tpx3_roi 0 0 255 255 0 1000")
    assert len(out) == 2 + int(system.device.AutoConvert), out
    path = Path(out[0].split(": ", 1)[1])
    assert path.name.startswith("macro_") and path.suffix == ".raw" and path.exists()
    m = re.match(r"tpx3_record: ([0-9.]+) s, hits (\d+), centroids (\d+), triggers (\d+), "
                 r"ROI hits (\d+), ROI centroids (\d+)", out[1])
    assert m, out[1]
    seconds, hits, cents, trig, roi_hits, roi_cents = (float(x) for x in m.groups())
    assert seconds == pytest.approx(1.0, rel=0.1)
    assert hits == pytest.approx(RATE_HZ, rel=0.1)
    assert 0 < roi_hits < hits and 0 <= roi_cents <= cents
    status = _run_ok(door, "tpx3_status").output
    assert status[0].startswith("tpx3/detector/1: ON")
    assert any(f"LastFile={path}" in line for line in status)


def _pipeline_stages(pid: int) -> list[int]:
    """Child processes of the server ``pid`` that are forked pipeline stages (same command
    line as the server; the resource tracker and the converter are spawned, not forked)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and (stat.parent / "cmdline").read_bytes() == cmdline:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(kids)


def test_device_fault_is_reported_by_the_channels_with_its_status(system, door):
    dev = system.device
    stages = _pipeline_stages(system.server.pid)
    assert stages, "the TangoTpx server has no pipeline processes"
    os.kill(stages[-1], signal.SIGKILL)  # a pipeline stage dies -> the device goes to FAULT
    try:
        wait_until(lambda: dev.state() == tango.DevState.FAULT, 30, "device FAULT")
        channel = tango.DeviceProxy(system.url("tpx3_hits"))
        wait_until(lambda: channel.state() == tango.DevState.FAULT, 20, "channel FAULT")
        device_status = dev.status().strip().splitlines()[0]
        assert device_status in channel.status(), (device_status, channel.status())
        result = door.run("ct 0.3", timeout=60)  # refused: the channels are in Fault
        assert not result.ok
        assert any("Fault" in line for line in result.errors), result.errors
    finally:
        dev.Init()
    # Init closes the faulted pipeline (up to 30 s) and arms a new one (ready within 60 s)
    if not wait_for(lambda: dev.state() == tango.DevState.ON, 100):
        raise AssertionError(f"device not ON 100 s after Init: {dev.state()}, {dev.status()!r}")
    assert _run_ok(door, "ct 0.2")


def test_a_start_refused_within_a_point_ends_it_with_fault_and_the_next_ct_runs(system, door):
    dev = system.device
    blocker = Path(dev.RecordingPath) / f"{dev.FilePrefix}{dev.FileIndex:05d}.raw"
    blocker.write_bytes(b"")  # the series' next file exists: the device refuses Start, while ON
    try:
        result = door.run("ct 0.2", timeout=60)
        assert not result.ok
        assert any("Fault" in line for line in result.errors), result.errors
        channel = tango.DeviceProxy(system.url("tpx3_hits"))
        assert channel.state() == tango.DevState.FAULT
        assert str(blocker) in channel.status() and "already exists" in channel.status(), channel.status()
        assert dev.state() == tango.DevState.ON
    finally:
        blocker.unlink()
    values = _ct_values(_run_ok(door, "ct 0.2").output)  # the Pool is not left waiting for the failed point
    assert values["tpx3_hits"] == pytest.approx(RATE_HZ * 0.2, rel=0.10), values
    assert channel.state() == tango.DevState.ON


def test_controller_of_an_unreachable_device_reports_fault_quickly(system):
    from tango_tpx.device.database import free_port

    pool = tango.DeviceProxy(system.url(system.names.pool))
    pool.set_timeout_millis(30000)
    lost = f"tango://127.0.0.1:{free_port()}/tpx3/detector/9"
    pool.CreateController(["CTExpChannel", "Timepix3CounterTimerCtrl.py", "Timepix3CounterTimerCtrl",
                           "tpx3_lostctrl", "Device", lost, "Timeout", "1"])
    pool.CreateElement(["CTExpChannel", "tpx3_lostctrl", "2", "tpx3_lost_hits"])
    t0 = time.monotonic()
    channel = wait_until(lambda: _proxy_or_none(system.url("tpx3_lost_hits")), 30, "new channel")
    wait_until(lambda: channel.state() == tango.DevState.FAULT, 30, "channel FAULT")
    assert "tpx3/detector/9" in channel.status(), channel.status()
    assert time.monotonic() - t0 < 30


def _proxy_or_none(url: str):
    try:
        p = tango.DeviceProxy(url)
        p.state()
        return p
    except tango.DevFailed:
        return None


def test_sardana_setup_again_changes_nothing(system):
    env = {"TANGO_HOST": system.tango_host}
    cmd = [sys.executable, "-m", "tango_tpx", "sardana-setup", "--scan-dir", str(system.scan_dir),
           "--env-db", str(system.workdir / "sardana-env" / "macroserver.properties")]
    res = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "everything already in place" in res.stdout, res.stdout
