"""``tango-tpx demo --gui``: the demo system with the Timepix3 window instead of printed lines.

Starts an embedded Tango database, registers ``dserver_config/tango_tpx.json`` (free UDP
port), starts the ``TangoTpx demo`` server, Starts the acquisition and streams simulated SPIDR
data for as long as the window is open, then stops everything it started. Recording is left
to the user (the window's Open file / Close file, or AutoRecord). With ``screenshot`` the
window saves itself after ``after`` seconds of data and the demo ends (``docs/gui.png`` is
made this way).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

#: Simulated seconds the stream lasts at most (it stops when the window closes).
STREAM_SECONDS = 24 * 3600.0
#: Event window of the demo, µs (its ToF spectrum shows the simulator's ion peaks).
DEMO_WINDOW_US = 8.0
#: ROI of the demo: x0, y0, x1, y1 (px) around the simulated beam spot, ToF 1 .. 3.5 µs (two peaks).
DEMO_ROI = (80.0, 80.0, 176.0, 176.0, 1.0, 3.5)


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise KeyboardInterrupt


def _wait_on(proxy: Any, timeout: float) -> None:
    """Wait until the device is ON (a device that arms its pipeline is MOVING meanwhile)."""
    import tango

    deadline = time.monotonic() + timeout
    while True:
        try:
            state = proxy.state()
        except tango.DevFailed:
            state = None
        if state == tango.DevState.ON:
            return
        if state == tango.DevState.FAULT:
            raise RuntimeError(f"the device went to FAULT: {proxy.status()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the device is not ON after {timeout:g} s (state {state})")
        time.sleep(0.1)


def run_gui_demo(rate_mhits: float = 0.5, centroid_processes: int = 1, seed: int = 0,
                 workdir: str | os.PathLike | None = None, screenshot: str | None = None,
                 after: float = 5.0, out: IO[str] | None = None) -> int:
    """Run the demo system with the window; returns the exit code (0 = it all worked)."""
    import tango

    from tango_tpx.device.database import (
        EmbeddedDatabase,
        free_port,
        iter_devices,
        load_config,
        register_config,
        start_device_server,
        stop_process_group,
        wait_for_device,
    )
    from tango_tpx.device.demo import DEVICE_TIMEOUT_MS, _start_simulator

    from .app import display_problem, run_gui

    out = out or sys.stdout

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    if rate_mhits <= 0:
        say("demo: --rate must be > 0")
        return 2
    problem = display_problem(bool(screenshot))
    if problem:
        say(f"demo: {problem}")
        return 2
    previous_term = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM during set-up: clean up too
        previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tango-tpx-demo-"))
    data_dir = base / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    db = EmbeddedDatabase(workdir=base / "tango-db")
    server = None
    log = None
    sim_stop = threading.Event()
    sim_result: dict[str, Any] = {}
    code = 1
    try:
        db.start()
        th = db.tango_host
        config = load_config(None)
        server_name, _klass, device, _props = next(iter(iter_devices(config)))
        udp_port = free_port(kind=socket.SOCK_DGRAM)
        host, port = th.split(":")
        register_config(config, db=tango.Database(host, int(port)), overrides={device: {
            "UdpPort": [str(udp_port)], "DataStreamAddress": [f"tcp://127.0.0.1:{free_port()}"],
            "SummaryPeriod": ["1.0"]}})
        log = open(base / "server.log", "w")
        server = start_device_server(server_name.split("/", 1)[1], th, log=log)
        url = f"tango://{th}/{device}"
        proxy = wait_for_device(url, timeout=60.0, proc=server)
        proxy.set_timeout_millis(DEVICE_TIMEOUT_MS)
        proxy.RecordingPath = str(data_dir)
        proxy.CentroidProcesses = max(1, int(centroid_processes))
        proxy.Centroiding = True
        proxy.EventWindowStart = 0.0
        proxy.EventWindowEnd = DEMO_WINDOW_US  # the simulated ion peaks are at 1.5 .. 6.1 us
        if "Roi" in proxy.get_attribute_list():
            proxy.Roi = list(DEMO_ROI)
        say(f"demo: TANGO_HOST={th}, device {url} (server pid {server.pid}, database pid {db.proc.pid}), "
            f"recordings go to {data_dir}")
        _wait_on(proxy, 90.0)  # the pipeline arms (MOVING) after start-up and setting changes
        proxy.Start()
        _start_simulator(rate_mhits, STREAM_SECONDS, seed, udp_port, sim_stop, sim_result)
        say(f"demo: simulator sending {rate_mhits:g} Mhits/s to UDP 127.0.0.1:{udp_port}; close the "
            "window to end the demo")
        code = run_gui(url, screenshot=screenshot, after=after)
        if "error" in sim_result:
            say(f"demo: simulator failed: {sim_result['error']!r}")
            code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # noqa: BLE001 - reported, then everything is stopped
        detail = exc.args[0].desc if isinstance(exc, tango.DevFailed) and exc.args else exc
        say(f"demo: FAILED: {type(exc).__name__}: {detail}")
        code = 1
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up must not be cut short
        sim_stop.set()
        if server is not None:
            stop_process_group(server, timeout=10.0)
        if db.proc is not None:
            db.stop(keep_files=True)
            shutil.rmtree(base / "tango-db", ignore_errors=True)
        if log is not None:
            log.close()
        say(f"demo: stopped; server log {base / 'server.log'}")
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return code
