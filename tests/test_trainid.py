"""Train-ID receiver: parser, transports, readers, simulator, outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tango_tpx.io.trainid import TRAINID_DATASETS, append_to_hdf5, read_hdf5
from tango_tpx.trainid import (TRAINID_DTYPE, FrameParser, SimFaults, SimulatedReceiver, TrainFrame,
                               TrainIdLog, TrainIdReader, TransportError, USBTrainID, crc,
                               decode_zmq_message, encode_frame, read_side_file, side_file_path,
                               write_side_file)
from tango_tpx.trainid.serial import SerialTransport
from tango_tpx.trainid.usb import (UsbTransport, ftdi_baud_divisor, parse_usb_source,
                                   strip_ftdi_status)

from .conftest import wait_for
from .test_pipeline_helpers import pid_alive

# Hand-computed: bytes 00 00 00 00 12 34 56 78 | 00 00 AB CD;
# 12^34 = 26, 26^56 = 70, 70^78 = 08, 08^AB = A3, A3^CD = 6E.
FRAME_A = b"\x02" + b"0000000012345678" + b"0000ABCD" + b"6E" + b"\x03"


def frame(train_id: int, beam_mode: int = 0x1F) -> bytes:
    return encode_frame(train_id, beam_mode)


def ids(frames) -> list[int]:
    return [f.train_id for f in frames]


# ------------------------------------------------------------------ protocol / parser

def test_encode_and_crc_hand_computed():
    assert crc(bytes.fromhex("000000001234567800" "00ABCD")) == 0x6E
    assert encode_frame(0x12345678, 0xABCD) == FRAME_A
    assert len(FRAME_A) == 28
    with pytest.raises(ValueError):
        encode_frame(-1)
    with pytest.raises(ValueError):
        encode_frame(1, 1 << 32)


def test_parse_one_frame_values_and_time():
    p = FrameParser()
    out = p.feed(FRAME_A, host_time_ns=123)
    assert out == [TrainFrame(123, 0x12345678, 0xABCD)]
    # lower-case hex is accepted
    assert p.feed(FRAME_A.replace(b"ABCD6E", b"abcd6e").replace(b"12345678", b"12345679")
                  .replace(b"6e", b"6f"), host_time_ns=5) == [TrainFrame(5, 0x12345679, 0xABCD)]
    assert p.stats["frames"] == 2 and p.stats["bytes"] == 56
    assert sum(v for k, v in p.stats.items() if k not in ("frames", "bytes")) == 0


def test_split_frames_at_every_point_and_byte_by_byte():
    data = frame(1000)
    for cut in range(1, len(data)):
        p = FrameParser()
        assert p.feed(data[:cut], host_time_ns=1) == []
        assert p.feed(data[cut:], host_time_ns=2) == [TrainFrame(2, 1000, 0x1F)]
    p = FrameParser()
    got = []
    stream = frame(7) + frame(8)
    for i in range(len(stream)):
        got += p.feed(stream[i:i + 1], host_time_ns=i)
    assert got == [TrainFrame(27, 7, 0x1F), TrainFrame(55, 8, 0x1F)]


def test_several_frames_in_one_read_and_garbage_between():
    p = FrameParser()
    stream = b"\xffjunk" + frame(1) + frame(2) + b"\x03\x00ab" + frame(3) + b"tail"
    out = p.feed(stream, host_time_ns=9)
    assert ids(out) == [1, 2, 3]
    assert all(f.host_time_ns == 9 and f.beam_mode == 0x1F for f in out)
    assert p.stats["garbage_bytes"] == 5 + 4 + 4
    assert p.stats["frames"] == 3


def test_corrupted_crc_counted_and_skipped():
    p = FrameParser()
    good = frame(41)
    bad = good[:25] + (b"00" if good[25:27] != b"00" else b"01") + good[27:]
    out = p.feed(frame(40) + bad + frame(42))
    assert ids(out) == [40, 42]
    assert p.stats["crc_errors"] == 1
    assert p.stats["missed_trains"] == 1       # 41 never arrived intact


def test_bad_hex_counted():
    p = FrameParser()
    good = frame(5)
    out = p.feed(good[:3] + b"G" + good[4:] + good[:10] + b" " + good[11:] + frame(6))
    assert ids(out) == [6]
    assert p.stats["bad_hex"] == 2 and p.stats["crc_errors"] == 0


def test_missing_etx_stx_inside_and_overlong():
    p = FrameParser()
    # frame 1 loses its ETX: the STX of frame 2 cuts it
    out = p.feed(frame(1)[:-1] + frame(2))
    assert ids(out) == [2] and p.stats["missing_etx"] == 1
    # over-long: byte 28 is 'X' instead of ETX, then a good frame
    out = p.feed(frame(3)[:-1] + b"X" + frame(4))
    assert ids(out) == [4] and p.stats["missing_etx"] == 2
    assert p.stats["garbage_bytes"] == 0
    # short frame: ETX after 4 chars
    out = p.feed(b"\x020123\x03" + frame(5))
    assert ids(out) == [5] and p.stats["short_frames"] == 1
    # a partial frame dropped on reconnect
    p.feed(frame(6)[:12])
    p.reset_partial()
    assert ids(p.feed(frame(6)[12:] + frame(7))) == [7]
    assert p.stats["truncated"] == 1
    assert p.stats["garbage_bytes"] == 16      # the tail of the dropped frame 6


def test_repeated_and_out_of_order_ids():
    stream = b"".join(frame(i) for i in (10, 11, 11, 9, 10, 13))
    p = FrameParser()
    assert ids(p.feed(stream)) == [10, 11, 9, 10, 13]
    assert (p.stats["repeated"], p.stats["out_of_order"], p.stats["missed_trains"]) == (1, 1, 2)
    p = FrameParser(drop_out_of_order=True)
    assert ids(p.feed(stream)) == [10, 11, 13]
    assert (p.stats["repeated"], p.stats["out_of_order"], p.stats["missed_trains"]) == (1, 2, 1)
    p = FrameParser(drop_repeated=False)
    assert ids(p.feed(frame(1) + frame(1))) == [1, 1]
    assert p.stats["repeated"] == 1


def test_random_chunking_matches_one_shot():
    rng = np.random.default_rng(3)
    parts = []
    for i in range(200):
        parts.append(frame(5000 + i, i))
        if i % 17 == 0:
            parts.append(bytes(rng.integers(4, 256, 7, dtype=np.uint8)))  # no STX/ETX
    stream = b"".join(parts)
    cuts = np.sort(rng.choice(np.arange(1, len(stream)), 150, replace=False))
    p = FrameParser()
    got = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(stream)]):
        got += p.feed(stream[a:b], host_time_ns=0)
    assert ids(got) == list(range(5000, 5200))
    assert [f.beam_mode for f in got] == list(range(200))
    assert p.stats["garbage_bytes"] == 7 * 12


# ------------------------------------------------------------------ outputs

def test_trainid_log_side_file_roundtrip(tmp_path: Path):
    log = TrainIdLog()
    log.append([TrainFrame(1_700_000_000_000_000_000, 2_000_000_000, 0xFFFFFFFF)])
    log([TrainFrame(1_700_000_000_100_000_000, 2_000_000_001, 0)])
    assert len(log) == 2
    assert log.train_id.tolist() == [2_000_000_000, 2_000_000_001]
    raw = tmp_path / "run_0001.raw"
    path = write_side_file(raw, log)
    assert path == tmp_path / "run_0001.raw.trainid.csv" == side_file_path(raw)
    assert path.read_text().splitlines() == [
        "timestamp_ns,train_id,beam_mode",
        "1700000000000000000,2000000000,4294967295",
        "1700000000100000000,2000000001,0"]
    back = read_side_file(raw)
    assert back.dtype == TRAINID_DTYPE
    np.testing.assert_array_equal(back, log.to_array())
    with pytest.raises(FileExistsError):
        write_side_file(raw, log)
    (tmp_path / "bad.raw.trainid.csv").write_text("nope\n")
    with pytest.raises(ValueError):
        read_side_file(tmp_path / "bad.raw")


def test_append_to_hdf5_resizable_with_units(tmp_path: Path):
    h5py = pytest.importorskip("h5py")
    f1 = [TrainFrame(10**18 + i, 1_500_000_000 + i, i) for i in range(3)]
    f2 = [TrainFrame(2 * 10**18, 1_600_000_000, 0xDEADBEEF)]
    path = tmp_path / "out.h5"
    with h5py.File(path, "w") as h5:
        assert append_to_hdf5(h5, f1) == 3
        assert append_to_hdf5(h5, []) == 0
        assert append_to_hdf5(h5, np.array([tuple(f2[0])], TRAINID_DTYPE)) == 1
    with h5py.File(path, "r") as h5:
        assert set(h5["timing/trainID"].keys()) == {"timestamp", "train id", "beam mode"}
        ts, tid, bm = (h5[TRAINID_DATASETS[k]] for k in ("timestamp", "train_id", "beam_mode"))
        assert ts.dtype == np.uint64 and tid.dtype == np.uint64 and bm.dtype == np.uint32
        assert ts.maxshape == (None,) and ts.shape == (4,)
        assert (ts.attrs["unit"], tid.attrs["unit"], bm.attrs["unit"]) == ("ns", "", "")
        assert tid[()].tolist() == [1_500_000_000, 1_500_000_001, 1_500_000_002, 1_600_000_000]
        assert ts[()].tolist() == [10**18, 10**18 + 1, 10**18 + 2, 2 * 10**18]
        assert bm[()].tolist() == [0, 1, 2, 0xDEADBEEF]
        np.testing.assert_array_equal(read_hdf5(h5)["train_id"], tid[()])


# ------------------------------------------------------------------ USB transport (stand-in device)

def test_usb_helpers():
    assert ftdi_baud_divisor(115200) == (26, 0)         # 3 MHz / 115200 = 26.04
    assert ftdi_baud_divisor(9600) == (0x4138, 0)       # 312.5 -> 312 + 1/2 (code 1 << 14)
    data = bytes([0x31, 0x60]) + bytes(range(62)) + bytes([0x31, 0x60]) + b"xyz"
    assert strip_ftdi_status(data, 64) == bytes(range(62)) + b"xyz"
    assert strip_ftdi_status(b"\x31\x60", 64) == b""
    assert parse_usb_source("usb") == {}
    assert parse_usb_source("usb:0403:6015:1") == {"ids": ((0x0403, 0x6015),), "interface": 1}
    with pytest.raises(ValueError):
        parse_usb_source("usb:zz:1")


class _FakeCtx:
    def __init__(self, log):
        self.log = log

    def managed_claim_interface(self, dev, intf):
        self.log.append(("claim", intf))

    def managed_release_interface(self, dev, intf):
        self.log.append(("release", intf))

    def dispose(self, dev):
        self.log.append(("dispose",))


class _Ep:
    def __init__(self, address, attrs, size=64):
        self.bEndpointAddress, self.bmAttributes, self.wMaxPacketSize = address, attrs, size


class _FakeFtdi:
    """Enough of a pyusb Device for UsbTransport: an FT232R with scripted reads."""

    idVendor, idProduct = 0x0403, 0x6001

    def __init__(self, reads):
        self.log: list = []
        self._ctx = _FakeCtx(self.log)
        self._reads = list(reads)

    def is_kernel_driver_active(self, intf):
        return True

    def detach_kernel_driver(self, intf):
        self.log.append(("detach", intf))

    def attach_kernel_driver(self, intf):
        self.log.append(("attach", intf))

    def get_active_configuration(self):
        return {(0, 0): [_Ep(0x02, 0x02), _Ep(0x81, 0x02)]}   # bulk OUT, bulk IN

    def set_configuration(self):
        pass

    def ctrl_transfer(self, rtype, req, value, index, data):
        self.log.append(("ctrl", rtype, req, value, index))

    def read(self, ep, size, timeout):
        assert ep == 0x81 and size % 64 == 0
        item = self._reads.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_usb_transport_with_standin_device():
    import usb.core
    stream = frame(77) + frame(78)
    # the device delivers 64-byte packets, each with 2 status bytes in front
    payload = stream[:62]
    pkt1 = b"\x01\x60" + payload
    pkt2 = b"\x01\x60" + stream[62:]
    reads = [pkt1 + pkt2, usb.core.USBTimeoutError("Operation timed out", errno=110),
             usb.core.USBError("No such device (it may have been disconnected)", errno=19)]
    dev = _FakeFtdi(reads)
    t = UsbTransport(device=dev)
    t.open()
    assert ("detach", 0) in dev.log and ("claim", 0) in dev.log
    assert ("ctrl", 0x40, 0x03, 26, 0) in dev.log          # 115200 baud
    assert ("ctrl", 0x40, 0x04, 0x0008, 0) in dev.log      # 8N1
    p = FrameParser()
    assert ids(p.feed(t.read(0.1))) == [77, 78]
    assert t.read(0.1) == b""                               # timeout
    with pytest.raises(TransportError):
        t.read(0.1)                                         # unplugged
    t.close()
    assert ("release", 0) in dev.log and ("attach", 0) in dev.log


# ------------------------------------------------------------------ pty, readers, simulator

@pytest.mark.timeout(10)
def test_serial_transport_on_simulated_pty():
    sim = SimulatedReceiver(rate_hz=1000, start_train_id=100, max_frames=5)
    try:
        t = SerialTransport(sim.path)
        t.open()
        assert t.read(0.01) == b""
        sim.start()
        assert sim.done.wait(3)
        data = b""
        deadline = time.monotonic() + 3
        while len(data) < 5 * 28 and time.monotonic() < deadline:
            data += t.read(0.05)
        assert data == b"".join(encode_frame(100 + i, 1) for i in range(5))
        sim.unplug()
        with pytest.raises(TransportError):
            for _ in range(20):
                t.read(0.05)
        t.close()
        assert not os.path.lexists(sim.path)
        with pytest.raises(FileNotFoundError):
            SerialTransport(sim.path).open()
    finally:
        sim.stop()


@pytest.mark.timeout(20)
def test_thread_reader_faults_and_zmq(tmp_path: Path):
    zmq = pytest.importorskip("zmq")
    n = 60
    faults = SimFaults(bad_crc_every=7, garbage_every=5, repeat_every=11, split_writes=True,
                       split_delay_s=0.001)
    sim = SimulatedReceiver(rate_hz=200, start_train_id=2_000_000, beam_mode=0x42,
                            faults=faults, max_frames=n)
    address = f"ipc://{tmp_path}/trainid.ipc"
    reader = TrainIdReader(sim.path, zmq_address=address, zmq_format="numpy",
                           reconnect_min_s=0.02)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"trainid")
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(address)
        reader.start()
        assert reader.wait_connected(3), reader.status
        assert reader.status == f"connected: serial {sim.path}"
        time.sleep(0.2)                         # let the SUB subscription reach the PUB
        sim.start()
        assert sim.done.wait(5)
        sent = sim.counts.sent_ids
        assert wait_for(lambda: reader.counters()["frames"] == len(sent), 3), reader.counters()
        got = reader.get()
        assert ids(got) == sent
        assert all(f.beam_mode == 0x42 for f in got)
        assert np.all(np.diff([f.host_time_ns for f in got]) >= 0)
        c = reader.counters()
        assert len(sent) == n - n // 7
        assert c["crc_errors"] == n // 7 == sim.counts.bad_crc
        assert c["garbage_bytes"] == (n // 5) * len(faults.garbage) == sim.counts.garbage_bytes
        assert c["repeated"] == n // 11 - 0      # 11, 22, 33, 44, 55 (none hit a bad CRC)
        assert c["missed_trains"] == n // 7
        assert c["missing_etx"] == c["bad_hex"] == c["out_of_order"] == 0
        assert reader.latest().train_id == sent[-1]
        # the same frames over ZMQ
        zgot = []
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while len(zgot) < len(sent) and poller.poll(1000):
            zgot += decode_zmq_message(sub.recv_multipart())
        assert zgot == got
    finally:
        reader.stop()
        sim.stop()
        sub.close(0)
        ctx.term()
    assert not reader.is_alive()
    assert reader.status == "stopped"


@pytest.mark.timeout(30)
def test_usbtrainid_process_unplug_replug_and_stop():
    log = TrainIdLog()
    sim = SimulatedReceiver(rate_hz=50, start_train_id=3_000_000, beam_mode=7,
                            faults={"bad_crc_every": 9})
    reader = USBTrainID(source=sim.path, callback=log.append, reconnect_min_s=0.02,
                        reconnect_max_s=0.1)
    try:
        reader.start()
        assert reader.wait_connected(10), reader.status
        assert reader.status.startswith("connected: ")
        sim.start()
        assert wait_for(lambda: len(log) >= 10, 5), reader.counters()
        sim.unplug()
        assert wait_for(lambda: reader.status.startswith("disconnected: "), 3), reader.status
        n_before = len(log)
        time.sleep(0.3)
        assert reader.counters()["open_failures"] >= 1          # still trying, still alive
        assert reader.is_alive()
        sim.replug()
        assert wait_for(lambda: reader.counters()["reconnects"] == 1, 3), reader.status
        assert wait_for(lambda: len(log) >= n_before + 10, 5), reader.counters()
        sim.unplug()                 # freeze the stream so that log and counters agree
        assert wait_for(lambda: reader.counters()["disconnects"] == 2, 3), reader.status
        assert wait_for(lambda: len(log) == reader.counters()["frames"], 3)
        arr = log.to_array()
        t_ids = arr["train_id"].astype(np.int64)
        assert np.all(np.diff(t_ids) > 0)                     # in order, no repeats
        assert np.all(arr["beam_mode"] == 7)
        assert set(t_ids.tolist()) <= set(sim.counts.sent_ids)
        c = reader.counters()
        assert c["disconnects"] == 2 and c["connects"] == 2
        assert c["frames"] == len(log)
        assert c["crc_errors"] >= 1
        # every train between the first and the last delivered one is accounted for
        assert t_ids[-1] - t_ids[0] + 1 - len(t_ids) == c["missed_trains"]
        assert c["missed_trains"] >= sim.counts.unplugged_ticks > 0
        assert reader.latest() == tuple(int(v) for v in arr[-1])
    finally:
        t0 = time.monotonic()
        reader.stop()
        elapsed = time.monotonic() - t0
        sim.stop()
    assert elapsed < 2.0
    assert not reader.is_alive()
    assert reader._proc.exitcode == 0                          # ended by itself, not killed
    assert reader.status == "stopped"
    reader.close()


ORPHAN_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from tango_tpx.trainid import USBTrainID
    r = USBTrainID(source=sys.argv[1], reconnect_min_s=0.02, reconnect_max_s=0.05)
    r.start()
    t0 = time.monotonic()
    while not r.status.startswith("disconnected") and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    print(r.pid, r.status, flush=True)
    os._exit(0)          # die without stopping the child
""")


