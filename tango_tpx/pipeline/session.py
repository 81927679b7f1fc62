"""AcquisitionSession: acquisitions on an armed pipeline, without blocking the caller.

:meth:`AcquisitionSession.arm` starts the pipeline once (slow: processes, kernels, socket);
then :meth:`begin` and :meth:`end` only send a command to the receiver process and return
at once. A watcher thread follows each acquisition to its end:

``running`` --(end() or the decoder's bounded end)--> ``stopping`` (the receiver closes the
gate and the file, the decoder flushes, the centroid workers drain) --> ``done``: the raw
file is cut at the exact byte where a bounded acquisition ended, and ``on_done(result)`` is
called with an :class:`AcquisitionResult`. A dead stage, a failed file or a drain that does
not finish in :data:`DRAIN_TIMEOUT_S` ends it with ``error`` set.

Per-acquisition counts are the shared counters minus their values at :meth:`begin` (the
gate is closed between acquisitions, so nothing else moves them).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..tpx3.units import UNIT_NS
from .counters import SharedCounters, SharedPreview
from .gated import ArmedCentroidPipeline, ArmedPixelPipeline

#: s a stopping acquisition may take to drain before it is a fault.
DRAIN_TIMEOUT_S = 30.0
#: s between two checks of the watcher thread.
WATCH_S = 0.02
#: raw file header (pymepix ``.raw``: 8-byte time_ns), bytes.
RAW_HEADER_BYTES = 8
#: counter keys reported per acquisition (counter key -> result key)
ACQ_KEYS = {"hits": "hits", "events": "events", "trigger_events": "triggers", "centroids": "centroids",
            "roi_hits": "roi_hits", "roi_centroids": "roi_centroids", "bytes": "bytes"}


@dataclass
class AcquisitionResult:
    """One finished acquisition: id, raw file ('' if none) and its payload bytes, why it
    ended ('stop', 'time', 'triggers'), error text or None, and the counts of ACQ_KEYS."""

    id: int
    file: str = ""
    file_bytes: int = 0
    reason: str = "stop"
    error: str | None = None
    counts: dict = field(default_factory=dict)


class AcquisitionSession:
    """Armed pipeline + one acquisition at a time. ``build`` returns the pipeline to arm."""

    def __init__(self, build: Callable[[], Any], counters: SharedCounters, acq_preview: SharedPreview,
                 on_done: Callable[[AcquisitionResult], None] | None = None,
                 on_phase: Callable[[str], None] | None = None) -> None:
        self._build = build
        self.counters = counters
        self.acq_preview = acq_preview
        self.on_done = on_done
        self.on_phase = on_phase
        #: called with the raw path when a recording starts / with no argument before it ends
        self.on_file_open: Callable[[str], None] | None = None
        self.on_file_close: Callable[[], None] | None = None
        self.pipeline: ArmedPixelPipeline | ArmedCentroidPipeline | None = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._acq: dict | None = None
        self._base: dict[str, int] = {}
        self._last_counts: dict[str, int] = {}
        self._t_begin = 0.0
        self._t_end = 0.0
        self._watch: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self.recording_file = ""
        self._open_cmds: list[int] = []

    # -- arming ---------------------------------------------------------------------------
    @property
    def armed(self) -> bool:
        p = self.pipeline
        return bool(p is not None and p.isRunning)

    def arm(self) -> None:
        """Start the pipeline (blocking: processes, kernels, UDP bind). OSError names the port."""
        with self._lock:
            if self.armed:
                return
            pipe = self._build()
            pipe.start()
            self.pipeline = pipe
            self._watch_stop = threading.Event()
            self._watch = threading.Thread(target=self._watch_loop, args=(pipe, self._watch_stop),
                                           name="acquisition-watch", daemon=True)
            self._watch.start()

    def disarm(self) -> None:
        """Stop every process of the pipeline (an acquisition in progress ends unfinished)."""
        with self._lock:
            self._watch_stop.set()
            pipe, self.pipeline = self.pipeline, None
            self._acq = None
            self.recording_file = ""
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(5.0)
        if pipe is not None:
            pipe.stop()

    def fault(self) -> str | None:
        p = self.pipeline
        return p.fault() if p is not None else None

    # -- acquisitions ---------------------------------------------------------------------
    @property
    def phase(self) -> str:
        """'idle', 'running' or 'stopping'."""
        a = self._acq
        return "idle" if a is None else a["phase"]

    def begin(self, time_s: float = 0.0, triggers: int = 0, record: str = "") -> int:
        """Open the gate (and record to ``record`` if given); returns the acquisition id."""
        with self._lock:
            if not self.armed:
                raise RuntimeError("the pipeline is not armed")
            if self._acq is not None:
                raise RuntimeError(f"acquisition {self._acq['id']} is still {self._acq['phase']}")
            acq_id = next(self._ids)
            self._base = self.counters.snapshot()
            self.acq_preview.clear()
            self._last_counts = {}
            cid = self.pipeline.send_command("begin", {"id": acq_id, "time_s": float(time_s),
                                                       "triggers": int(triggers), "record": record})
            self._acq = {"id": acq_id, "phase": "running", "begin_cid": cid, "end_cid": None,
                         "record": record, "report": None, "file": "", "file_bytes": 0,
                         "deadline": 0.0, "error": None, "files": [], "opened": threading.Event()}
            self.recording_file = record
            if record and self.on_file_open is not None:
                self.on_file_open(record)
            self._t_begin = time.monotonic()
            self._t_end = 0.0
            return acq_id

    def wait_open(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the receiver opened the gate; True if it did."""
        a = self._acq
        return True if a is None else a["opened"].wait(timeout)

    def end(self) -> None:
        """Close the gate (no-op unless running); the watcher finishes in the background."""
        with self._lock:
            a = self._acq
            if a is None or a["phase"] != "running":
                return
            self._request_end(a)

    def _request_end(self, a: dict) -> None:
        if self.on_file_close is not None:
            self.on_file_close()
        a["phase"] = "stopping"
        a["deadline"] = time.monotonic() + DRAIN_TIMEOUT_S
        a["end_cid"] = self.pipeline.send_command("end", {"id": a["id"]})
        self._t_end = time.monotonic()
        if self.on_phase is not None:
            self.on_phase("stopping: closing the gate, draining the decoder and the centroid workers")

    def open_file(self, path: str, timeout: float = 2.0) -> str:
        """Record from now on into ``path`` (while running); returns the absolute path."""
        with self._lock:
            if self._acq is None or self._acq["phase"] != "running":
                raise RuntimeError("cannot record: no acquisition is running")
            full = self.pipeline._command_sampler("open", path, timeout=timeout)
            self.recording_file = full
            self._acq["files"].append(full)
            if self.on_file_open is not None:
                self.on_file_open(full)
            return full

    def close_file(self) -> str:
        """Stop recording (the file is finished in the background); returns its path or ''."""
        with self._lock:
            path, self.recording_file = self.recording_file, ""
            if path and self.on_file_close is not None:
                self.on_file_close()
            if path and self.armed and self._acq is not None and self._acq["phase"] == "running":
                self._open_cmds.append(self.pipeline.send_command("close", None))
                if self._acq.get("record") == path:
                    self._acq["record"] = ""
            return path

    # -- per-acquisition values -------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Counts of the current (or last) acquisition, keys of :data:`ACQ_KEYS` values."""
        if self._acq is None and self._last_counts:
            return dict(self._last_counts)
        snap = self.counters.snapshot()
        return {out: max(0, int(snap.get(k, 0)) - int(self._base.get(k, 0))) for k, out in ACQ_KEYS.items()}

    def reset_base(self) -> None:
        """After the counters were zeroed: the current acquisition counts from zero."""
        self._base = {}
        self._last_counts = {}

    def elapsed_s(self) -> float:
        """Detector time spanned by the current/last acquisition (s); host time until the
        first data arrive."""
        t0, t1 = self.counters.get("acq_t_start"), self.counters.get("acq_t_last")
        if t0 and t1 >= t0:
            return (t1 - t0) * UNIT_NS * 1e-9
        if self._t_begin and self._acq is not None:
            return time.monotonic() - self._t_begin
        return 0.0

    # -- watcher ----------------------------------------------------------------------------
    def _watch_loop(self, pipe, stop: threading.Event) -> None:
        while not stop.wait(WATCH_S):
            try:
                pipe._poll_reports(0.0)
                with self._lock:
                    if stop.is_set():
                        return
                    a = self._acq
                    if a is not None:
                        self._step(pipe, a)
            except Exception as exc:  # noqa: BLE001 - reported as this acquisition's error
                with self._lock:
                    a = self._acq
                    if a is not None:
                        a["error"] = f"acquisition watcher: {type(exc).__name__}: {exc}"
                        self._done(a)

    def _step(self, pipe, a: dict) -> None:
        while pipe.acq_reports:
            acq_id, reason, offset = pipe.acq_reports.popleft()
            if acq_id == a["id"] and a["report"] is None:
                a["report"] = (reason, offset)
        for cid in list(self._open_cmds):
            r = pipe.reply(cid)
            if r is not None:
                self._open_cmds.remove(cid)
        if a["begin_cid"] is not None:
            r = pipe.reply(a["begin_cid"])
            if r is not None:
                a["begin_cid"] = None
                a["opened"].set()
                ok, value = r
                if not ok:
                    a["error"] = f"cannot record to {a['record']}: {value[2]}"
                    self.recording_file = ""
                    a["record"] = ""
                elif value:
                    a["files"].append(value)
        fault = pipe.fault()
        if fault:
            a["error"] = fault
            self._done(a)
            return
        if a["phase"] == "running":
            if a["report"] is not None:      # the decoder ended a bounded acquisition
                self._request_end(a)
            return
        if a["end_cid"] is not None and a["report"] is not None and a["begin_cid"] is None:
            r = pipe.reply(a["end_cid"])
            if r is not None:
                a["end_cid"] = None
                ok, value = r
                a["file"], a["file_bytes"] = (value[0], int(value[1])) if ok else ("", 0)
        if a["end_cid"] is None and a["report"] is not None and not self._open_cmds and self._drained(pipe):
            self._done(a)
        elif time.monotonic() > a["deadline"]:
            a["error"] = (f"stopping did not finish in {DRAIN_TIMEOUT_S:g} s "
                          f"(decoder {'done' if a['report'] else 'busy'}, file "
                          f"{'closed' if a['end_cid'] is None else 'closing'})")
            self._done(a)

    def _drained(self, pipe) -> bool:
        if pipe.getStage(4) is None:
            return True
        c = self.counters
        return c.stage_sent_total(2) <= c.worker_total("chunks_in")

    def _done(self, a: dict) -> None:
        reason, offset = a["report"] or ("stop", -1)
        path, nbytes = a["file"], a["file_bytes"]
        if path and reason in ("time", "triggers") and 0 <= offset < nbytes:
            try:                                   # the data after the bounded end go
                os.truncate(path, RAW_HEADER_BYTES + offset)
                nbytes = offset
            except OSError as exc:
                a["error"] = a["error"] or f"cannot cut {path} at the end of the acquisition: {exc}"
        self._last_counts = self.counts()
        self._acq = None
        self.recording_file = ""
        result = AcquisitionResult(a["id"], path or (a["files"][-1] if a["files"] else ""), nbytes,
                                   reason, a["error"], dict(self._last_counts))
        if self.on_done is not None:
            self.on_done(result)
