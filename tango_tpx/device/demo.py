"""``tango-tpx demo``: the whole system on one machine, end to end.

1. an embedded sqlite Tango database on a free localhost port (temporary directory);
2. ``dserver_config/tango_tpx.json`` registered in it (UDP and ZMQ ports replaced by free ones);
3. the ``TangoTpx demo`` device server process;
4. a simulated SPIDR board streaming over UDP (:class:`tango_tpx.simulator.SpidrSimulator`);
5. a client (``tango.DeviceProxy`` through the database) that sets attributes, Starts,
   OpenFiles, follows change events with one line per second, CloseFiles, Stops;
6. the recording converted to HDF5 (:func:`tango_tpx.io.convert.convert_file`) and a summary.

With ``--trainid`` a simulated European XFEL train-ID receiver
(:class:`tango_tpx.trainid.SimulatedReceiver`, 10 Hz on a pty) runs in this process and the
device's ``TrainIdSource`` property names it: the live lines show the ``TrainId``
attribute (from change events), the recording gets its ``<raw>.trainid.csv`` side file and
the summary says how many train IDs it holds (and how many reached the HDF5 file).

Everything started is stopped at the end and on Ctrl-C / SIGTERM (each child is the leader
of its own process group and the whole group is killed), unless ``--keep`` asks to leave
the database and server running for a GUI.
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

#: Attributes followed with change events and printed once per second.
LIVE_ATTRIBUTES = ("HitRate", "TriggerRate", "EventRate", "CentroidRate", "TotalHits", "TotalTriggers",
                   "TotalEvents", "TotalCentroids", "KernelDrops", "LostTriggers", "MalformedWords")
DEVICE_TIMEOUT_MS = 15000


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that the clean-up below runs."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise _Terminated()


class _Live:
    """Latest value of each followed attribute, fed by Tango change events."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.events = 0
        self.errors = 0
        self._lock = threading.Lock()

    def __call__(self, ev) -> None:
        with self._lock:
            if ev.err or ev.attr_value is None:
                self.errors += 1
                return
            self.events += 1
            self.values[ev.attr_value.name.lower()] = ev.attr_value.value

    def get(self, name: str, default=0):
        with self._lock:
            return self.values.get(name.lower(), default)


def _fmt_rate(hz: float) -> str:
    if hz >= 1e6:
        return f"{hz / 1e6:6.2f} M/s"
    if hz >= 1e3:
        return f"{hz / 1e3:6.1f} k/s"
    return f"{hz:6.0f} /s"


def _live_line(t: float, live: _Live) -> str:
    return (f"[{t:5.1f} s] hits {_fmt_rate(live.get('HitRate', 0.0))} "
            f"trig {_fmt_rate(live.get('TriggerRate', 0.0))} "
            f"events {_fmt_rate(live.get('EventRate', 0.0))} "
            f"centroids {_fmt_rate(live.get('CentroidRate', 0.0))} | "
            f"total hits {live.get('TotalHits')} trig {live.get('TotalTriggers')} "
            f"centroids {live.get('TotalCentroids')} | drops {live.get('KernelDrops')} "
            f"lost trig {live.get('LostTriggers')} bad words {live.get('MalformedWords')}")


def _wait_idle(proxy, timeout: float) -> None:
    """Wait while the device is MOVING (arming, re-arming, stopping)."""
    import tango

    deadline = time.monotonic() + timeout
    while proxy.state() == tango.DevState.MOVING and time.monotonic() < deadline:
        time.sleep(0.05)


def _start_simulator(rate_mhits: float, duration: float, seed: int, port: int, stop: threading.Event,
                     result: dict[str, Any]) -> threading.Thread:
    """Stream simulated SPIDR data to 127.0.0.1:port in a thread, paced in real time."""
    from tango_tpx.simulator import SimConfig, SpidrSimulator

    sim = SpidrSimulator(SimConfig(rate_mhits=rate_mhits, duration_s=duration, seed=seed))

    def send() -> None:
        try:
            result.update(sim.send_udp("127.0.0.1", port, stop_event=stop))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            result["error"] = exc

    thread = threading.Thread(target=send, name="spidr-simulator", daemon=True)
    thread.start()
    return thread


