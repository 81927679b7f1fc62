"""``tango-tpx demo`` end to end: exits 0 with a summary, leaves no process behind, and
stops everything it started on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("tango")

from tango_tpx.device.database import stop_process_group  # noqa: E402

from .test_pipeline_helpers import pid_alive  # noqa: E402


def _demo(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tango_tpx.cli", "demo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _pids(text: str) -> dict[str, int]:
    found = {}
    m = re.search(r"Tango database running, TANGO_HOST=\S+ \(pid (\d+)\)", text)
    if m:
        found["db"] = int(m.group(1))
    m = re.search(r"server TangoTpx/demo running \(pid (\d+)\)", text)
    if m:
        found["server"] = int(m.group(1))
    return found


@pytest.mark.timeout(180)
def test_demo_runs_records_converts_and_cleans_up(tmp_path):
    proc = _demo("--duration", "2", "--rate", "0.05", "--workdir", str(tmp_path))
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        stop_process_group(proc)
    assert proc.returncode == 0, out
    live = [line for line in out.splitlines() if re.match(r"\[\s*\d+\.\d s\] hits", line)]
    assert len(live) >= 2, out
    totals = re.search(r"live totals: hits (\d+), triggers (\d+)", out)
    converted = re.search(r"converted to HDF5 in \S+ s: hits (\d+), events (\d+), triggers (\d+), "
                          r"centroids (\d+)", out)
    assert totals and converted, out
    # what the device counted live equals what the recorded file holds (nothing lost on loopback)
    assert int(totals.group(1)) > 0
    assert int(converted.group(1)) == int(totals.group(1))
    assert int(converted.group(4)) > 0
    raw = next((tmp_path / "data").glob("demo-*.raw"))
    h5 = raw.with_suffix(".h5")
    assert raw.stat().st_size > 0 and h5.exists()
    h5py = pytest.importorskip("h5py")
    with h5py.File(h5, "r") as f:
        assert bool(f.attrs.get("complete", True))
    pids = _pids(out)
    assert set(pids) == {"db", "server"}, out
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still running"


@pytest.mark.timeout(120)
def test_demo_sigterm_stops_everything(tmp_path):
    proc = _demo("--duration", "60", "--rate", "0.02", "--workdir", str(tmp_path))
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if re.match(r"\[\s*\d+\.\d s\] hits", line):
                break
        text = "".join(lines)
        pids = _pids(text)
        assert set(pids) == {"db", "server"}, text
        assert all(pid_alive(p) for p in pids.values())
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=40)
    finally:
        stop_process_group(proc)
    assert proc.returncode == 130, text + rest
    assert "interrupted, stopping everything" in rest
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) left running"
