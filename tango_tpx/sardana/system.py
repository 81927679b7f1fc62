"""The whole Sardana set-up on one machine: embedded DB, TangoTpx, simulator, Sardana, set-up.

:class:`SardanaSystem` starts, in a working directory of its own:

1. an embedded sqlite Tango database (free port);
2. the ``TangoTpx demo`` server with ``tpx3/detector/1`` on a free UDP port;
3. the SPIDR simulator (``tango-tpx simulate --udp``) streaming to that port in a child process;
4. ``Sardana demo`` (Pool + MacroServer + Door) after :func:`register_sardana`, then the Pool
   and environment set-up of ``sardana-setup`` (ScanDir = ``<workdir>/scans``).

:meth:`SardanaSystem.close` stops every process group it started (also after a failed start).
Used by ``tango-tpx demo --sardana`` and the tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from tango_tpx.device.database import (
    EmbeddedDatabase,
    free_port,
    register_config,
    start_device_server,
    stop_process_group,
    wait_for_device,
)
from tango_tpx.sardana import DEFAULT_DEVICE
from tango_tpx.sardana.configure import (
    SardanaNames,
    configure_environment,
    configure_pool,
    register_sardana,
)
from tango_tpx.sardana.stack import DoorRunner, start_sardana


class SardanaSystem:
    """Database + Timepix3 server + simulator + Sardana (see the module docstring).

    ``rate_mhits``: simulated hit rate (Mhits/s); ``duration_s``: how long the simulator
    streams; ``say``: progress lines (default: none). Use as a context manager or call
    :meth:`start` and :meth:`close`.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, *, rate_mhits: float = 0.2,
                 duration_s: float = 3600.0, trigger_hz: float = 1000.0, seed: int = 1,
                 say: Callable[[str], None] | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tango-tpx-sardana-"))
        self.rate_mhits = rate_mhits
        self.duration_s = duration_s
        self.trigger_hz = trigger_hz
        self.seed = seed
        self.say = say or (lambda msg: None)
        self.names = SardanaNames()
        self.device_name = DEFAULT_DEVICE
        self.db: EmbeddedDatabase | None = None
        self.server: subprocess.Popen | None = None
        self.simulator: subprocess.Popen | None = None
        self.sardana: subprocess.Popen | None = None
        self.device: Any = None
        self.door: DoorRunner | None = None
        self.udp_port: int | None = None
        self._logs: list[Any] = []

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def scan_dir(self) -> Path:
        return self.workdir / "scans"

    @property
    def tango_host(self) -> str:
        assert self.db is not None
        return self.db.tango_host

    def url(self, name: str) -> str:
        """Full Tango URL of a device name or alias in this system's database."""
        return f"tango://{self.tango_host}/{name}"

    def _log(self, name: str):
        f = open(self.workdir / name, "w")
        self._logs.append(f)
        return f

    def start(self) -> "SardanaSystem":
        """Start everything; on failure stops what was started and re-raises."""
        import tango

        try:
            for d in (self.data_dir, self.scan_dir):
                d.mkdir(parents=True, exist_ok=True)
            self.db = EmbeddedDatabase(workdir=self.workdir / "tango-db").start()
            self.say(f"Tango database: TANGO_HOST={self.tango_host}")
            host, port = self.tango_host.split(":")
            database = tango.Database(host, int(port))
            self.udp_port = free_port(kind=socket.SOCK_DGRAM)
            register_config(None, db=database, overrides={self.device_name: {
                "UdpPort": [str(self.udp_port)], "DataStreamAddress": [f"tcp://127.0.0.1:{free_port()}"],
                "SummaryPeriod": ["0.5"]}})
            self.server = start_device_server("demo", self.tango_host, log=self._log("tangotpx.log"))
            self.device = wait_for_device(self.url(self.device_name), timeout=90.0, proc=self.server)
            self.device.set_timeout_millis(15000)
            self.device.RecordingPath = str(self.data_dir)
            self.say(f"TangoTpx: {self.device_name} is {self.device.state()} (UDP {self.udp_port})")
            self.simulator = subprocess.Popen(
                [sys.executable, "-m", "tango_tpx", "simulate", "--rate", f"{self.rate_mhits:g}",
                 "--duration", f"{self.duration_s:g}", "--seed", str(self.seed), "--trigger-hz",
                 f"{self.trigger_hz:g}", "--udp", f"127.0.0.1:{self.udp_port}"],
                stdin=subprocess.DEVNULL, stdout=self._log("simulator.log"), stderr=subprocess.STDOUT,
                start_new_session=True)
            self.say(f"simulator: {self.rate_mhits:g} Mhits/s, {self.trigger_hz:g} Hz triggers -> "
                     f"UDP {self.udp_port}")
            for line in register_sardana(database, self.names, env_db=str(self.workdir / "sardana-env"
                                                                             / "macroserver.properties")):
                self.say(f"sardana-setup: {line}")
            self.sardana = start_sardana(self.names.instance, self.tango_host, self.names.devices,
                                         log=self._log("sardana.log"), cwd=self.workdir)
            self.say(f"Sardana {self.names.instance}: {', '.join(self.names.devices)} running "
                     f"(pid {self.sardana.pid})")
            os.environ["TANGO_HOST"] = self.tango_host  # Taurus names without authority use it
            for line in configure_pool(self.url(self.names.pool), self.device_name, say=self.say):
                self.say(f"sardana-setup: {line}")
            for line in configure_environment(self.url(self.names.macroserver), self.device_name,
                                              str(self.scan_dir)):
                self.say(f"sardana-setup: {line}")
            self.door = DoorRunner(self.url(self.names.door))
        except BaseException:
            self.close()
            raise
        return self

    def close(self, remove: bool | None = None) -> None:
        """Stop Sardana, the simulator, the server and the database (whole process groups).

        ``remove`` (default: when the working directory was created here) deletes it too.
        """
        self.door = None
        self.device = None
        stop_process_group(self.sardana, timeout=15.0)
        stop_process_group(self.simulator, timeout=5.0)
        stop_process_group(self.server, timeout=15.0)
        self.sardana = self.simulator = self.server = None
        if self.db is not None:
            self.db.stop()
        for f in self._logs:
            f.close()
        self._logs.clear()
        if remove if remove is not None else False:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines of one of the logs (tangotpx.log, sardana.log, simulator.log)."""
        path = self.workdir / name
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:]) if path.exists() else ""

    def __enter__(self) -> "SardanaSystem":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
