"""pymepix face, pipeline behaviour with real processes and a real loopback socket: a
custom BasePipelineObject stage added with addStage, live longtime and event-window
changes, and starts that fail (nothing left behind, the first error reported)."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import time

import numpy as np
import pytest

from tango_tpx.device.database import free_port
from tango_tpx.processing.acquisition import PixelPipeline
from tango_tpx.processing.baseacquisition import AcquisitionPipeline
from tango_tpx.processing.basepipeline import BasePipelineObject
from tango_tpx.processing.datatypes import MessageType
from tango_tpx.processing.udpsampler import UdpSampler

from .conftest import CAPTURES, wait_until

CAPTURE = CAPTURES / "centroid_pipeline_test.raw"
needs_capture = pytest.mark.skipif(not CAPTURE.exists(), reason=f"real SPIDR capture not found: {CAPTURE}")
LONGTIME = 2233861246990
EPOCH = 1 << 30                      # 25 ns ticks per 30-bit epoch (26.84 s)


class HitCounter(BasePipelineObject):
    """A pymepix-style user stage: counts the hits of every PixelData it receives and
    pushes ('hits', running total) on; at the end ('total', n)."""

    def __init__(self, label, input_queue=None, create_output=True, num_outputs=1, shared_output=None):
        super().__init__("HitCounter", input_queue=input_queue, create_output=create_output,
                         num_outputs=num_outputs, shared_output=shared_output, propogate_input=False)
        self.label = label
        self.hits = 0

    def process(self, data_type=None, data=None):
        if data_type == MessageType.PixelData:
            x, y, toa, tot = data                       # pymepix shapes reach user stages
            self.hits += len(x)
            return MessageType.OpenFileCommand, (self.label, self.hits)
        return None, None

    def post_run(self):
        return MessageType.CloseFileCommand, ("total", self.hits)


class Doubler(BasePipelineObject):
    """A second user stage (propogate_input=True, the default): passes every message on and
    adds one of its own."""

    def __init__(self, input_queue=None, create_output=True, num_outputs=1, shared_output=None):
        super().__init__("Doubler", input_queue=input_queue, create_output=create_output,
                         num_outputs=num_outputs, shared_output=shared_output)

    def process(self, data_type=None, data=None):
        if data_type == MessageType.OpenFileCommand:
            return MessageType.CloseFileCommand, ("doubled", 2 * data[1])
        return None, None


def send_capture(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(CAPTURE.read_bytes()[8:], ("127.0.0.1", port))


def collect(q, n: int, timeout: float) -> list:
    out, end = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        try:
            out.append(q.get(timeout=0.1))
        except queue.Empty:
            pass
    return out


def pipe_endpoints() -> set:
    """ipc endpoints of pipelines started by this process still bound (abstract socket names
    ``@tpx-pipe-<pid>-...``, listed in /proc/net/unix)."""
    prefix = f"@tpx-pipe-{os.getpid()}-"
    with open("/proc/net/unix") as f:
        return {line.split()[-1] for line in f if line.split()[-1].startswith(prefix)}


@needs_capture
@pytest.mark.timeout(180)
def test_user_stages_receive_pymepix_messages_and_reach_data_queue():
    q = mp.Queue()
    port = free_port(kind=socket.SOCK_DGRAM)
    pipe = PixelPipeline(q, ("127.0.0.1", port), mp.Value("L", LONGTIME))
    pipe.addStage(3, HitCounter, "hits")
    pipe.addStage(5, Doubler)
    pipe.start()
    try:
        assert pipe_endpoints()                        # the decoder's input and the collector
        send_capture(port)
        wait_until(lambda: pipe.counters.get("hits") == 1858, 120, "the capture to be decoded")
        got = collect(q, 2, 60)
        assert got == [(MessageType.OpenFileCommand, ("hits", 1858)),
                       (MessageType.CloseFileCommand, ("doubled", 3716))]
    finally:
        t0 = time.monotonic()
        pipe.stop()
        assert time.monotonic() - t0 < 5.0
    assert pipe.fault() is None
    # at the end: the counter's total, passed on by the second stage
    assert collect(q, 1, 10) == [(MessageType.CloseFileCommand, ("total", 1858))]
    assert not mp.active_children() and pipe_endpoints() == set()


@needs_capture
@pytest.mark.timeout(180)
def test_longtime_value_and_event_window_changes_apply_while_running():
    q = mp.Queue()
    port = free_port(kind=socket.SOCK_DGRAM)
    longtime = mp.Value("L", LONGTIME)
    pipe = PixelPipeline(q, ("127.0.0.1", port), longtime, use_event=True)
    pipe.start()
    try:
        send_capture(port)
        wait_until(lambda: pipe.counters.get("hits") == 1858, 120, "the first copy")
        first = [m for m in collect(q, 3, 30) if m[0] == MessageType.PixelData]
        longtime.value = LONGTIME + 3 * EPOCH             # e.g. the SPIDR timer read again
        pipe.eventWindow = (0, 1.0)                       # reaches the running decoder
        time.sleep(0.3)
        send_capture(port)
        wait_until(lambda: pipe.counters.get("hits") == 2 * 1858, 60, "the second copy")
    finally:
        pipe.stop()
    assert pipe.fault() is None
    rest = collect(q, 100, 5)
    pixels = [d for t, d in rest if t == MessageType.PixelData]
    events = [d for t, d in rest if t == MessageType.EventData]
    toa1, toa2 = first[0][1][2], pixels[-1][2]
    np.testing.assert_allclose(toa2 - toa1, 3 * EPOCH * 25e-9, rtol=0, atol=1e-9)
    # the wider window lets far more hits of the second copy into events (1782 vs 21)
    assert sum(len(e[0]) for e in events) > 1000


@pytest.mark.timeout(60)
def test_failed_start_leaves_nothing_and_reports_the_first_error():
    class NeedsArgument(BasePipelineObject):
        def __init__(self, required, input_queue=None, shared_output=None):
            super().__init__("NeedsArgument", input_queue=input_queue, shared_output=shared_output)

    assert pipe_endpoints() == set()
    pipe = PixelPipeline(mp.Queue(), ("127.0.0.1", free_port(kind=socket.SOCK_DGRAM)), mp.Value("L", 0))
    pipe.addStage(3, NeedsArgument)
    with pytest.raises(TypeError, match="required"):
        pipe.start()
    assert pipe_endpoints() == set() and not mp.active_children() and not pipe.isRunning

    # a port already taken: OSError naming the address, nothing left either
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        pipe = PixelPipeline(None, ("127.0.0.1", port), mp.Value("L", 0))
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            pipe.start()
    assert pipe_endpoints() == set() and not mp.active_children()


@pytest.mark.timeout(30)
def test_stage_order_errors_are_clear():
    pipe = PixelPipeline(None, ("127.0.0.1", free_port(kind=socket.SOCK_DGRAM)), None)
    pipe.addStage(1, HitCounter, "x")                    # between receiver and decoder
    with pytest.raises(ValueError, match="custom stages come after the built-in ones"):
        pipe.start()
    raw = AcquisitionPipeline("raw", None)
    raw.addStage(0, UdpSampler, ("127.0.0.1", free_port(kind=socket.SOCK_DGRAM)), None)
    raw.addStage(1, HitCounter, "x")
    with pytest.raises(ValueError, match="PipelinePacketProcessor"):
        raw.start()
    assert not mp.active_children()


@pytest.mark.timeout(40)
def test_usbtrainid_is_a_process_reading_the_receiver():
    from tango_tpx.processing.usbtrainid import USBTrainID
    from tango_tpx.trainid.receiver import SimulatedReceiver

    sim = SimulatedReceiver(rate_hz=50, start_train_id=5_000_000, beam_mode=3)
    reader = USBTrainID(source=sim.path, reconnect_min_s=0.02, reconnect_max_s=0.1)
    try:
        transport = reader.connect_device()             # the receiver opens from the parent too
        transport.close()
        reader.start()
        sim.start()
        frames: list = []
        wait_until(lambda: frames.extend(reader.get(0.1)) or len(frames) >= 10, 15, "10 train IDs")
        ids = np.array([f.train_id for f in frames])
        assert ids[0] >= 5_000_000 and np.all(np.diff(ids) == 1)
        assert all(f.beam_mode == 3 for f in frames)
        assert reader.status.startswith("connected: ")
    finally:
        reader.stop()
        sim.stop()
    assert not reader.is_alive() and reader.exitcode == 0
