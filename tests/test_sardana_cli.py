"""``tango-tpx sardana-setup`` on a fresh database (twice: idempotent) and ``tango-tpx demo --sardana``,
each as a child process like a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sardana")
tango = pytest.importorskip("tango")

from tango_tpx.device.database import EmbeddedDatabase  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict[str, str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m tango_tpx ARGS`` in its own process group; the group is killed on timeout."""
    proc = subprocess.Popen([sys.executable, "-m", "tango_tpx", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"tango-tpx {' '.join(args)} did not finish in {timeout} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.mark.timeout(400)
def test_sardana_setup_creates_everything_once(tmp_path):
    with EmbeddedDatabase(workdir=tmp_path / "db") as db:
        env = {**os.environ, "TANGO_HOST": db.tango_host, "PYTHONPATH": str(REPO)}
        args = ["sardana-setup", "--scan-dir", str(tmp_path / "scans"),
                "--env-db", str(tmp_path / "env" / "macroserver.properties")]
        first = _run(args, env, 300, tmp_path)
        assert first.returncode == 0, first.stdout
        for what in ("registered Pool pool/demo/1", "registered MacroServer macroserver/demo/1",
                     "registered Door door/demo/1", "PoolPath", "MacroPath",
                     "controller tpx3_ctctrl", "controller tpx3_2dctrl", "controller tpx3_tofctrl",
                     "element tpx3_hits", "element tpx3_image", "element tpx3_tof", "element mot01",
                     "measurement group tpx3_mg", "environment ActiveMntGrp = tpx3_mg"):
            assert what in first.stdout, (what, first.stdout)
        database = tango.Database(*db.tango_host.split(":"))
        classes = set(database.get_device_class_list("Sardana/demo").value_string[1::2])
        assert {"Pool", "MacroServer", "Door", "Controller", "CTExpChannel", "TwoDExpChannel",
                "OneDExpChannel", "Motor", "MeasurementGroup"} <= classes, classes
        second = _run(args, env, 300, tmp_path)
        assert second.returncode == 0, second.stdout
        assert "everything already in place" in second.stdout, second.stdout
        assert not re.search(r"registered|controller tpx3|element |measurement group", second.stdout), \
            second.stdout


def test_sardana_setup_needs_tango_host(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TANGO_HOST"}
    res = _run(["sardana-setup"], env, 60, tmp_path)
    assert res.returncode == 2 and "TANGO_HOST is not set" in res.stdout


@pytest.mark.timeout(600)
def test_demo_sardana_runs_ct_ascan_and_record(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TANGO_HOST", None)
    res = _run(["demo", "--sardana", "--rate", "0.2", "--workdir", str(tmp_path / "demo")], env, 540, tmp_path)
    out = res.stdout
    assert res.returncode == 0, out
    for what in ("Door_demo_1 [ct 0.5]", "tpx3_hits", "#Pt No", "Door_demo_1 [tpx3_record 1]",
                 "tpx3_record: ", "NXscan file", "stopped"):
        assert what in out, (what, out)
    refs = re.findall(r"point \d: (file://\S+\.raw) \((\d+) bytes\)", out)
    assert len(refs) == 5 and len({r for r, _ in refs}) == 5, out
    assert all(int(size) > 0 for _, size in refs)
