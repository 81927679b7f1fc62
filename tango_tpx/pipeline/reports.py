"""Reports of the pipeline's stage processes: ready, error, fault and command replies over
each stage's pipe, and the command channel to the UDP receiver (recording on/off).

:class:`StageReports` is a base class of
:class:`~tango_tpx.pipeline.acquisition.AcquisitionPipeline` and uses the attributes its
``__init__`` sets (``_stages``, ``_errors``, ``_faults``, ``_replies``, ``_reports_lock`` ...).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["READY_TIMEOUT_S", "StageReports"]

#: seconds start() waits for every stage to report ready (numba kernels load from cache).
READY_TIMEOUT_S = 60.0


class StageReports:
    """Stage reports and the receiver's command channel of an acquisition pipeline."""

    def _wait_ready(self) -> None:
        pending = {id(c): (s, p) for s in self._stages for p, c in zip(s.processes, s.connections)}
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(pending):
            self._poll_reports(0.05, ready_sink=ready)
            if self._errors:
                info = self._error_info[0] if self._error_info else None
                if info is not None and info[3]:
                    raise OSError(info[1], info[2])
                raise RuntimeError(f"pipeline failed to start: {self._errors[0]}")
            dead = [p for s in self._stages if s.zero_copy for p in s.processes
                    if p.exitcode is not None and id(p) not in ready]
            if dead:
                self._poll_reports(0.2, ready_sink=ready)
                if not self._errors:
                    raise RuntimeError(f"stage {dead[0].name} exited with code {dead[0].exitcode} during start")
            if time.monotonic() > deadline:
                raise RuntimeError("pipeline stages did not become ready in time")

    # -- reports from the stages -----------------------------------------------------------
    def _poll_reports(self, timeout: float = 0.0, ready_sink: set | None = None) -> None:
        from multiprocessing.connection import wait
        with self._reports_lock:
            conns = {}
            for s in self._stages:
                for p, c in zip(s.processes, s.connections):
                    if not c.closed:
                        conns[c] = p
            if not conns:
                return
            try:
                ready_conns = wait(list(conns), timeout)
            except OSError:
                return
            for c in ready_conns:
                p = conns[c]
                try:
                    while c.poll():
                        msg = c.recv()
                        self._handle_report(p, msg, ready_sink)
                except (EOFError, OSError):
                    c.close()

    def _handle_report(self, p, msg: tuple, ready_sink: set | None) -> None:
        kind, name = msg[0], msg[1]
        if kind == "ready":
            if ready_sink is not None:
                ready_sink.add(id(p))
        elif kind == "error":
            tb = msg[2]
            last = tb.strip().splitlines()[-1] if tb.strip() else "unknown error"
            self._errors.append(f"stage {name} (pid {p.pid}) failed: {last}\n{tb}")
            if len(msg) > 3:
                self._error_info.append(msg[3])
        elif kind == "fault":
            self._faults.append(f"stage {name}: {msg[2]}")
        elif kind == "reply":
            self._replies[msg[2]] = (msg[3], msg[4])

    def fault(self) -> str | None:
        """Why the pipeline is broken (dead stage with its exception, disk full ...), or None."""
        self._poll_reports(0.0)
        msgs = list(self._errors) + list(self._faults)
        if self._running and not self._stopping:
            for s in self._stages:
                for p in s.processes:
                    code = p.exitcode
                    if code is not None and (code or s.zero_copy) and \
                            not any(f"stage {p.name} " in m for m in self._errors):
                        msgs.append(f"stage {p.name} (pid {p.pid}) died with exit code {code}")
        if self._collector is not None and self._collector.error:
            msgs.append(self._collector.error)
        return "; ".join(m.splitlines()[0] if i else m for i, m in enumerate(msgs)) if msgs else None

    # -- recording ------------------------------------------------------------------------
    def _sampler(self) -> tuple[Any, Any]:
        s = self._stages[0]
        return s.processes[0], s.connections[0]

    def _command_sampler(self, name: str, arg: Any, timeout: float = 5.0) -> Any:
        if not self._running or not self._stages or not self._stages[0].processes:
            raise RuntimeError("the acquisition is not running")
        p, conn = self._sampler()
        cid = next(self._cid)
        with self._reports_lock:
            conn.send(("cmd", cid, name, arg))
        deadline = time.monotonic() + timeout
        while cid not in self._replies:
            if time.monotonic() > deadline or p.exitcode is not None:
                raise TimeoutError(f"UDP receiver did not answer {name!r} within {timeout} s")
            self._poll_reports(0.02)
        ok, value = self._replies.pop(cid)
        if not ok:
            etype, errno_, text = value
            if etype == "FileExistsError":
                raise FileExistsError(errno_, text)
            raise OSError(errno_, text)
        return value
