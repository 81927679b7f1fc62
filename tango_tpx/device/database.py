"""Embedded Tango database, dsconfig registration and child-process helpers.

PyTango ships an sqlite implementation of the Tango database device server
(``python -m tango.databaseds.database``). :class:`EmbeddedDatabase` runs it on a free
localhost port in a temporary directory, so a demo or a test needs neither MySQL nor a
system Tango installation. :func:`register_config` writes a dsconfig-style JSON document
(``{"servers": {server: {instance: {class: {device: {"properties": {...}}}}}}}``) into
whatever database ``TANGO_HOST`` names, with plain :class:`tango.Database` calls.

Every process started here is the leader of its own process group, and
:func:`stop_process_group` ends the whole group, so nothing is left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterable, Mapping

#: The dsconfig file shipped with the project (server ``TangoTpx/demo``, device ``tpx3/detector/1``).
DEFAULT_CONFIG: Path = Path(__file__).resolve().parents[2] / "dserver_config" / "tango_tpx.json"

#: Used when the package is installed without the source tree (same content as DEFAULT_CONFIG).
BUILTIN_CONFIG: dict[str, Any] = {"servers": {"TangoTpx": {"demo": {"Timepix3": {"tpx3/detector/1": {
    "properties": {"UdpHost": ["127.0.0.1"], "UdpPort": ["8192"], "ChipLayout": ["single"],
                   "DataStreamAddress": ["tcp://127.0.0.1:5560"], "SummaryPeriod": ["1.0"]}}}}}}}

_HOST_PORT_RE = re.compile(r"host=([^,\s]+),\s*port=(\d+)")


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port number that was free on ``host`` a moment ago (bind to port 0 and close)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 5.0,
                       sig: int = signal.SIGTERM) -> int | None:
    """Stop ``proc`` (started with ``start_new_session=True``) and everything in its group.

    Sends ``sig`` to the leader first so it can shut down cleanly (a Tango server then
    runs ``delete_device``), waits up to ``timeout`` s, then SIGKILLs the whole process
    group, including grandchildren the leader started. Returns the leader's exit code
    (None if it was never started).
    """
    if proc is None:
        return None
    pgid = proc.pid  # leader of its own session/group
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    return proc.returncode


class _LineCollector:
    """Reads a child's output stream in a thread, keeps the text and echoes it optionally."""

    def __init__(self, stream: IO[str], echo: IO[str] | None = None) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._stream = stream
        self._echo = echo
        self._thread = threading.Thread(target=self._run, daemon=True, name="collect-output")
        self._thread.start()

    def _run(self) -> None:
        for line in self._stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            if self._echo is not None:
                try:
                    self._echo.write(line)
                    self._echo.flush()
                except (OSError, ValueError):
                    pass
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern | str, timeout: float, alive=lambda: True) -> re.Match | None:
        """First match of ``pattern`` in the collected lines, waiting up to ``timeout`` s."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (not alive() and not self._thread.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)


class EmbeddedDatabase:
    """PyTango's sqlite Tango database server in a child process on a free localhost port.

    ``workdir`` (default: a new temporary directory, removed by :meth:`stop` unless
    ``keep=True``) holds ``tango_database.db``. Use as a context manager or call
    :meth:`start`/:meth:`stop`; :attr:`tango_host` is ``"HOST:PORT"`` once started.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, workdir: str | os.PathLike | None = None,
                 instance: str = "2") -> None:
        self.host = host
        self.requested_port = int(port)
        self.port: int | None = None
        self.instance = instance
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.proc: subprocess.Popen | None = None
        self._out: _LineCollector | None = None
        self._err: _LineCollector | None = None

    @property
    def tango_host(self) -> str:
        if self.port is None:
            raise RuntimeError("the embedded Tango database is not started")
        return f"{self.host}:{self.port}"

    @property
    def db_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "tango_database.db"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default os.environ) with TANGO_HOST pointing at this database."""
        env = dict(os.environ if base is None else base)
        env["TANGO_HOST"] = self.tango_host
        return env

    def start(self, timeout: float = 30.0) -> "EmbeddedDatabase":
        """Start the database server and wait until it accepts requests.

        Raises RuntimeError with the server's output if it exits or is not ready in time.
        """
        if self.proc is not None:
            return self
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="tango-tpx-db-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["TANGO_HOST"] = f"{self.host}:{self.requested_port or 10000}"
        env["PYTANGO_DATABASE_NAME"] = str(self.db_file)
        cmd = [sys.executable, "-m", "tango.databaseds.database", "--host", self.host,
               "--port", str(self.requested_port), "--print-host-port", self.instance]
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self._out = _LineCollector(self.proc.stdout)
        self._err = _LineCollector(self.proc.stderr)
        alive = lambda: self.proc is not None and self.proc.poll() is None  # noqa: E731
        m = self._err.wait_for(_HOST_PORT_RE, timeout, alive)
        ready = m is not None and self._out.wait_for("Ready to accept request",
                                                     max(1.0, timeout / 2), alive)
        if not ready:
            output = self.output()
            self.stop()
            raise RuntimeError(f"embedded Tango database did not start within {timeout} s:\n{output}")
        self.port = int(m.group(2))
        return self

    def output(self) -> str:
        """What the database server printed so far (stdout then stderr)."""
        return (self._out.text() if self._out else "") + (self._err.text() if self._err else "")

    def stop(self, keep_files: bool = False) -> None:
        """Stop the server (whole process group) and remove its temporary directory."""
        stop_process_group(self.proc, timeout=5.0)
        self.proc = None
        if self._own_dir and not keep_files and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedDatabase":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def load_config(source: str | os.PathLike | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load and check a dsconfig document (path, dict, or None for :data:`DEFAULT_CONFIG`).

    Raises ValueError naming what is wrong when the shape is not
    ``{"servers": {server: {instance: {class: {device: {"properties": {name: [str, ...]}}}}}}}``.
    """
    if source is None:
        source = DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else BUILTIN_CONFIG
    if isinstance(source, Mapping):
        config = dict(source)
        where = "config"
    else:
        where = str(source)
        try:
            config = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise ValueError(f"dsconfig file {where} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"dsconfig file {where} is not valid JSON: {exc}") from None
    servers = config.get("servers") if isinstance(config, Mapping) else None
    if not isinstance(servers, Mapping) or not servers:
        raise ValueError(f"{where}: expected a top-level 'servers' object")
    for server, instances in servers.items():
        if not isinstance(instances, Mapping):
            raise ValueError(f"{where}: servers/{server} must map instance names to classes")
        for instance, classes in instances.items():
            if not isinstance(classes, Mapping):
                raise ValueError(f"{where}: servers/{server}/{instance} must map class names to devices")
            for klass, devices in classes.items():
                if not isinstance(devices, Mapping):
                    raise ValueError(f"{where}: servers/{server}/{instance}/{klass} must map device names")
                for device, spec in devices.items():
                    if device.count("/") != 2:
                        raise ValueError(f"{where}: device name {device!r} is not domain/family/member")
                    props = (spec or {}).get("properties", {})
                    if not isinstance(props, Mapping):
                        raise ValueError(f"{where}: {device}/properties must be an object")
                    for name, value in props.items():
                        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                            raise ValueError(f"{where}: {device} property {name} must be a list of "
                                             f"strings, got {value!r}")
    return config


def iter_devices(config: Mapping[str, Any]) -> Iterable[tuple[str, str, str, dict[str, list[str]]]]:
    """Yield ``(server/instance, class, device, properties)`` for every device in a dsconfig."""
    for server, instances in config["servers"].items():
        for instance, classes in instances.items():
            for klass, devices in classes.items():
                for device, spec in devices.items():
                    yield f"{server}/{instance}", klass, device, dict((spec or {}).get("properties", {}))


def register_config(source: str | os.PathLike | Mapping[str, Any] | None = None,
                    db: Any | None = None, overrides: Mapping[str, Mapping[str, list[str]]] | None = None
                    ) -> list[str]:
    """Write servers, devices and device properties of a dsconfig into the Tango database.

    ``db`` defaults to ``tango.Database()`` (the one TANGO_HOST names). ``overrides`` maps a
    device name to property values replacing those of the file. Returns the device names.
    Registering again is harmless: add_device updates and put_device_property overwrites.
    """
    import tango

    config = load_config(source)
    if db is None:
        db = tango.Database()
    names = []
    for server, klass, device, props in iter_devices(config):
        props.update((overrides or {}).get(device, {}))
        info = tango.DbDevInfo()
        info.name = device
        info._class = klass
        info.server = server
        db.add_device(info)
        if props:
            db.put_device_property(device, {k: list(v) for k, v in props.items()})
        names.append(device)
    return names


def start_device_server(instance: str, tango_host: str, *, log: IO[str] | None = None,
                        extra_args: Iterable[str] = (), cwd: str | os.PathLike | None = None
                        ) -> subprocess.Popen:
    """Start ``TangoTpx INSTANCE`` as a child in its own process group, against ``tango_host``.

    The server runs as ``python -m tango_tpx.device.server`` with this interpreter, so it
    works from a source tree too. Output goes to ``log`` (default: discarded).
    """
    env = dict(os.environ)
    env["TANGO_HOST"] = tango_host
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "tango_tpx.device.server", instance, *extra_args]
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=log if log is not None else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
                            start_new_session=True)


def wait_for_device(name: str, timeout: float = 30.0, proc: subprocess.Popen | None = None):
    """A ``tango.DeviceProxy`` to ``name`` once the device answers ``state()``.

    Raises RuntimeError if ``proc`` (the server) exits or the device does not answer in time.
    """
    import tango

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"device server exited with code {proc.returncode} before {name} was ready")
        try:
            dev = tango.DeviceProxy(name)
            dev.state()
            return dev
        except tango.DevFailed as exc:
            last = exc
            time.sleep(0.2)
    detail = last.args[0].desc if isinstance(last, tango.DevFailed) and last.args else last
    raise RuntimeError(f"device {name} did not answer within {timeout} s: {detail}")