def _report_train_ids(say, raw_path: str, h5_path: Path, last_train: int, sim: Any) -> bool:
    """Print what the train IDs did (device, side file, HDF5); True when they arrived."""
    from tango_tpx.trainid import read_side_file, side_file_path

    side = side_file_path(raw_path)
    ids = read_side_file(side)["train_id"] if side.exists() else []
    in_order = bool(len(ids) and (len(ids) == 1 or (ids[1:] > ids[:-1]).all()))
    say(f"demo: train IDs: last on the device {last_train}, {len(ids)} in {side.name}"
        + (f" ({int(ids[0])}..{int(ids[-1])}, in order: {in_order})" if len(ids) else "")
        + f"; the simulator sent {len(sim.counts.sent_ids)}")
    if h5_path.exists():
        try:
            import h5py

            from tango_tpx.io.trainid import read_hdf5

            with h5py.File(h5_path, "r") as f:
                n = len(read_hdf5(f))
            say(f"demo: {n} train IDs in {h5_path.name} (timing/trainID)")
        except Exception as exc:  # noqa: BLE001 - informative only
            say(f"demo: could not read train IDs from {h5_path.name}: {exc}")
    return last_train >= sim.start_train_id and len(ids) > 0 and in_order


def run_demo(duration: float = 10.0, rate_mhits: float = 0.5, keep: bool = False,
             workdir: str | os.PathLike | None = None, centroid_processes: int = 1, seed: int = 0,
             out: IO[str] | None = None, trainid: bool = False, trainid_rate_hz: float = 10.0) -> int:
    """Run the demo; returns the exit code (0 = everything worked, 1 = a step failed, 130 = interrupted).

    duration: seconds of simulated data; rate_mhits: simulated hit rate in Mhits/s;
    workdir: where the recording (data/*.raw), the HDF5 file and the logs go (default a
    new temporary directory, kept at the end so the files can be looked at);
    trainid: also run a simulated train-ID receiver (``trainid_rate_hz`` frames per second)
    and use it as the device's TrainIdSource; the demo then also fails when no train ID
    reached the device or the side file.
    """
    import tango

    out = out or sys.stdout

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    if duration <= 0 or rate_mhits <= 0:
        say("demo: --duration and --rate must be > 0")
        return 2
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tango-tpx-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    data_dir = base / "data"
    data_dir.mkdir(exist_ok=True)
    previous_term = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is \
        threading.main_thread() else None

    db = EmbeddedDatabase(workdir=base / "tango-db")
    server = None
    server_log = None
    proxy = None
    sub_ids: list[int] = []
    sim_stop = threading.Event()
    sim_result: dict[str, Any] = {}
    train_sim = None
    code = 1
    try:
        say(f"demo: working directory {base}")
        db.start()
        th = db.tango_host
        say(f"demo: Tango database running, TANGO_HOST={th} (pid {db.proc.pid})")

        config = load_config(None)
        server_name, _klass, device, _props = next(iter(iter_devices(config)))
        instance = server_name.split("/", 1)[1]
        udp_port = free_port(kind=socket.SOCK_DGRAM)
        stream = f"tcp://127.0.0.1:{free_port()}"
        host, port = th.split(":")
        props = {"UdpPort": [str(udp_port)], "DataStreamAddress": [stream], "SummaryPeriod": ["1.0"]}
        if trainid:
            from tango_tpx.trainid import SimulatedReceiver

            train_sim = SimulatedReceiver(rate_hz=trainid_rate_hz, link_dir=str(base)).start()
            props["TrainIdSource"] = [train_sim.path]
            say(f"demo: simulated train-ID receiver at {train_sim.path} ({train_sim.pty_path}), "
                f"{trainid_rate_hz:g} Hz from train {train_sim.start_train_id}")
        register_config(config, db=tango.Database(host, int(port)), overrides={device: props})
        say(f"demo: registered {device} in server {server_name} (UDP port {udp_port}, stream {stream})")

        server_log = open(base / "server.log", "w")
        server = start_device_server(instance, th, log=server_log)
        url = f"tango://{th}/{device}"
        proxy = wait_for_device(url, timeout=60.0, proc=server)
        proxy.set_timeout_millis(DEVICE_TIMEOUT_MS)
        say(f"demo: server {server_name} running (pid {server.pid}), device {url} is {proxy.state()}")
        _wait_idle(proxy, 60.0)   # the pipeline is armed in the background (MOVING -> ON)

        proxy.RecordingPath = str(data_dir)
        proxy.CentroidProcesses = max(1, int(centroid_processes))
        window_us = (0.0, 1000.0)
        proxy.EventWindowEnd = window_us[1]
        proxy.EventWindowStart = window_us[0]
        proxy.Centroiding = True
        _wait_idle(proxy, 60.0)   # a changed process count re-arms the pipeline
        say(f"demo: device {proxy.state()}: {proxy.status().splitlines()[0]}")

        live = _Live()
        for name in LIVE_ATTRIBUTES + (("TrainId",) if trainid else ()):
            sub_ids.append(proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, live))

        raw_path = proxy.OpenFile(time.strftime("demo-%Y%m%d-%H%M%S.raw"))   # the next Start records
        t_cmd = time.perf_counter()
        proxy.Start()
        t_cmd = time.perf_counter() - t_cmd
        say(f"demo: Start answered in {1e3 * t_cmd:.0f} ms; {proxy.state()}, recording to {raw_path}")

        sim = _start_simulator(rate_mhits, duration, seed, udp_port, sim_stop, sim_result)
        say(f"demo: simulator sending {rate_mhits:g} Mhits/s for {duration:g} s to UDP 127.0.0.1:{udp_port}")
        t0 = time.monotonic()
        next_line = t0 + 1.0
        tail_until = None
        while True:
            time.sleep(max(0.0, next_line - time.monotonic()))
            next_line += 1.0
            line = _live_line(time.monotonic() - t0, live)
            say(f"{line} | train {live.get('TrainId', -1)}" if trainid else line)
            state = proxy.state()
            if state == tango.DevState.FAULT:
                say(f"demo: device went to FAULT: {proxy.status()}")
                break
            if "error" in sim_result:
                break
            if not sim.is_alive() and tail_until is None:
                tail_until = time.monotonic() + 2.0  # let the pipeline drain
            if tail_until is not None and time.monotonic() >= tail_until:
                break
            if time.monotonic() - t0 > duration * 3 + 30:
                say("demo: simulator did not finish in time; stopping")
                sim_stop.set()
                break
        if "error" in sim_result:
            raise RuntimeError(f"simulator failed: {sim_result['error']!r}")
        if "hits" in sim_result:
            say(f"demo: simulator sent {sim_result['hits']} hits, {sim_result.get('triggers', 0)} triggers "
                f"in {sim_result.get('datagrams', 0)} datagrams ({sim_result.get('bytes', 0)} bytes)")

        t_cmd = time.perf_counter()
        proxy.Stop()                      # closes the recording; draining goes on in the background
        t_cmd = time.perf_counter() - t_cmd
        say(f"demo: Stop answered in {1e3 * t_cmd:.0f} ms; {proxy.status().splitlines()[0]}")
        _wait_idle(proxy, 60.0)
        totals = {name: proxy.read_attribute(name).value
                  for name in ("TotalHits", "TotalTriggers", "TotalEvents", "TotalCentroids",
                               "BytesReceived", "KernelDrops", "LostTriggers", "MalformedWords")}
        final_state = proxy.state()
        last_train = int(proxy.TrainId) if trainid else -1
        say(f"demo: stopped, device {final_state}; {live.events} change events received")
        size = os.path.getsize(raw_path) if os.path.exists(raw_path) else 0
        say(f"demo: live totals: hits {totals['TotalHits']}, triggers {totals['TotalTriggers']}, "
            f"events {totals['TotalEvents']}, centroids {totals['TotalCentroids']}, "
            f"bytes {totals['BytesReceived']}, kernel drops {totals['KernelDrops']}")

        h5_path = Path(raw_path).with_suffix(".h5")
        try:
            from tango_tpx.io.convert import convert_file
        except ImportError:  # pragma: no cover - the HDF5 part is not installed
            convert_file = None
        if convert_file is None:
            say("demo: tango_tpx.io.convert not available; HDF5 conversion skipped")
        elif size == 0:
            say("demo: the recording is empty; HDF5 conversion skipped")
        else:
            res = convert_file(raw_path, h5_path, number_of_processes=max(1, int(centroid_processes)),
                               event_window=(window_us[0] * 1e-6, window_us[1] * 1e-6))
            say(f"demo: converted to HDF5 in {res.seconds:.1f} s: hits {res.hits}, events {res.events}, "
                f"triggers {res.triggers}, centroids {res.centroids}")
        train_ok = True
        if trainid:
            train_ok = _report_train_ids(say, raw_path, h5_path, last_train, train_sim)
        say("demo: files:")
        say(f"  raw     {raw_path} ({size} bytes)")
        if trainid:
            from tango_tpx.trainid import side_file_path

            side = side_file_path(raw_path)
            if side.exists():
                say(f"  trainid {side} ({side.stat().st_size} bytes)")
        if h5_path.exists():
            say(f"  hdf5    {h5_path} ({h5_path.stat().st_size} bytes)")
        say(f"  log     {base / 'server.log'}")
        code = 0 if final_state == tango.DevState.ON and totals["TotalHits"] > 0 and train_ok else 1
        if code:
            say(f"demo: FAILED (state {final_state}, {totals['TotalHits']} hits"
                + (", train IDs missing)" if not train_ok else ")"))
    except KeyboardInterrupt:
        say("demo: interrupted, stopping everything")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the demo reports and cleans up
        detail = exc.args[0].desc if isinstance(exc, tango.DevFailed) and exc.args else exc
        say(f"demo: FAILED: {type(exc).__name__}: {detail}")
        code = 1
    finally:
        if previous_term is not None:  # a second Ctrl-C / SIGTERM must not cut the clean-up short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        sim_stop.set()
        if train_sim is not None and not (keep and code == 0):
            train_sim.stop()
            say("demo: simulated train-ID receiver stopped")
        for sid in sub_ids:
            try:
                proxy.unsubscribe_event(sid)
            except Exception:  # noqa: BLE001
                pass
        proxy = None
        if keep and code == 0:
            if train_sim is not None:
                say("demo: --keep: the simulated train-ID receiver stops with this process")
            say(f"demo: --keep: database and server left running. For a client or a Taurus GUI:\n"
                f"  export TANGO_HOST={db.tango_host}\n"
                f"  taurus form tango://{db.tango_host}/tpx3/detector/1\n"
                f"  stop them with: kill -- -{server.pid}; kill -- -{db.proc.pid}")
        else:
            if server is not None:
                stop_process_group(server, timeout=10.0)
                say(f"demo: server (pid {server.pid}) stopped")
            if db.proc is not None:
                pid = db.proc.pid
                db.stop(keep_files=True)
                shutil.rmtree(base / "tango-db", ignore_errors=True)
                say(f"demo: database (pid {pid}) stopped")
        if server_log is not None:
            server_log.close()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
    return code
