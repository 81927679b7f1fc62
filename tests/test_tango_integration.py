"""Integration of the real parts: embedded Tango DB process + ``TangoTpx`` server process +
simulated SPIDR data over UDP on loopback + clients (DeviceProxy through the database, Taurus).

One database and one server are shared by the module (start-up costs a few seconds on two
cores); every test leaves the device ON. Fixtures stop whole process groups.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

tango = pytest.importorskip("tango")
from tango import DevFailed, DevState  # noqa: E402

from tango_tpx.device.database import free_port  # noqa: E402

from .conftest import wait_until  # noqa: E402
from .tangosystem import DEVICE, DeviceSystem  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _udp_port() -> int:
    return free_port(kind=socket.SOCK_DGRAM)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = DeviceSystem(tmp_path_factory.mktemp("tango-int"), timeout_ms=15000)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def dev(system):
    d = system.proxy
    wait_until(lambda: d.state() != DevState.MOVING, 60, "the armed pipeline")
    if d.state() != DevState.ON:
        d.Init()
    wait_until(lambda: d.state() == DevState.ON, 60, f"ON ({d.status()})")
    yield d
    try:
        if d.state() == DevState.RUNNING:
            d.Stop()
        wait_until(lambda: d.state() != DevState.MOVING, 30, "the end of the acquisition")
        if d.RecordingFile:
            d.CloseFile()
    except DevFailed:
        pass


def _simulate(duration_s: float, rate_mhits: float, seed: int):
    from tango_tpx.simulator import SimConfig, simulate

    return simulate(SimConfig(rate_mhits=rate_mhits, duration_s=duration_s, seed=seed, trigger_hz=1000.0))


def _send(words: np.ndarray, port: int, seconds: float, payload_bytes: int = 8192) -> None:
    """Send ``words`` to 127.0.0.1:port in datagrams, spread over ``seconds``."""
    data = words.astype("<u8").tobytes()
    chunks = [data[i:i + payload_bytes] for i in range(0, len(data), payload_bytes)]
    pause = seconds / max(1, len(chunks))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.monotonic()
        for i, c in enumerate(chunks):
            s.sendto(c, ("127.0.0.1", port))
            delay = t0 + (i + 1) * pause - time.monotonic()
            if delay > 0:
                time.sleep(delay)


@pytest.mark.timeout(120)
def test_record_stream_through_database_with_change_events(system, dev, tmp_path):
    from tango_tpx.tpx3.codec import Decoder
    from tango_tpx.tpx3.files import inspect_file, iter_words

    words, truth = _simulate(duration_s=1.5, rate_mhits=0.1, seed=3)
    n_hits = len(truth.hits)
    assert n_hits > 10_000

    totals: list[int] = []
    lock = threading.Lock()

    def on_total(ev):
        if not ev.err:
            with lock:
                totals.append(int(ev.attr_value.value))

    # a second proxy, resolved by name through the database
    client = tango.DeviceProxy(system.url)
    client.set_timeout_millis(15000)
    sid = client.subscribe_event("TotalHits", tango.EventType.CHANGE_EVENT, on_total)
    try:
        client.RecordingPath = str(tmp_path)
        client.ResetCounters()
        client.Start()
        assert client.state() == DevState.RUNNING
        raw_path = client.OpenFile("run.raw")
        assert Path(raw_path).parent == tmp_path.resolve()
        _send(words, system.udp_port, seconds=1.5)
        wait_until(lambda: client.TotalHits >= n_hits, 20, f"{n_hits} hits")
        time.sleep(0.6)  # two more summary periods
        client.CloseFile()
        assert client.RecordingFile == ""
        client.Stop()
        assert client.state() in (DevState.MOVING, DevState.ON)
        wait_until(lambda: client.state() == DevState.ON, 20, "ON after Stop")
        assert client.TotalHits == n_hits
        assert client.BytesReceived == words.size * 8
        reference = Decoder().decode(words)  # decoded here, independently of the pipeline
        assert client.KernelDrops == 0
        assert client.MalformedWords == reference.counts.malformed  # the simulator's control words
        n_trig = int(np.count_nonzero((truth.triggers.channel == 1) & truth.triggers.rising))
        assert n_trig > 1000
        assert client.TotalTriggers == n_trig  # triggers = TDC1 rising edges
    finally:
        client.unsubscribe_event(sid)

    with lock:
        seen = list(totals)
    growing = [v for v in seen if 0 < v]
    assert len(growing) >= 3, seen
    assert growing == sorted(growing) and growing[-1] == n_hits

    # the recording holds exactly the bytes sent while it was open
    info = inspect_file(raw_path)
    assert info.kind == "raw" and info.trailing_bytes == 0
    assert info.n_words == words.size
    recorded = np.concatenate(list(iter_words(raw_path)))
    np.testing.assert_array_equal(recorded, words)
    dec = Decoder().decode(recorded)
    assert len(dec.pixels) == n_hits
    np.testing.assert_array_equal(np.sort(dec.pixels.toa), np.sort(truth.hits.toa))


@pytest.mark.timeout(120)
def test_changed_udp_port_rearms_at_init_and_a_busy_one_is_a_fault_naming_it(system, dev):
    busy_port = _udp_port()
    holder = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(socket.AF_INET, "
                               f"socket.SOCK_DGRAM); s.bind(('127.0.0.1', {busy_port})); print('bound', flush=True); "
                               "time.sleep(90)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        system.database.put_device_property(DEVICE, {"UdpPort": [str(busy_port)]})
        dev.Init()
        wait_until(lambda: dev.state() == DevState.FAULT, 60, "FAULT on the busy port")
        assert f"127.0.0.1:{busy_port}" in dev.status()
        with pytest.raises(DevFailed) as err:
            dev.Start()
        assert "state FAULT" in err.value.args[0].desc
    finally:
        holder.kill()
        holder.wait(10)
        system.database.put_device_property(DEVICE, {"UdpPort": [str(system.udp_port)]})
    dev.Init()
    wait_until(lambda: dev.state() == DevState.ON, 60, "ON after Init")
    assert f"127.0.0.1:{system.udp_port}" in dev.status()
    dev.Start()
    assert dev.state() == DevState.RUNNING
    dev.Stop()
    wait_until(lambda: dev.state() == DevState.ON, 20, "ON after Stop")


#: A Taurus client in its own interpreter, as a remote script or GUI would be: it reads every
#: attribute by URI, prints one JSON line with what it read, then listens to TotalHits change
#: events until it has two (or 15 s pass) and prints them as a second JSON line.
_TAURUS_CLIENT = r"""
import json, sys, time
import taurus
from taurus.core import TaurusEventType

