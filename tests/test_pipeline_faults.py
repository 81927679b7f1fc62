"""Pipeline robustness: start/stop hygiene, dead workers, failing stages, disk full, orphans."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from tango_tpx.pipeline import raw2disk
from tango_tpx.pipeline.acquisition import CentroidPipeline
from tango_tpx.pipeline.controller import AcquisitionController
from tango_tpx.pipeline.packetprocessor import PipelinePacketProcessor
from tango_tpx.simulator import SimConfig, simulate

from .conftest import wait_for
from .test_pipeline_helpers import child_pids, free_udp_port, open_fds, pid_alive, send_datagrams, split


@pytest.mark.timeout(120)
def test_start_stop_50_times_leaks_nothing():
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    ctl.centroiding = True
    ctl.centroid_processes = 2
    ctl.start()                 # first run: imports, numba cache loads, zmq internals
    ctl.stop()
    fds0, kids0, threads0 = open_fds(), child_pids(), threading.active_count()
    data = split(np.arange(4096, dtype=np.uint64).tobytes())
    t0 = time.monotonic()
    for i in range(50):
        ctl.start()
        assert ctl.running and len(child_pids() - kids0) == 4   # sampler, decoder, 2 workers
        if i % 10 == 0:
            send_datagrams(port, data)
        ctl.stop()
        assert not ctl.running
    elapsed = time.monotonic() - t0
    assert wait_for(lambda: child_pids() == kids0, 5), child_pids() - kids0
    assert wait_for(lambda: threading.active_count() == threads0, 5)
    # nothing new is open (fds that other tests' clients closed meanwhile may be gone)
    assert open_fds() - fds0 == set()
    assert ctl.fault() is None
    assert elapsed < 100


@pytest.mark.timeout(60)
def test_killed_centroid_worker_is_reported_and_stop_returns():
    words, _ = simulate(SimConfig(rate_mhits=0.2, duration_s=0.1, seed=4))
    port = free_udp_port()
    pipe = CentroidPipeline(None, ("127.0.0.1", port), None, num_processes=2, flush_timeout=0.05)
    pipe.start()
    try:
        send_datagrams(port, split(words.tobytes()))
        assert wait_for(lambda: pipe.counters.get("words") == words.size, 20)
        victim = pipe.getStage(4).processes[1]
        os.kill(victim.pid, signal.SIGKILL)
        assert wait_for(lambda: pipe.fault() is not None, 5)
        msg = pipe.fault()
        assert victim.name in msg and "exit code -9" in msg, msg
        send_datagrams(port, split(words.tobytes()))        # the rest keeps working
        assert wait_for(lambda: pipe.counters.get("words") == 2 * words.size, 20)
    finally:
        t0 = time.monotonic()
        pipe.stop()
        assert time.monotonic() - t0 < 5.0
    assert not pipe.isRunning


@pytest.mark.timeout(60)
def test_stage_exception_is_reported_with_stage_and_text(monkeypatch):
    def boom(self, data_type=None, data=None):
        raise ValueError("decoder exploded on purpose")

    monkeypatch.setattr(PipelinePacketProcessor, "process", boom)   # inherited by the fork
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    ctl.start()
    try:
        send_datagrams(port, [b"\x00" * 64])
        assert wait_for(lambda: ctl.fault() is not None, 10)
        msg = ctl.fault()
        assert "PipelinePacketProcessor" in msg and "decoder exploded on purpose" in msg
        assert "ValueError" in msg
    finally:
        t0 = time.monotonic()
        ctl.stop()
        assert time.monotonic() - t0 < 5.0
    assert "decoder exploded" in ctl.fault()      # still visible after stop


@pytest.mark.timeout(30)
def test_bind_failure_raises_oserror_naming_the_port():
    import socket
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    kids0 = child_pids()
    try:
        ctl = AcquisitionController(udp_port=port)
        with pytest.raises(OSError) as info:
            ctl.start()
        assert str(port) in str(info.value) and info.value.errno == errno.EADDRINUSE
        assert not ctl.running
        assert wait_for(lambda: child_pids() == kids0, 5)
    finally:
        blocker.close()


class _FullDiskWriter(raw2disk.RawFileWriter):
    """Accepts 20,000 payload bytes, then fails like a full disk."""

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.bytes_written + n > 20_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.mark.timeout(60)
def test_disk_full_while_recording_is_a_fault_and_keeps_written_data(monkeypatch, tmp_path):
    monkeypatch.setattr(raw2disk, "RawFileWriter", _FullDiskWriter)  # inherited by the fork
    port = free_udp_port()
    ctl = AcquisitionController(udp_port=port)
    ctl.start()
    try:
        path = ctl.open_file(tmp_path / "full.raw")
        chunks = [bytes([k]) * 8000 for k in range(10)]
        sent = 0
        for ch in chunks:     # one datagram per hand-off, so the failure hits mid-file
            sent += send_datagrams(port, [ch])
            assert wait_for(lambda: ctl.counters()["bytes"] == sent, 10)
            time.sleep(0.35)
        assert wait_for(lambda: ctl.fault() is not None, 5)
        assert "disk full" in ctl.fault() and path in ctl.fault()
        assert ctl.running
        more = send_datagrams(port, [b"\x00" * 800])               # reception goes on
        assert wait_for(lambda: ctl.counters()["bytes"] == sent + more, 10)
        ctl.close_file()
    finally:
        ctl.stop()
    blob = open(path, "rb").read()
    assert len(blob) - 8 == ctl.counters()["recorded_bytes"] <= 20_000
    assert blob[8:] == b"".join(chunks)[:len(blob) - 8]
    assert ctl.counters()["record_dropped_bytes"] == sent + more - (len(blob) - 8)


@pytest.mark.timeout(60)
def test_children_exit_when_the_parent_is_killed():
    port = free_udp_port()
    script = textwrap.dedent(f"""
        import time
        from tango_tpx.pipeline.controller import AcquisitionController
        from tests.test_pipeline_helpers import child_pids
        ctl = AcquisitionController(udp_port={port})
        ctl.centroiding = True
        ctl.start()
        print(' '.join(map(str, sorted(child_pids()))), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        line = proc.stdout.readline()
        kids = [int(x) for x in line.split()]
        assert len(kids) == 3, line
        assert all(pid_alive(k) for k in kids)
        proc.kill()
        proc.wait(5)
        assert wait_for(lambda: not any(pid_alive(k) for k in kids), 5), [k for k in kids if pid_alive(k)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


@pytest.mark.timeout(60)
def test_stop_returns_within_5_s_when_a_stage_is_blocked(monkeypatch):
    def stuck(self, data_type=None, data=None):
        import signal as _signal
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)      # even ignores SIGTERM
        time.sleep(100)

    monkeypatch.setattr(PipelinePacketProcessor, "process", stuck)
    port = free_udp_port()
    kids0 = child_pids()
    ctl = AcquisitionController(udp_port=port)
    ctl.start()
    send_datagrams(port, [b"\x00" * 64])
    assert wait_for(lambda: ctl.counters()["chunks"] == 1, 10)
    time.sleep(0.2)
    t0 = time.monotonic()
    ctl.stop()
    assert time.monotonic() - t0 < 5.0
    assert wait_for(lambda: child_pids() == kids0, 3)