@pytest.mark.timeout(20)
def test_usbtrainid_child_exits_when_parent_dies(tmp_path: Path):
    missing = tmp_path / "no-such-tty"
    out = subprocess.run([sys.executable, "-c", ORPHAN_SCRIPT, str(missing)], capture_output=True,
                         text=True, timeout=15)
    assert out.returncode == 0, out.stderr
    pid_s, status = out.stdout.strip().split(" ", 1)
    assert status.startswith("disconnected: ") and "no-such-tty" in status
    pid = int(pid_s)
    assert wait_for(lambda: not pid_alive(pid), 3), f"orphan train-ID process {pid} still running"


def test_bad_sources_rejected():
    with pytest.raises(TypeError):
        TrainIdReader(source=12345)
    with pytest.raises(ValueError):
        USBTrainID(source="usb:xyz")


@pytest.mark.timeout(10)
def test_zmq_json_publisher_roundtrip(tmp_path: Path):
    zmq = pytest.importorskip("zmq")
    from tango_tpx.trainid.receiver import _ZmqPublisher
    address = f"ipc://{tmp_path}/pub.ipc"
    pub = _ZmqPublisher(address, "json")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"trainid")
    sub.setsockopt(zmq.LINGER, 0)
    frames = [TrainFrame(1_800_000_000_000_000_000, 2**40 + 3, 0xFFFFFFFF)]
    try:
        sub.connect(address)
        got = None
        for _ in range(100):                     # PUB drops until the subscription arrives
            pub.send(frames)
            if sub.poll(20):
                got = sub.recv_multipart()
                break
        assert got is not None and got[1] == b"json"
        assert decode_zmq_message(got) == frames
        with pytest.raises(ValueError):
            decode_zmq_message([b"trainid", b"xml", b"<a/>"])
    finally:
        pub.close()
        sub.close(0)
        ctx.term()