base, names = sys.argv[1], sys.argv[2].split(",")
out = {}
for name in names:
    r = taurus.Attribute(base + "/" + name).read()
    v = None if r is None else getattr(r.rvalue, "magnitude", r.rvalue)
    out[name] = v if isinstance(v, (int, float, str, bool)) or v is None else "array"
end = taurus.Attribute(base + "/EventWindowEnd").read().rvalue
out["EventWindowEnd_ns"] = float(end.to("ns").magnitude)
out["HitRate_Hz"] = float(taurus.Attribute(base + "/HitRate").read().rvalue.to("Hz").magnitude)
print(json.dumps(out), flush=True)
got = []
def listener(src, evt_type, evt_value):
    if evt_type == TaurusEventType.Change and evt_value is not None:
        got.append(getattr(evt_value.rvalue, "magnitude", evt_value.rvalue))
attr = taurus.Attribute(base + "/TotalHits")
attr.addListener(listener)
deadline = time.monotonic() + 15
while len(got) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
attr.removeListener(listener)
print(json.dumps([int(v) for v in got]), flush=True)
"""


@pytest.mark.timeout(90)
def test_taurus_reads_every_attribute_and_gets_events(system, dev):
    pytest.importorskip("taurus")
    base = f"tango://{system.db.tango_host}/{DEVICE}"
    expected = {"TotThreshold": dev.TotThreshold, "EventWindowEnd": dev.EventWindowEnd,
                "TotalHits": dev.TotalHits, "RecordingFile": dev.RecordingFile, "TrainId": -1}
    names = [a.name for a in dev.attribute_list_query()]
    assert {"HitRate", "Preview", "TofHistogram", "TofAxis", "ClusteringAlgorithm"} <= set(names)
    client = subprocess.Popen([sys.executable, "-c", _TAURUS_CLIENT, base, ",".join(names)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read = json.loads(client.stdout.readline() or "{}")
        missing = [n for n in names if read.get(n) is None]
        assert not missing, f"Taurus could not read {missing}: {client.stderr.read() if client.poll() is not None else ''}"
        for name, value in expected.items():
            assert read[name] == value, name
        # units reach Taurus as real units (pint quantities)
        assert read["EventWindowEnd_ns"] == pytest.approx(expected["EventWindowEnd"] * 1000.0)
        assert read["HitRate_Hz"] >= 0
        dev.Start()
        events = json.loads(client.stdout.readline() or "[]")
        assert len(events) >= 2, "two Taurus change events of TotalHits"
        dev.Stop()
        wait_until(lambda: dev.state() == DevState.ON, 20, "ON after Stop")
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(10)


@pytest.mark.timeout(90)
def test_memorized_settings_survive_server_restart(system, dev):
    dev.EventWindowEnd = 650.0
    dev.EventWindowStart = 25.0
    dev.TotThreshold = 9
    dev.Centroiding = False
    system.stop_server()
    system.start_server()
    d = system.proxy
    wait_until(lambda: d.state() == DevState.ON, 60, "the armed pipeline")
    assert (d.EventWindowStart, d.EventWindowEnd, d.TotThreshold, d.Centroiding) == (25.0, 650.0, 9, False)
    d.Centroiding = True
    d.EventWindowStart = 0.0
    d.EventWindowEnd = 1000.0
    d.TotThreshold = 0
    wait_until(lambda: d.state() == DevState.ON, 60, "re-armed with centroiding")


@pytest.mark.timeout(60)
def test_register_command_writes_dsconfig_into_database(system, tmp_path):
    cfg = {"servers": {"TangoTpx": {"regtest": {"Timepix3": {"tpx3/test/2": {"properties": {
        "UdpPort": ["12345"], "ChipLayout": ["quad"]}}}}}}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, TANGO_HOST=system.db.tango_host)
    r = subprocess.run([sys.executable, "-m", "tango_tpx.cli", "register", str(path)], env=env,
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr
    assert "registered tpx3/test/2" in r.stdout
    props = system.database.get_device_property("tpx3/test/2", ["UdpPort", "ChipLayout"])
    assert list(props["UdpPort"]) == ["12345"] and list(props["ChipLayout"]) == ["quad"]
    info = system.database.get_device_info("tpx3/test/2")
    assert info.class_name == "Timepix3" and info.ds_full_name == "TangoTpx/regtest"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"servers": {"TangoTpx": {"x": {"Timepix3": {"a/b/c": {"properties": {
        "UdpPort": 5}}}}}}}))
    r = subprocess.run([sys.executable, "-m", "tango_tpx.cli", "register", str(bad)], env=env,
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 2 and "must be a list of strings" in r.stderr


def test_shipped_dsconfig_matches_builtin_default_and_shape_errors(tmp_path):
    from tango_tpx.device.database import BUILTIN_CONFIG, DEFAULT_CONFIG, iter_devices, load_config

    shipped = json.loads(DEFAULT_CONFIG.read_text())
    assert shipped == BUILTIN_CONFIG == load_config(None)
    [(server, klass, device, props)] = list(iter_devices(shipped))
    assert (server, klass, device) == ("TangoTpx/demo", "Timepix3", "tpx3/detector/1")
    assert props["UdpPort"] == ["8192"] and props["ChipLayout"] == ["single"]
    with pytest.raises(ValueError, match="expected a top-level 'servers' object"):
        load_config({"devices": {}})
    with pytest.raises(ValueError, match="is not domain/family/member"):
        load_config({"servers": {"S": {"i": {"C": {"a/b": {}}}}}})
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path / "broken.json")
