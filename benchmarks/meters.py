"""What the live benchmark measures besides hits: CPU time per process and the depth of
each stage's input queue over a step.

CPU figures come from ``/proc`` (s of CPU, user + system; minor page faults). Queue depths
come from the pipeline's shared counters: messages put into a stage's input minus messages it
has taken, sampled by a thread of the benchmark process.
"""

from __future__ import annotations

import os
import threading
import time

_CLK = os.sysconf("SC_CLK_TCK")
#: stage classes of the live pipeline by the role the benchmark reports them under
ROLES = {"UdpSampler": "receiver", "PipelinePacketProcessor": "decoder",
         "PipelineCentroidCalculator": "centroid"}


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU s, user + system; minor page faults) so far of every thread of process ``pid``
    ((0, 0) if gone)."""
    try:
        f = open(f"/proc/{pid}/stat").read()
    except OSError:
        return 0.0, 0
    v = f[f.rindex(")") + 2:].split()
    return (int(v[11]) + int(v[12])) / _CLK, int(v[7])


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU s of the whole machine so far (/proc/stat, all cores)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    total = sum(v[:8])
    return (total - v[3] - v[4]) / _CLK, total / _CLK


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class CpuMeter:
    """CPU s per named group of processes between :meth:`start` and :meth:`stop`; the minor
    page faults of each group over the same time are left in :attr:`faults` (a fault is a
    first touch of fresh memory: a few hundred ns of kernel time each)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.faults: dict[str, int] = {}

    def _read(self) -> tuple[dict[str, float], dict[str, int]]:
        stats = {g: [proc_stat(p) for p in pids] for g, pids in self.groups.items()}
        return ({g: sum(c for c, _ in v) for g, v in stats.items()},
                {g: sum(f for _, f in v) for g, v in stats.items()})

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.c0, self.f0 = self._read()
        self.m0 = machine_cpu_s()

    def stop(self) -> dict[str, float]:
        (c1, f1), m1 = self._read(), machine_cpu_s()
        out = {g: c1[g] - self.c0[g] for g in c1}
        self.faults = {g: f1[g] - self.f0[g] for g in f1}
        out["machine_busy"] = m1[0] - self.m0[0]
        out["wall"] = time.perf_counter() - self.t0
        return out


def stage_pids(pipe) -> dict[str, list[int]]:
    """pids of the pipeline's processes by role: receiver, decoder, centroid."""
    out: dict[str, list[int]] = {}
    for st in pipe.stages:
        for p in st.processes:
            out.setdefault(ROLES.get(type(p).__name__, type(p).__name__), []).append(p.pid)
    out["collector"] = [os.getpid()]
    return out


class QueueMeter:
    """Input queue depth (messages: raw chunks into the decoder, event messages into the
    centroid workers) of every stage after the first, sampled every ``period_s`` s from
    :meth:`start` to :meth:`stop`.

    The stage whose queue grows is the one that does not keep up: its peak depth, and the
    seconds into the step at which the peak was reached, say which stage limits the rate and
    how close the step came to filling the hand-off buffer."""

    def __init__(self, pipe, period_s: float = 0.1) -> None:
        self.counters = pipe.counters
        self.names = [ROLES.get(getattr(st.klass, "__name__", ""), f"stage{i}") for i, st in enumerate(pipe.stages)]
        self.period_s = period_s
        self.peak = [0] * len(self.names)
        self.peak_at = [0.0] * len(self.names)
        self._sum = [0] * len(self.names)
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-meter", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.period_s):
            depths = self.counters.queue_depths(len(self.names))
            now = time.monotonic() - t0
            for i, d in enumerate(depths):
                self._sum[i] += d
                if d > self.peak[i]:
                    self.peak[i], self.peak_at[i] = d, now
            self._n += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict:
        """{"queue_peak": {stage: messages}, "queue_peak_at_s": {stage: s},
        "queue_mean": {stage: messages}}, stages after the receiver (may be called again)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        stages = range(1, len(self.names))
        return {"queue_peak": {self.names[i]: self.peak[i] for i in stages},
                "queue_peak_at_s": {self.names[i]: round(self.peak_at[i], 1) for i in stages},
                "queue_mean": {self.names[i]: round(self._sum[i] / max(self._n, 1), 1) for i in stages}}
