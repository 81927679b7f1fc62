"""Live counters, control flags and the rolling preview, in shared memory.

Every slot has exactly one writing process (the stage that owns it), so no locks are
needed: readers see aligned int64/float64 values. Multi-process stages (centroid workers)
get one block of slots per worker, summed on read.

Units: bytes in bytes, times in s (monotonic clock), ToF histogram axis in ns.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import time
from typing import Any

import numba
import numpy as np

#: Global counters (single writer each). Names are the public counter keys.
GLOBAL_COUNTERS = (
    "datagrams",        # UDP datagrams received (UdpSampler)
    "bytes",            # UDP payload bytes received (UdpSampler)
    "kernel_drops",     # datagrams dropped by the kernel (SO_RXQ_OVFL, UdpSampler)
    "rcvbuf_bytes",     # receive buffer granted by the kernel (UdpSampler)
    "chunks",           # raw chunks handed off (UdpSampler)
    "handoff_dropped_bytes",  # raw bytes the decoder could not take (back-pressure)
    "recorded_bytes",   # raw bytes written to files (Raw2Disk)
    "record_dropped_bytes",   # raw bytes that could not be recorded (disk too slow/full)
    "words",            # 64-bit words decoded (decoder)
    "hits",             # pixel hits decoded (decoder)
    "triggers",         # TDC edges decoded (decoder)
    "malformed_words",  # invalid/unknown words and trailing partial words (decoder)
    "events",           # pixel hits assigned to an event inside the window (decoder)
    "trigger_events",   # TDC1 rising edges numbered as events (decoder)
    "lost_triggers",    # gaps in the 12-bit TDC counter (decoder)
    "late_pixels",      # pixels too late to be assigned (decoder)
    "decoded_chunks",   # raw chunks decoded and passed on (decoder)
    "delivered",        # messages delivered to the caller/stream (collector)
    "idle_bytes",       # UDP payload bytes received while the acquisition gate was closed
    "roi_hits",         # events inside the region of interest (decoder, gated pipeline)
    "acq_t_start",      # detector time of the current acquisition's first word (fine units)
    "acq_t_last",       # newest detector time seen in the current acquisition (fine units)
)
MAX_WORKERS = 64
WORKER_COUNTERS = ("centroids", "chunks_in", "hits_in", "roi_centroids")
#: per-stage queue depth bookkeeping: messages sent into / taken out of a stage input.
MAX_STAGES = 8

# control slots (int64)
CTRL_DRAIN = 0      # 1: producers flush and send end-of-stream
CTRL_FORCE = 1      # 1: everybody exits now
CTRL_LONGTIME = 2   # 48-bit global time (25 ns ticks) set from outside, -1 none
CTRL_LONGTIME_GEN = 3
N_CTRL = 8


class SharedCounters:
    """Shared-memory counters of one controller/pipeline (inherited by forked stages)."""

    def __init__(self) -> None:
        self._n_glob = len(GLOBAL_COUNTERS)
        n = self._n_glob + MAX_WORKERS * len(WORKER_COUNTERS) + 2 * MAX_STAGES + N_CTRL
        self._raw = mp.RawArray(ctypes.c_int64, n)
        self.array = np.frombuffer(self._raw, dtype=np.int64)
        self._gi = {k: i for i, k in enumerate(GLOBAL_COUNTERS)}
        self._w0 = self._n_glob
        self._q0 = self._w0 + MAX_WORKERS * len(WORKER_COUNTERS)
        self._c0 = self._q0 + 2 * MAX_STAGES
        self.ctrl = self.array[self._c0:self._c0 + N_CTRL]
        self.ctrl[CTRL_LONGTIME] = -1

    def __getstate__(self):  # for spawn/forkserver: RawArray pickles by shared fd
        return {"_raw": self._raw}

    def __setstate__(self, state):
        raw = state["_raw"]
        self._n_glob = len(GLOBAL_COUNTERS)
        self._raw = raw
        self.array = np.frombuffer(raw, dtype=np.int64)
        self._gi = {k: i for i, k in enumerate(GLOBAL_COUNTERS)}
        self._w0 = self._n_glob
        self._q0 = self._w0 + MAX_WORKERS * len(WORKER_COUNTERS)
        self._c0 = self._q0 + 2 * MAX_STAGES
        self.ctrl = self.array[self._c0:self._c0 + N_CTRL]

    # -- writers (one process per slot) ---------------------------------------------------
    def index(self, name: str) -> int:
        return self._gi[name]

    def add(self, name: str, n: int) -> None:
        self.array[self._gi[name]] += n

    def set(self, name: str, value: int) -> None:
        self.array[self._gi[name]] = value

    def worker_add(self, worker: int, name: str, n: int) -> None:
        self.array[self._w0 + worker * len(WORKER_COUNTERS) + WORKER_COUNTERS.index(name)] += n

    def stage_sent(self, stage_slot: int, n: int = 1) -> None:
        """Producer side of a stage input: ``n`` messages put into stage ``stage_slot``."""
        self.array[self._q0 + 2 * stage_slot] += n

    def stage_taken(self, stage_slot: int, n: int = 1) -> None:
        self.array[self._q0 + 2 * stage_slot + 1] += n

    # -- readers ----------------------------------------------------------------------------
    def get(self, name: str) -> int:
        if name == "centroids":
            return self.worker_total("centroids")
        return int(self.array[self._gi[name]])

    def worker_total(self, name: str) -> int:
        k = WORKER_COUNTERS.index(name)
        block = self.array[self._w0:self._q0].reshape(MAX_WORKERS, len(WORKER_COUNTERS))
        return int(block[:, k].sum())

    def stage_sent_total(self, stage_slot: int) -> int:
        """Messages ever put into stage ``stage_slot`` (since the last reset)."""
        return int(self.array[self._q0 + 2 * stage_slot])

    def queue_depths(self, n_stages: int = MAX_STAGES) -> list[int]:
        q = self.array[self._q0:self._q0 + 2 * MAX_STAGES].reshape(MAX_STAGES, 2)
        return [int(max(0, q[i, 0] - q[i, 1])) for i in range(n_stages)]

    def snapshot(self) -> dict[str, Any]:
        """All counters as a dict of ints plus ``time`` (monotonic s)."""
        out: dict[str, Any] = {k: int(self.array[i]) for k, i in self._gi.items()}
        for k in WORKER_COUNTERS:
            out[k] = self.worker_total(k)
        out["time"] = time.monotonic()
        return out

    def reset(self) -> None:
        """Zero every counter (not the control slots, not rcvbuf_bytes)."""
        keep = self.array[self._gi["rcvbuf_bytes"]]
        self.array[:self._c0] = 0
        self.array[self._gi["rcvbuf_bytes"]] = keep


# ---- preview ------------------------------------------------------------------------------
N_TOF_BINS = 256


@numba.njit(cache=True)
def accumulate_preview(hitmap: np.ndarray, x: np.ndarray, y: np.ndarray,
                       tofhist: np.ndarray, tof: np.ndarray, tof_lo: int, tof_hi: int) -> None:
    """Add hits to a hit map (int32 [H, W], pixels) and ToFs (int64 fine units) to a
    histogram of ``len(tofhist)`` equal bins over ``[tof_lo, tof_hi)`` (fine units).

    Out-of-range coordinates/ToFs are ignored.
    """
    h, w = hitmap.shape
    for i in range(x.shape[0]):
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        if xi < w and yi < h:
            hitmap[yi, xi] += 1
    nb = tofhist.shape[0]
    span = tof_hi - tof_lo
    if span > 0:
        # bin = (d * nb) // span, via a float multiply and an exact integer correction
        # (a 64-bit division per event costs more than the rest of the loop)
        scale = nb / span
        for i in range(tof.shape[0]):
            d = tof[i] - tof_lo
            if d >= 0 and d < span:
                b = np.int64(d * scale)
                if b >= nb:
                    b = nb - 1
                if b * span > d * nb:
                    b -= 1
                elif (b + 1) * span <= d * nb:
                    b += 1
                tofhist[b] += 1.0


def tof_bins(event_window_s: tuple[float, float], n_bins: int = N_TOF_BINS) -> tuple[int, int, np.ndarray]:
    """ToF histogram range for an event window (s): (lo, hi) in 25/4096 ns units and the
    bin centres in ns. An unbounded window gets a 1 ms range."""
    from ..tpx3.units import UNIT_NS, s_to_units
    lo, hi = float(event_window_s[0]), float(event_window_s[1])
    if not np.isfinite(hi) or hi <= lo:
        hi = lo + 1e-3
    lo_u, hi_u = int(s_to_units(lo)), int(s_to_units(hi))
    step = (hi_u - lo_u) / n_bins
    return lo_u, hi_u, (lo_u + (np.arange(n_bins) + 0.5) * step) * UNIT_NS


class SharedPreview:
    """Rolling preview written by the decoder stage, read by the controller.

    The writer publishes one complete period at a time under a sequence lock (an int64
    generation counter, odd while writing) so readers never see a half-written frame.
    """

    def __init__(self, height: int = 256, width: int = 256, n_tof_bins: int = N_TOF_BINS) -> None:
        self.shape = (height, width)
        self.n_tof_bins = n_tof_bins
        self._map_raw = mp.RawArray(ctypes.c_int32, height * width)
        self._hist_raw = mp.RawArray(ctypes.c_double, 2 * n_tof_bins)   # hist, axis
        self._gen_raw = mp.RawArray(ctypes.c_int64, 2)                  # generation, n frames
        self._views()

    def _views(self) -> None:
        self.hitmap = np.frombuffer(self._map_raw, np.int32).reshape(self.shape)
        h = np.frombuffer(self._hist_raw, np.float64)
        self.tof_hist = h[:self.n_tof_bins]
        self.tof_axis_ns = h[self.n_tof_bins:]
        self.gen = np.frombuffer(self._gen_raw, np.int64)

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("shape", "n_tof_bins", "_map_raw", "_hist_raw", "_gen_raw")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._views()

    def publish(self, hitmap: np.ndarray, tof_hist: np.ndarray, tof_axis_ns: np.ndarray) -> None:
        """Writer: replace the published frame (hitmap int32 [H, W], histogram, axis in ns)."""
        self.gen[0] += 1
        self.hitmap[...] = hitmap
        self.tof_hist[...] = tof_hist
        self.tof_axis_ns[...] = tof_axis_ns
        self.gen[1] += 1
        self.gen[0] += 1

    def read(self, retries: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reader: copies of (hitmap int32 [H, W], tof_hist float64, tof_axis_ns float64)."""
        for _ in range(retries):
            g0 = int(self.gen[0])
            if g0 % 2 == 0:
                out = (self.hitmap.copy(), self.tof_hist.copy(), self.tof_axis_ns.copy())
                if int(self.gen[0]) == g0:
                    return out
            time.sleep(0.0005)
        return self.hitmap.copy(), self.tof_hist.copy(), self.tof_axis_ns.copy()

    @property
    def frames(self) -> int:
        """How many preview periods have been published."""
        return int(self.gen[1])

    def clear(self) -> None:
        self.publish(np.zeros(self.shape, np.int32), np.zeros(self.n_tof_bins), self.tof_axis_ns.copy())