@pytest.mark.timeout(20)
def test_usbtrainid_reports_dead_child():
    reader = USBTrainID(source="/nonexistent/tty", reconnect_min_s=0.02, reconnect_max_s=0.05)
    reader.start()
    try:
        assert wait_for(lambda: reader.status.startswith("disconnected: "), 10), reader.status
        reader._proc.kill()
        reader.join(2)
        assert reader.status.startswith("fault: process exited with code -9"), reader.status
    finally:
        reader.stop()


@pytest.mark.timeout(20)
def test_cli_subcommands(capsys):
    import argparse
    from tango_tpx.trainid import cli
    parser = argparse.ArgumentParser(prog="tango-tpx")
    cli.add_parser(parser.add_subparsers(dest="cmd"))
    sim = SimulatedReceiver(rate_hz=100, start_train_id=500, beam_mode=0xAB, max_frames=5)
    try:
        args = parser.parse_args(["trainid-read", sim.path, "--duration", "0.8"])
        timer = threading.Timer(0.3, sim.start)      # after the reader has opened the port
        timer.start()
        assert args.func(args) == 0
    finally:
        timer.join()
        sim.stop()
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [ln.split()[1:] for ln in lines] == [[str(500 + i), "0x000000AB"] for i in range(5)]
    assert "5 frames" in out.err
    args = parser.parse_args(["trainid-sim", "--rate", "50", "--duration", "0.2", "--bad-crc-every", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr()
    assert "ttyTRAINID" in out.out and "bad CRC" in out.err
