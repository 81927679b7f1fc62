"""Run a ``Sardana`` server (Pool + MacroServer + Door in one process) and macros on its Door.

:func:`start_sardana` starts ``python -m sardana.tango INSTANCE`` in its own process group
(stop it with :func:`tango_tpx.device.database.stop_process_group`) and waits until the
Pool, the MacroServer and the Door answer. :class:`DoorRunner` runs macros synchronously
through a Taurus Door (the way spock does) and returns the lines they printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Sequence

from tango_tpx.device.database import stop_process_group

#: Seconds the Sardana server gets to publish its devices (5-8 s on an idle machine).
SARDANA_START_TIMEOUT_S = 120.0


def start_sardana(instance: str, tango_host: str, devices: Sequence[str], *, log: IO[str] | None = None,
                  cwd: str | os.PathLike | None = None, timeout: float = SARDANA_START_TIMEOUT_S
                  ) -> subprocess.Popen:
    """Start ``Sardana INSTANCE`` against ``tango_host`` and wait until every name in
    ``devices`` (Pool, MacroServer, Door) answers ``state()``.

    Raises RuntimeError (after stopping the process group) if the server exits or a device
    does not answer within ``timeout`` s; the message ends with the server's last output.
    """
    import tango

    env = dict(os.environ)
    env["TANGO_HOST"] = tango_host
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen([sys.executable, "-m", "sardana.tango", instance], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL,
                            stdout=log if log is not None else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    pending = list(devices)
    last: Any = None
    try:
        while pending:
            if proc.poll() is not None:
                raise RuntimeError(f"Sardana {instance} exited with code {proc.returncode} during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Sardana {instance}: {pending[0]} did not answer within {timeout:g} s "
                                   f"({last})")
            try:
                dev = tango.DeviceProxy(f"tango://{tango_host}/{pending[0]}")
                dev.set_timeout_millis(3000)
                dev.state()
                pending.pop(0)
            except tango.DevFailed as exc:
                last = exc.args[0].desc.strip() if exc.args else exc
                time.sleep(0.5)
    except BaseException:
        stop_process_group(proc, timeout=10.0)
        raise
    return proc


@dataclass
class MacroResult:
    """What one macro run left: its output and error lines, the Door state after it."""

    command: str
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    state: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the macro ended without error (Door ON, nothing on the error stream)."""
        return self.state == "ON" and not self.errors


class DoorRunner:
    """Runs macros on a Door with the Taurus Sardana extensions (as spock does).

    ``door_name`` may be a full URL (``tango://HOST:PORT/door/demo/1``). Output and Error
    lines are collected from the Door's log attributes for each run.
    """

    def __init__(self, door_name: str) -> None:
        import taurus
        from sardana.taurus.core.tango.sardana import registerExtensions

        registerExtensions()
        self.door = taurus.Device(door_name)
        self.name = door_name
        self._lock = threading.Lock()

    def run(self, command: str | Sequence[Any], timeout: float = 300.0) -> MacroResult:
        """Run ``command`` (``"ct 0.5"``, or ``["senv", "ScanDir", "/data"]``) and wait for it.

        Raises TimeoutError (after aborting the macro) when it runs longer than ``timeout`` s.
        """
        import tango

        if isinstance(command, str):
            name, *params = command.split()
        else:
            name, *params = command
        shown = " ".join(str(p) for p in [name, *params])
        t0 = time.monotonic()
        with self._lock:
            done = threading.Event()
            failure: list[BaseException] = []

            def target() -> None:
                try:
                    self.door.runMacro(name, [_as_str(p) for p in params], synch=True)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failure.append(exc)
                finally:
                    done.set()

            thread = threading.Thread(target=target, daemon=True, name=f"macro-{name}")
            thread.start()
            if not done.wait(timeout):
                self.abort()
                done.wait(30.0)
                raise TimeoutError(f"macro {shown!r} did not finish within {timeout:g} s")
            output = [str(line) for line in (self.door.getLogObj("output").getLogBuffer() or [])]
            errors = [str(line) for line in (self.door.getLogObj("error").getLogBuffer() or [])]
            if failure:
                exc = failure[0]
                desc = exc.args[0].desc if isinstance(exc, tango.DevFailed) and exc.args else str(exc)
                errors.append(f"{type(exc).__name__}: {desc}")
            state = str(self.door.getStateObj().read().rvalue.name)
        return MacroResult(shown, output, errors, state, time.monotonic() - t0)

    def start(self, command: str) -> None:
        """Start ``command`` without waiting (for an abort test or a long scan)."""
        name, *params = command.split()
        self.door.runMacro(name, params, synch=False)

    def abort(self, timeout: float = 30.0) -> None:
        """Abort the running macro (as Ctrl-C in spock) and wait until the Door leaves RUNNING."""
        self.door.abort(synch=True, timeout=timeout)

    def state(self) -> str:
        """The Door's state name (ON, RUNNING, ALARM, ...)."""
        return str(self.door.getStateObj().read(cache=False).rvalue.name)


def _as_str(p: Any) -> Any:
    if isinstance(p, (list, tuple)):
        return [_as_str(x) for x in p]
    return str(p)
