"""A test system for the device tests: embedded Tango database, the registered TangoTpx server
process (restartable) and a DeviceProxy to the Timepix3 device (no tests here)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import tango

from tango_tpx.device.database import (
    EmbeddedDatabase,
    free_port,
    register_config,
    start_device_server,
    stop_process_group,
    wait_for_device,
)

from .conftest import wait_for

DEVICE = "tpx3/detector/1"


def wait_state(proxy: tango.DeviceProxy, state: tango.DevState, timeout: float = 30.0) -> None:
    """Poll ``proxy.state()`` until it is ``state``; AssertionError after ``timeout`` s, naming
    the state and status then."""
    if not wait_for(lambda: proxy.state() == state, timeout, 0.05):
        raise AssertionError(f"state {proxy.state()} != {state} after {timeout} s; status: {proxy.status()}")


class DeviceSystem:
    """Database in ``tmp/db``, server log in ``tmp/server.log``, device on a free UDP port.

    summary_period: SummaryPeriod property (s); properties: further device properties (they win
    over the defaults, e.g. ``{"ChipLayout": ["quad"]}``); timeout_ms: the proxy's client
    timeout (None: Tango's default 3 s, what Taurus, Sardana and macros use).
    """

    def __init__(self, tmp: Path, *, summary_period: float = 0.25,
                 properties: dict[str, list[str]] | None = None, timeout_ms: int | None = None) -> None:
        self.tmp = tmp
        self.timeout_ms = timeout_ms
        self.db = EmbeddedDatabase(workdir=tmp / "db").start()
        self.udp_port = free_port(kind=socket.SOCK_DGRAM)
        host, port = self.db.tango_host.split(":")
        self.database = tango.Database(host, int(port))
        register_config(None, db=self.database, overrides={DEVICE: {
            "UdpPort": [str(self.udp_port)], "DataStreamAddress": [f"tcp://127.0.0.1:{free_port()}"],
            "SummaryPeriod": [str(summary_period)], **(properties or {})}})
        self.url = f"tango://{self.db.tango_host}/{DEVICE}"
        self.log = open(tmp / "server.log", "w")
        self.server: subprocess.Popen | None = None
        self.proxy: tango.DeviceProxy | None = None
        try:
            self.start_server()
        except BaseException:
            self.close()
            raise

    def start_server(self) -> None:
        self.server = start_device_server("demo", self.db.tango_host, log=self.log)
        wait_for_device(self.url, timeout=60, proc=self.server)
        self.proxy = tango.DeviceProxy(self.url)
        if self.timeout_ms is not None:
            self.proxy.set_timeout_millis(self.timeout_ms)

    def stop_server(self) -> None:
        stop_process_group(self.server, timeout=10)
        self.server = None

    def close(self) -> None:
        self.stop_server()
        self.db.stop()
        self.log.close()

    def server_log(self) -> str:
        return (self.tmp / "server.log").read_text()
