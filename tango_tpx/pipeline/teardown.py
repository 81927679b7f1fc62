"""Stopping an acquisition pipeline: drain every stage, then force what has not ended (flag,
SIGTERM, SIGKILL), and release sockets and shared memory within 5 s.

:class:`PipelineTeardown` is a base class of
:class:`~tango_tpx.pipeline.acquisition.AcquisitionPipeline` and uses the attributes its
``__init__`` sets.
"""

from __future__ import annotations

import time

from .counters import CTRL_DRAIN, CTRL_FORCE

__all__ = ["DRAIN_S", "PUB_LINGER_MS", "PipelineTeardown"]

#: stop(): clean-drain budget before processes are forced.
DRAIN_S = 2.5
#: ms the PUB socket may keep delivering queued results to viewers after stop()
PUB_LINGER_MS = 300


class PipelineTeardown:
    """Stop and teardown of an acquisition pipeline."""

    def stop(self) -> None:
        """Drain and stop every process and socket; always returns within 5 s."""
        with self._lock:
            if not self._running:
                return
            self._stopping = True
            self._teardown(force=False)

    def _teardown(self, force: bool) -> None:
        c = self.counters
        t0 = time.monotonic()
        c.ctrl[CTRL_DRAIN] = 1
        if force:
            c.ctrl[CTRL_FORCE] = 1
        native = [s for s in self._stages if s.zero_copy]
        custom = [s for s in self._stages if not s.zero_copy]
        for s in custom:                            # sources stop on enable, the rest on None
            for p in s.processes:
                if force or s._input_queue is None:
                    p.enable = False
        deadline = t0 + (0.5 if force else DRAIN_S)
        for s in native:
            s.join(deadline)
            self._poll_reports(0.0)
        if any(s.alive() for s in native):
            c.ctrl[CTRL_FORCE] = 1                  # stages exit at their next poll (50 ms)
            forced = time.monotonic() + 0.3
            for s in native:
                s.join(forced)
            for s in native:                        # SIGTERM, then SIGKILL
                for p in s.alive():
                    p.terminate()
            killed = time.monotonic() + 0.2
            for s in native:
                s.join(killed)
            for s in native:
                s.kill(grace=0.0)
        self._poll_reports(0.0)
        col = self._collector
        if col is not None:
            col.done.wait(max(0.05, min(0.5, t0 + 4.2 - time.monotonic())))
            col.stop_flag = True
            col.join(1.0)
            if col.ctx is not None and not col.is_alive():
                col.ctx.term()
        if custom and self._user_queue is not None and col is None:
            self._user_queue.put(None)              # the collector never ran
        custom_end = t0 + (1.0 if force else 4.2)
        for i, s in enumerate(custom):
            if not s.join(custom_end):
                s.kill(grace=0.2)
            if i + 1 < len(custom):
                s.outputQueue.put(None)             # pymepix's end marker for the next stage
        if self._pub is not None:
            self._pub.close(linger=PUB_LINGER_MS)    # let connected viewers get the tail
            self._pub_ctx.term()
            self._pub, self._pub_ctx = None, None
        for s in self._stages:
            s.release()
        for ring in self._rings:
            ring.close()
        self._rings = []
        self._user_queue = None
        self._run_dir = None
        c.ctrl[CTRL_DRAIN] = 0
        c.ctrl[CTRL_FORCE] = 0
        self.recording_file = ""
        self._running = False
