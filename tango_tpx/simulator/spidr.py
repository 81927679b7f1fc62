"""SPIDR/Timepix3 emulator: a deterministic, realistic word stream with its ground truth.

Physics model (all seeded from ``SimConfig.seed``):

* TDC1 rising edges (triggers) at ``trigger_hz``, the falling edge ``trigger_pulse_ns``
  later; optional TDC2 edges. As on real SPIDR captures the 12-bit trigger counter of a
  channel increments on *every* edge (rising n, falling n + 1, next rising n + 2) and wraps
  at 4096 (with ``falling_edges=False`` it steps by 1 per rising edge).
* After each trigger a Poisson number of particles: electrons (early, small clusters) and
  ions from the time-of-flight peaks ``tof_peaks_ns`` (centre, sigma, weight), imaged as
  rings (or uniformly). A particle is a cluster of 1..N pixels nearest to its sub-pixel
  centre, ToT falling from the centre (Gaussian profile), a few ns of time jitter and a
  time walk (low-ToT pixels later: ``timewalk_ns / ToT``). Per-particle draws use a
  splitmix64 generator inside the numba kernel, seeded from ``seed``.
* Clusters never overlap: a cluster (dilated by one pixel) is placed only where every
  pixel is idle, i.e. past the previous hit's ToT dead time plus ``min_separation_ns``; a
  rejected position is re-drawn, a particle that finds no room is dropped and counted
  (``SpidrSimulator.stats['dropped_particles']``).
* Noise hits (``noise_fraction`` of ``rate_mhits``) uniform in time and space.
* Global time: a 0x44/0x45 pair (each followed by a 0x71 control word as on real captures)
  at the start and every second after it, on every chip.

Word order follows the hardware: within each readout block (``readout_block_us``) the pixel
words are grouped by chip, then double column, then time, and spread over the block; TDC,
global-time and control words are inserted at their time. So the stream is locally (never
globally) time-sorted. A quad (2x2) stream is .tpx3-framed: chunks of at most
``payload_bytes`` (header included) per chip; TDC words come on chip 0.

Units: times int64 fine units of 25/4096 ns unless the name says ns/us/s; ToT counts of 25 ns.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import numba
import numpy as np

from ..tpx3 import encode as enc
from ..tpx3.files import RawFileWriter, Tpx3FileWriter, frame_tpx3, quad_to_frame
from ..tpx3.hits import PixelHits, Triggers, _SoA
from ..tpx3.units import FINE_PER_TICK, UNIT_NS

__all__ = ["SimConfig", "Particles", "Truth", "SpidrSimulator", "simulate"]

_NS = 1.0 / UNIT_NS  # fine units per ns (163.84)
_BIG = np.int64(1) << np.int64(62)
_MIN_TIME = 2 * FINE_PER_TICK  # earliest encodable pixel time (coarse >= 0) with margin


@dataclass(frozen=True)
class SimConfig:
    """Simulation parameters (units in the names; times relative to the detector clock start).

    rate_mhits: mean hit rate in Mhits/s including noise; duration_s: simulated time (s);
    seed: RNG seed (same seed -> same words); trigger_hz: TDC1 trigger rate (<= 0: no
    triggers, all hits are noise); quad: 2x2 chips, .tpx3-framed stream; tdc2: also emit TDC2;
    noise_fraction: share of noise hits; tof_peaks_ns: ion peaks (centre ns, sigma ns, weight);
    electron_fraction / electron_tof_ns (centre, sigma): electrons; cluster sizes in pixels
    (inclusive ranges); tot_peak_counts: range of the centre pixel's ToT (25 ns counts);
    cluster_sigma_px: width of the ToT profile; time_jitter_ns: per-pixel jitter (sigma;
    the spreads are near-Gaussian, Irwin-Hall, cut at 3.5 sigma);
    timewalk_ns: extra delay of a ToT = 1 pixel (ToT = n: timewalk_ns / n);
    min_separation_ns: time after a pixel's dead time before another cluster may touch it;
    image: 'rings' (one ring per ion peak, a blob of electrons) or 'uniform';
    start_time_s: detector time of the start (26.5 puts the 30-bit rollover 0.34 s in);
    payload_bytes: UDP datagram / .tpx3 chunk size (header included);
    trigger_pulse_ns: TDC1/TDC2 falling edge after the rising one (at most half a period);
    falling_edges: emit falling edges; first_trigger_counter: counter of the first edge;
    tdc2_delay_ns: TDC2 rising edge after TDC1's; control_words: 0x71 words after each
    global-time word; readout_block_us: hardware readout grouping; block_ms: detector time
    per block that :meth:`SpidrSimulator.iter_blocks` yields.

    Crowding: at a high rate per trigger (e.g. > ~10,000 hits per trigger on one chip) the
    clusters no longer fit without touching; the surplus particles are dropped and counted
    (``SpidrSimulator.stats['dropped_particles']``): raise ``trigger_hz`` for such rates.
    """

    rate_mhits: float = 1.0
    duration_s: float = 1.0
    seed: int = 0
    trigger_hz: float = 1000.0
    quad: bool = False
    tdc2: bool = False
    noise_fraction: float = 0.05
    tof_peaks_ns: tuple[tuple[float, float, float], ...] = (
        (1500.0, 12.0, 0.35), (2800.0, 16.0, 0.30), (4200.0, 20.0, 0.20), (6100.0, 25.0, 0.15))
    electron_fraction: float = 0.3
    electron_tof_ns: tuple[float, float] = (30.0, 2.0)
    electron_cluster_size: tuple[int, int] = (1, 4)
    ion_cluster_size: tuple[int, int] = (2, 12)
    tot_peak_counts: tuple[int, int] = (30, 250)
    cluster_sigma_px: float = 0.8
    time_jitter_ns: float = 1.5
    timewalk_ns: float = 40.0
    min_separation_ns: float = 500.0
    image: str = "rings"
    start_time_s: float = 0.0
    payload_bytes: int = 8192
    trigger_pulse_ns: float = 2000.0
    falling_edges: bool = True
    first_trigger_counter: int = 0
    tdc2_delay_ns: float = 700.0
    control_words: bool = True
    readout_block_us: float = 100.0
    block_ms: float = 10.0

    def validate(self) -> None:
        """Raise ValueError for an unusable configuration."""
        if not (self.rate_mhits >= 0 and math.isfinite(self.rate_mhits)):
            raise ValueError("rate_mhits must be >= 0")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ValueError("duration_s must be > 0")
        if not 0.0 <= self.noise_fraction <= 1.0:
            raise ValueError("noise_fraction must be in 0..1")
        if not 0.0 <= self.electron_fraction <= 1.0:
            raise ValueError("electron_fraction must be in 0..1")
        if self.start_time_s < 0 or self.start_time_s * 1e9 * _NS > 2.0**62:
            raise ValueError("start_time_s must be >= 0 and below the 48-bit clock range")
        if not (8 <= self.payload_bytes <= 65528 and self.payload_bytes % 8 == 0):
            raise ValueError("payload_bytes must be a multiple of 8 in 8..65528")
        if self.quad and self.payload_bytes < 16:
            raise ValueError("quad streams need payload_bytes >= 16 (chunk header + a word)")
        for lo, hi in (self.electron_cluster_size, self.ion_cluster_size):
            if not 1 <= lo <= hi <= 25:
                raise ValueError("cluster sizes must satisfy 1 <= min <= max <= 25 pixels")
        lo, hi = self.tot_peak_counts
        if not 1 <= lo <= hi <= 1023:
            raise ValueError("tot_peak_counts must satisfy 1 <= min <= max <= 1023")
        if self.electron_fraction < 1 and not self.tof_peaks_ns and self.trigger_hz > 0:
            raise ValueError("tof_peaks_ns is empty but electron_fraction < 1")
        if any(w < 0 or s < 0 for _, s, w in self.tof_peaks_ns):
            raise ValueError("tof peak sigmas and weights must be >= 0")
        if self.image not in ("rings", "uniform"):
            raise ValueError("image must be 'rings' or 'uniform'")
        if not 0 < self.readout_block_us <= 20_000:
            raise ValueError("readout_block_us must be in (0, 20000]")
        if not self.block_ms * 1e3 >= self.readout_block_us:
            raise ValueError("block_ms must be at least one readout block")
        if self.trigger_hz > 10e6:
            raise ValueError("trigger_hz above 10 MHz is not supported")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SimConfig":
        d = json.loads(text)
        for k in ("tof_peaks_ns",):
            d[k] = tuple(tuple(p) for p in d[k])
        for k in ("electron_tof_ns", "electron_cluster_size", "ion_cluster_size", "tot_peak_counts"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class Particles(_SoA):
    """Ground truth per particle (cluster), in generation order: by trigger, within a trigger
    electrons first, then the ion peaks in order of time of flight.

    trigger_nr: int64 global 0-based TDC1 trigger index; x, y: float64 ToT-weighted centroid
    of its pixels (pixels; quad frame for a quad); tof: int64 ToT-weighted mean of the pixel
    times minus the trigger time (25/4096 ns, rounded); tot_sum: uint32 / tot_max: uint16
    (ToT counts); n_hits: uint32; x_true, y_true: float64 generated centre (pixels);
    tof_true: int64 generated arrival time minus trigger time (before jitter and time walk);
    electron: bool species.
    """

    trigger_nr: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tof: np.ndarray
    tot_sum: np.ndarray
    tot_max: np.ndarray
    n_hits: np.ndarray
    x_true: np.ndarray
    y_true: np.ndarray
    tof_true: np.ndarray
    electron: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> "Particles":
        return cls(np.zeros(n, np.int64), np.zeros(n), np.zeros(n), np.zeros(n, np.int64),
                   np.zeros(n, np.uint32), np.zeros(n, np.uint16), np.zeros(n, np.uint32),
                   np.zeros(n), np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.bool_))


@dataclass
class Truth:
    """Ground truth of a simulated stream.

    particles: :class:`Particles`; hits: :class:`PixelHits` in word (stream) order, exactly as
    the decoder returns them (quad: frame coordinates and chip); triggers: :class:`Triggers`
    of every TDC word in stream order; trigger_nr: int64 per hit (-1 for noise); particle:
    int64 per hit (index into ``particles``, -1 for noise); trigger_time: int64 time of every
    TDC1 rising edge (index = trigger_nr); global_times: int64 25 ns ticks of each 0x44/0x45
    pair; n_control_words: number of 0x71 words.
    """

    particles: Particles
    hits: PixelHits
    triggers: Triggers
    trigger_nr: np.ndarray
    particle: np.ndarray
    trigger_time: np.ndarray
    global_times: np.ndarray
    n_control_words: int = 0

    @classmethod
    def empty(cls) -> "Truth":
        return cls(Particles.empty(), PixelHits.empty(), Triggers.empty(), np.zeros(0, np.int64),
                   np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)

    @classmethod
    def concat(cls, parts: list["Truth"]) -> "Truth":
        """Join consecutive parts (particle and trigger indices are already global)."""
        if not parts:
            return cls.empty()
        return cls(
            Particles.concat([p.particles for p in parts]),
            PixelHits.concat([p.hits for p in parts]),
            Triggers.concat([p.triggers for p in parts]),
            np.concatenate([p.trigger_nr for p in parts]),
            np.concatenate([p.particle for p in parts]),
            np.concatenate([p.trigger_time for p in parts]),
            np.concatenate([p.global_times for p in parts]),
            int(sum(p.n_control_words for p in parts)),
        )

    def save(self, path: str | Path, config: SimConfig | None = None) -> None:
        """Write as .npz: ``particles/<field>``, ``hits/<field>``, ``triggers/<field>`` and the per-hit arrays."""
        d: dict[str, np.ndarray] = {}
        for prefix, soa in (("particles", self.particles), ("hits", self.hits), ("triggers", self.triggers)):
            for k, v in soa.as_dict().items():
                d[f"{prefix}/{k}"] = v
        d["trigger_nr"] = self.trigger_nr
        d["particle"] = self.particle
        d["trigger_time"] = self.trigger_time
        d["global_times"] = self.global_times
        d["n_control_words"] = np.int64(self.n_control_words)
        if config is not None:
            d["config_json"] = np.array(config.to_json())
        with open(path, "xb") as f:
            np.savez(f, **d)

    @classmethod
    def load(cls, path: str | Path) -> "Truth":
        with np.load(path) as z:
            def soa(kind, prefix):
                return kind(**{f.name: z[f"{prefix}/{f.name}"] for f in fields(kind)})
            return cls(soa(Particles, "particles"), soa(PixelHits, "hits"), soa(Triggers, "triggers"),
                       z["trigger_nr"], z["particle"], z["trigger_time"], z["global_times"],
                       int(z["n_control_words"]))


# ---------------------------------------------------------------------------------------
# numba kernels


_GRID = 8  # sub-pixel cells per pixel for the neighbour-order table


def _neighbour_order() -> np.ndarray:
    """ORDER[i, j, r] = (dx, dy) of the r-th nearest pixel (5x5 around the nearest one) to a
    centre at sub-pixel cell (i, j), i.e. offset ((i + 0.5) / G - 0.5, (j + 0.5) / G - 0.5)."""
    d = np.arange(-2, 3)
    dx, dy = (a.ravel() for a in np.meshgrid(d, d, indexing="ij"))
    out = np.empty((_GRID, _GRID, 25, 2), np.int64)
    for i in range(_GRID):
        for j in range(_GRID):
            fx = (i + 0.5) / _GRID - 0.5
            fy = (j + 0.5) / _GRID - 0.5
            o = np.lexsort((dy, dx, (dx - fx) ** 2 + (dy - fy) ** 2))
            out[i, j, :, 0] = dx[o]
            out[i, j, :, 1] = dy[o]
    return out


_ORDER = _neighbour_order()
#: cos/sin of 2*pi*i/4096 (ring positions: the angle is quantised to 0.09 degrees)
_N_ANGLE = 4096
_SINCOS = np.stack([np.cos(2 * np.pi * np.arange(_N_ANGLE) / _N_ANGLE),
                    np.sin(2 * np.pi * np.arange(_N_ANGLE) / _N_ANGLE)], axis=1)
#: exp(-d2 / 2) sampled every 1/256 of d2 up to 64 (ToT profile of a cluster, d2 in sigma^2)
_EXP_STEP = 256
_EXP = np.exp(-0.5 * np.arange(64 * _EXP_STEP + 1) / _EXP_STEP)


# rows of the hit table H (int64, shape (N_ROWS, n)): toa (fine units, pixel-representable);
# PACK = chip-local x | y << 8 | ToT << 16 | chip << 26 (all the words need); for the truth
# only: frame x, y (= local x, y for a single chip), global trigger number and global
# particle number (-1 for noise)
R_TOA, R_PACK, R_XF, R_YF, R_TRIG, R_PART = range(6)
N_ROWS = 6


@numba.njit(cache=True, inline="always")
def _frame_to_local(X, Y, quad):
    if not quad:
        return X, Y, 0
    if X >= 258:
        if Y >= 258:
            return X - 258, 513 - Y, 0
        return 513 - X, Y, 1
    if Y >= 258:
        return X, 513 - Y, 3
    return 255 - X, Y, 2


@numba.njit(cache=True, inline="always")
def _rand_u64(state):
    """splitmix64 step: advances state[0], returns 64 random bits (uint64)."""
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _rand(state):
    """Uniform float64 in [0, 1)."""
    return np.float64(_rand_u64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, inline="always")
def _randn(state):
    """Approximately standard normal: Irwin-Hall sum of four 16-bit uniforms (tails cut at 3.46)."""
    z = _rand_u64(state)
    m = np.uint64(0xFFFF)
    s4 = np.float64((z & m) + ((z >> np.uint64(16)) & m) + ((z >> np.uint64(32)) & m) + (z >> np.uint64(48)))
    return (s4 * (1.0 / 65536.0) - 2.0) * 1.7320508075688772


@numba.njit(cache=True, error_model="numpy")
def _gen_particles(state, trig_t, trig_k, n_per, e_frac, e_tof_u, e_sig_u, e_lo, e_hi, e_ring_w,
                   pk_tof_u, pk_sig_u, pk_cum, pk_ring_r, pk_ring_w, i_lo, i_hi, tot_lo, tot_hi,
                   size, cen, quad, busy, order, sincos, exptab, sigma_px, jitter_u, walk_u, sep_u, min_toa,
                   max_tries, uniform_only, part_base, full, H, h0,
                   p_trig, p_tof, p_cx, p_cy, p_e, p_acc):
    """Generate the particles of the given triggers and place them as non-overlapping clusters.

    Per trigger (time trig_t, global number trig_k, n_per particles): species, time of flight,
    size, centre ToT; then species by species (electrons first, then the ion peaks by time of
    flight) each particle takes the first candidate position
    (ring, then uniform; up to max_tries each) whose footprint and 8 neighbours are idle in
    ``busy`` (int64 [x, y], fine units; updated with dead time + sep_u). Hits go to H columns
    h0.. (rows R_*; with full=False only the rows the words need), accepted particles are
    numbered from part_base. The per-particle outputs
    p_* are filled for every particle (p_acc False when it found no room).
    Returns the column after the last hit written.
    """
    nh = h0
    g = order.shape[0]
    inv_s2 = 256.0 / (sigma_px * sigma_px)  # d2 -> index into exptab
    n_exp = exptab.shape[0] - 1
    n_ang = sincos.shape[0]
    walk = np.empty(1024, np.float64)  # time walk (fine units) per ToT
    walk[0] = walk_u
    for tt in range(1, 1024):
        walk[tt] = walk_u / tt
    n_acc = 0
    n_pk = pk_tof_u.shape[0]
    maxn = 0
    for k in range(n_per.shape[0]):
        maxn = max(maxn, n_per[k])
    tmp_t = np.empty(maxn, np.int64)
    tmp_sp = np.empty(maxn, np.int64)
    tmp_n = np.empty(maxn, np.int64)
    tmp_pk = np.empty(maxn, np.float64)
    srt = np.empty(maxn, np.int64)
    cnt = np.zeros(n_pk + 2, np.int64)
    # rank of each species (index sp + 1, electrons sp = -1 first) by mean time of flight
    pk_rank = np.empty(n_pk + 1, np.int64)
    pk_rank[0] = 0
    po = np.argsort(pk_tof_u)
    for r in range(n_pk):
        pk_rank[po[r] + 1] = r + 1
    pi = 0
    for k in range(n_per.shape[0]):
        m = n_per[k]
        for j in range(m):
            if n_pk == 0 or _rand(state) < e_frac:
                sp = -1
                tof = e_tof_u + e_sig_u * _randn(state)
                n = e_lo + int(_rand(state) * (e_hi - e_lo + 1))
            else:
                u = _rand(state)
                sp = 0
                while sp < n_pk - 1 and u >= pk_cum[sp]:
                    sp += 1
                tof = pk_tof_u[sp] + pk_sig_u[sp] * _randn(state)
                n = i_lo + int(_rand(state) * (i_hi - i_lo + 1))
            tmp_t[j] = trig_t[k] + np.int64(np.floor(tof + 0.5))
            tmp_sp[j] = sp
            tmp_n[j] = n
            tmp_pk[j] = tot_lo + (tot_hi - tot_lo) * _rand(state)
        # process in species order (electrons, then the peaks by time of flight): the time
        # order that matters for the dead-time check, without a sort
        cnt.fill(0)
        for j in range(m):
            cnt[pk_rank[tmp_sp[j] + 1] + 1] += 1
        for r in range(n_pk + 1):
            cnt[r + 1] += cnt[r]
        for j in range(m):
            r = pk_rank[tmp_sp[j] + 1]
            srt[cnt[r]] = j
            cnt[r] += 1
        for jj in range(m):
            j = srt[jj]
            t = tmp_t[j]
            n = tmp_n[j]
            sp = tmp_sp[j]
            if sp < 0:
                rr = 0.0
                rw = e_ring_w
            else:
                rr = pk_ring_r[sp]
                rw = pk_ring_w[sp]
            p_trig[pi] = trig_k[k]
            p_tof[pi] = t - trig_t[k]
            p_e[pi] = sp < 0
            p_acc[pi] = False
            for attempt in range(2 * max_tries):
                if attempt < max_tries and not uniform_only:
                    r = rr + rw * _randn(state)
                    a = int(_rand(state) * n_ang)
                    cx = cen + r * sincos[a, 0]
                    cy = cen + r * sincos[a, 1]
                else:
                    cx = _rand(state) * size - 0.5
                    cy = _rand(state) * size - 0.5
                fx = np.floor(cx + 0.5)
                fy = np.floor(cy + 0.5)
                ix = int(fx)
                iy = int(fy)
                ci = min(max(int((cx - fx + 0.5) * g), 0), g - 1)
                cj = min(max(int((cy - fy + 0.5) * g), 0), g - 1)
                # bounding box of the footprint
                x0 = 1 << 30
                x1 = -(1 << 30)
                y0 = 1 << 30
                y1 = -(1 << 30)
                for q in range(n):
                    px = ix + order[ci, cj, q, 0]
                    py = iy + order[ci, cj, q, 1]
                    x0 = min(x0, px)
                    x1 = max(x1, px)
                    y0 = min(y0, py)
                    y1 = max(y1, py)
                if x0 < 0 or y0 < 0 or x1 >= size or y1 >= size:
                    continue
                # every pixel of the footprint and its 8 neighbours must be idle at t
                ok = True
                for ax in range(max(x0 - 1, 0), min(x1 + 2, size)):
                    for ay in range(max(y0 - 1, 0), min(y1 + 2, size)):
                        if busy[ax, ay] > t:
                            ok = False
                            break
                    if not ok:
                        break
                if not ok:
                    continue
                p_acc[pi] = True
                p_cx[pi] = cx
                p_cy[pi] = cy
                gp = part_base + n_acc
                n_acc += 1
                for q in range(n):
                    px = ix + order[ci, cj, q, 0]
                    py = iy + order[ci, cj, q, 1]
                    dd = (px - cx) * (px - cx) + (py - cy) * (py - cy)
                    e = int(dd * inv_s2 + 0.5)
                    tot = int(tmp_pk[j] * exptab[min(e, n_exp)] + 0.5)
                    if tot < 1:
                        tot = 1
                    elif tot > 1023:
                        tot = 1023
                    dt = jitter_u * _randn(state) + walk[tot]
                    toa = t + np.int64(np.floor(dt + 0.5))
                    if toa < min_toa:
                        toa = min_toa
                    toa -= toa & 255  # pixel-representable (1.5625 ns steps)
                    lx, ly, lc = _frame_to_local(px, py, quad)
                    H[R_TOA, nh] = toa
                    H[R_PACK, nh] = lx | (ly << 8) | (tot << 16) | (lc << 26)
                    if full:
                        H[R_XF, nh] = px
                        H[R_YF, nh] = py
                        H[R_TRIG, nh] = trig_k[k]
                        H[R_PART, nh] = gp
                    nh += 1
                    b = toa + np.int64(tot) * 4096 + sep_u
                    if b > busy[px, py]:
                        busy[px, py] = b
                break
            pi += 1
    return nh


@numba.njit(cache=True, error_model="numpy")
def _emit(H, n, limit, c0, block_u, n_chips, want_perm):
    """Select the hits among the first n columns of H with toa < limit and put them in
    hardware readout order: by (readout block, chip, double column, time); encode their words.

    Returns (perm: columns of H in stream order (empty unless want_perm), keys: composite
    stream keys (sorted), words: uint64 pixel words, chips: chip of each word, carry: columns
    with toa >= limit). The key spreads a (block, chip) group's pixels evenly over the
    block, so other words can be inserted at their time:
    key = ((group << 32 | offset in block) << 1) | 1.
    """
    toa_row = H[R_TOA]
    pr = H[R_PACK]
    bucket = np.empty(n, np.int64)
    ne = 0
    maxb = -1
    inv_b = 1.0 / block_u
    for i in range(n):
        t = toa_row[i]
        if t < limit:
            ne += 1
            dt = t - c0
            lb = 0
            if dt > 0:  # dt // block_u without an integer division
                lb = int(dt * inv_b)
                if lb * block_u > dt:
                    lb -= 1
                elif (lb + 1) * block_u <= dt:
                    lb += 1
            pk = pr[i]
            b = (lb * n_chips + (pk >> 26)) * 128 + ((pk & 0xFF) >> 1)
            bucket[i] = b
            if b > maxb:
                maxb = b
        else:
            bucket[i] = -1
    nb = (maxb // 128 + 1) * 128 if maxb >= 0 else 0
    start = np.zeros(nb + 1, np.int64)
    carry = np.empty(n - ne, np.int64)
    nc = 0
    for i in range(n):
        b = bucket[i]
        if b >= 0:
            start[b + 1] += 1
        else:
            carry[nc] = i
            nc += 1
    for b in range(nb):
        start[b + 1] += start[b]
    fill = start[:nb].copy()
    perm = np.empty(ne if want_perm else 0, np.int64)
    srt = np.empty((ne, 2), np.int64)  # (toa, x | y << 8 | tot << 16 | chip << 26), one cache line
    for i in range(n):
        b = bucket[i]
        if b >= 0:
            o = fill[b]
            fill[b] += 1
            if want_perm:
                perm[o] = i
            srt[o, 0] = toa_row[i]
            srt[o, 1] = pr[i]
    # insertion sort by time within each bucket (buckets are small, mostly in order already)
    for b in range(nb):
        lo = start[b]
        hi = start[b + 1]
        for a in range(lo + 1, hi):
            tv = srt[a, 0]
            if srt[a - 1, 0] <= tv:
                continue
            kv = srt[a, 1]
            pv = perm[a] if want_perm else 0
            c = a - 1
            while c >= lo and srt[c, 0] > tv:
                srt[c + 1, 0] = srt[c, 0]
                srt[c + 1, 1] = srt[c, 1]
                if want_perm:
                    perm[c + 1] = perm[c]
                c -= 1
            srt[c + 1, 0] = tv
            srt[c + 1, 1] = kv
            if want_perm:
                perm[c + 1] = pv
    # keys: rank within the (block, chip) group = 128 consecutive buckets
    keys = np.empty(ne, np.int64)
    for grp in range(nb // 128):
        g0 = start[grp * 128]
        g1 = start[grp * 128 + 128]
        cnt = g1 - g0
        step = block_u / cnt if cnt else 0.0
        for r in range(cnt):
            k = min(int((r + 0.5) * step), block_u - 1)  # evenly spread, increasing in r
            keys[g0 + r] = (((grp << 32) | k) << 1) | 1
    # words (the encoder's bit layout, see tango_tpx.tpx3.encode.encode_pixels)
    words = np.empty(ne, np.uint64)
    chips = np.empty(ne, np.int64)
    for o in range(ne):
        pk = srt[o, 1]
        xi = pk & 0xFF
        yi = (pk >> 8) & 0xFF
        tot = (pk >> 16) & 0x3FF
        chips[o] = pk >> 26
        m = srt[o, 0] >> 8
        k = (xi >> 1) & 15
        if k == 0:
            k = 16
        ftoa = (k - m) & 15
        cc = ((m + ftoa - k) >> 4) & 0x3FFFFFFF
        pix = ((xi & 1) << 2) | (yi & 3)
        w = (np.int64(0xB) << 60) | ((xi & 0xFE) << 52) | ((yi & 0xFC) << 45) | (pix << 44) \
            | ((cc & 0x3FFF) << 30) | (tot << 20) | (ftoa << 16) | (cc >> 14)
        words[o] = np.uint64(w)
    return perm, keys, words, chips, carry


@numba.njit(cache=True)
def _chunk_starts(framed):
    """Word index of every chunk header in a .tpx3-framed array (plus the end)."""
    n = framed.shape[0]
    starts = np.empty(n + 1, np.int64)
    m = 0
    i = 0
    while i < n:
        starts[m] = i
        m += 1
        i += 1 + np.int64((framed[i] >> np.uint64(48)) & np.uint64(0xFFFF)) // 8
    starts[m] = min(i, n)
    return starts[: m + 1]


# ---------------------------------------------------------------------------------------


class SpidrSimulator:
    """Streaming SPIDR emulator. ``iter_blocks()`` yields the word stream block by block in
    bounded memory; ``simulate()`` / ``write_file()`` / ``send_udp()`` build on it.

    ``stats`` (after a run): hits, noise_hits, particles, dropped_particles, triggers
    (TDC1 rising edges), tdc_words, words, blocks.
    """

    #: tries per particle in its ring before falling back to uniform positions (as many again)
    MAX_TRIES = 12

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.config.validate()
        self.stats: dict[str, int] = {}

    # -- derived constants ---------------------------------------------------------------
    @property
    def n_chips(self) -> int:
        return 4 if self.config.quad else 1

    @property
    def frame_size(self) -> int:
        return 516 if self.config.quad else 256

    def _mean_cluster_size(self) -> float:
        c = self.config
        e = 0.5 * sum(c.electron_cluster_size)
        i = 0.5 * sum(c.ion_cluster_size)
        return c.electron_fraction * e + (1 - c.electron_fraction) * i

    # -- main generator ------------------------------------------------------------------
    def iter_blocks(self) -> Iterator[np.ndarray]:
        """Yield uint64 word arrays in stream order, about ``block_ms`` of detector time each."""
        for words, _ in self._generate(with_truth=False):
            yield words

    def iter_blocks_with_truth(self) -> Iterator[tuple[np.ndarray, Truth]]:
        """Like :meth:`iter_blocks`, with the :class:`Truth` of each block."""
        yield from self._generate(with_truth=True)

    def simulate(self) -> tuple[np.ndarray, Truth]:
        """The whole stream and its truth in memory (for tests and small runs)."""
        ws, ts = [], []
        for w, t in self._generate(with_truth=True):
            ws.append(w)
            ts.append(t)
        words = np.concatenate(ws) if ws else np.zeros(0, np.uint64)
        return words, Truth.concat(ts)

    def _generate(self, with_truth: bool) -> Iterator[tuple[np.ndarray, Truth | None]]:
        c = self.config
        rng = np.random.Generator(np.random.PCG64(c.seed))
        S = self.frame_size
        nchips = self.n_chips
        start_u = int(round(c.start_time_s * 1e9 * _NS))
        end_u = start_u + int(round(c.duration_s * 1e9 * _NS))
        chunk_u = max(1, int(round(c.block_ms * 1e6 * _NS)))
        block_u = max(1, int(round(c.readout_block_us * 1e3 * _NS)))
        sec_u = int(round(1e9 * _NS))

        # occupancy map; gaps and the unused border of the quad frame never take clusters
        busy = np.full((S, S), -_BIG, np.int64)
        if c.quad:
            for lo, hi in ((256, 258), (514, 516)):
                busy[lo:hi, :] = _BIG
                busy[:, lo:hi] = _BIG

        # triggers
        has_trig = c.trigger_hz > 0
        period_u = (1e9 / c.trigger_hz) * _NS if has_trig else 0.0
        first_u = start_u + int(round(min(0.5 * period_u, 20e3 * _NS))) if has_trig else 0
        pulse_u = int(round(min(c.trigger_pulse_ns * _NS, 0.5 * period_u))) if has_trig else 0
        tdc2_delay_u = int(round(c.tdc2_delay_ns * _NS))
        signal_hits_per_trig = (c.rate_mhits * 1e6 * (1 - c.noise_fraction) / c.trigger_hz) if has_trig else 0.0
        mu_particles = signal_hits_per_trig / self._mean_cluster_size()
        noise_rate = c.rate_mhits * 1e6 * (c.noise_fraction if has_trig else 1.0)  # hits/s

        peaks = np.array([p for p in c.tof_peaks_ns], np.float64).reshape(-1, 3)
        if len(peaks):
            pw = peaks[:, 2] / peaks[:, 2].sum() if peaks[:, 2].sum() > 0 else np.full(len(peaks), 1 / len(peaks))
        cen = (S - 1) / 2.0
        ring_r = S * (0.1 + 0.08 * np.arange(len(peaks)))
        pk_tof_u = peaks[:, 0] * _NS
        pk_sig_u = peaks[:, 1] * _NS
        pk_cum = np.cumsum(pw) if len(peaks) else np.zeros(0)
        e_lo, e_hi = c.electron_cluster_size
        i_lo, i_hi = c.ion_cluster_size
        kstate = np.array([rng.integers(0, 2**63)], np.uint64)  # the kernel's RNG state
        ring_w = np.full(len(peaks), 0.04 * S)
        e_ring_w = 0.15 * S  # electrons: a blob around the centre

        pend = np.zeros((N_ROWS, 0), np.int64)  # hits generated, not emitted yet
        hbuf = np.empty((N_ROWS, 0), np.int64)
        pend_tdc = {k: np.zeros(0, np.int64) for k in ("time", "channel", "rising", "counter")}
        stats = dict(hits=0, noise_hits=0, particles=0, dropped_particles=0, triggers=0,
                     tdc_words=0, words=0, blocks=0, global_pairs=0)
        self.stats = stats
        n_particles_total = 0
        trig_counter = {1: c.first_trigger_counter, 2: c.first_trigger_counter}
        step = 2 if c.falling_edges else 1
        k_next = 0  # next TDC1 trigger index
        hb_next = 0  # next global-time pair index

        c0 = start_u
        while c0 < end_u:
            c1 = min(c0 + chunk_u, end_u)
            final = c1 >= end_u
            emit_limit = np.iinfo(np.int64).max if final else c1

            # ---- triggers in [c0, c1)
            trig_t = np.zeros(0, np.int64)
            trig_k = np.zeros(0, np.int64)
            if has_trig:
                # first k with first_u + round(k * period) >= c1
                k_hi = max(k_next, int(math.ceil((c1 - first_u) / period_u)) - 1)
                while first_u + int(round(k_hi * period_u)) < c1:
                    k_hi += 1
                trig_k = np.arange(k_next, k_hi, dtype=np.int64)
                trig_t = enc.quantize_tdc_time(first_u + np.rint(trig_k * period_u).astype(np.int64))
                k_next = k_hi
            n_trig = len(trig_k)
            # TDC1 edges (counter increments per edge)
            e_time, e_ch, e_rise, e_cnt = [pend_tdc[k] for k in ("time", "channel", "rising", "counter")]
            if n_trig:
                cnt0 = trig_counter[1]
                cnt = cnt0 + step * np.arange(n_trig, dtype=np.int64)
                trig_counter[1] = cnt0 + step * n_trig
                add_t = [trig_t]
                add_r = [np.ones(n_trig, np.int64)]
                add_c = [cnt]
                if c.falling_edges:
                    add_t.append(enc.quantize_tdc_time(trig_t + pulse_u))
                    add_r.append(np.zeros(n_trig, np.int64))
                    add_c.append(cnt + 1)
                t_new = np.concatenate(add_t)
                e_time = np.concatenate([e_time, t_new])
                e_ch = np.concatenate([e_ch, np.ones(len(t_new), np.int64)])
                e_rise = np.concatenate([e_rise, *add_r])
                e_cnt = np.concatenate([e_cnt, *add_c])
                if c.tdc2:
                    t2 = enc.quantize_tdc_time(trig_t + tdc2_delay_u)
                    cnt2 = trig_counter[2] + step * np.arange(n_trig, dtype=np.int64)
                    trig_counter[2] += step * n_trig
                    t2s = [t2]
                    r2s = [np.ones(n_trig, np.int64)]
                    c2s = [cnt2]
                    if c.falling_edges:
                        t2s.append(enc.quantize_tdc_time(t2 + pulse_u))
                        r2s.append(np.zeros(n_trig, np.int64))
                        c2s.append(cnt2 + 1)
                    t2n = np.concatenate(t2s)
                    e_time = np.concatenate([e_time, t2n])
                    e_ch = np.concatenate([e_ch, np.full(len(t2n), 2, np.int64)])
                    e_rise = np.concatenate([e_rise, *r2s])
                    e_cnt = np.concatenate([e_cnt, *c2s])
            stats["triggers"] += n_trig

            # ---- particles of these triggers (drawn in the kernel below)
            n_per = rng.poisson(mu_particles, n_trig).astype(np.int64) if n_trig else np.zeros(0, np.int64)
            npart = int(n_per.sum())
            nmax = npart * max(c.electron_cluster_size[1], c.ion_cluster_size[1])

            # ---- noise hits in [c0, c1)
            lo = max(c0, _MIN_TIME)
            n_noise = int(rng.poisson(noise_rate * (c1 - c0) * UNIT_NS * 1e-9)) if c1 > lo else 0
            stats["noise_hits"] += n_noise

            # hit table: pending | noise | particle hits
            n_pend = pend.shape[1]
            need = n_pend + n_noise + nmax
            if hbuf.shape[1] < need:  # reused between blocks (no fresh pages every block)
                hbuf = np.empty((N_ROWS, max(need, 2 * hbuf.shape[1])), np.int64)
            H = hbuf
            H[:, :n_pend] = pend
            q = slice(n_pend, n_pend + n_noise)
            if n_noise:
                # time-sorted (cache-friendly readout sort); positions are independent of time
                H[R_TOA, q] = np.maximum(enc.quantize_pixel_toa(np.sort(rng.integers(lo, c1, n_noise))),
                                         enc.quantize_pixel_toa(lo + 255))
                nch = rng.integers(0, nchips, n_noise) if nchips > 1 else np.zeros(n_noise, np.int64)
                nx = rng.integers(0, 256, n_noise)
                ny = rng.integers(0, 256, n_noise)
                H[R_PACK, q] = nx | (ny << 8) | (rng.integers(1, 21, n_noise) << 16) | (nch << 26)
                if c.quad:
                    H[R_XF, q], H[R_YF, q] = quad_to_frame(nx, ny, nch)
                else:
                    H[R_XF, q] = nx
                    H[R_YF, q] = ny
                H[R_TRIG, q] = -1
                H[R_PART, q] = -1

            # particle hits
            p_trig = np.empty(npart, np.int64)
            p_tof = np.empty(npart, np.int64)
            p_cx = np.empty(npart, np.float64)
            p_cy = np.empty(npart, np.float64)
            p_e = np.empty(npart, np.bool_)
            acc = np.empty(npart, np.bool_)
            h0 = n_pend + n_noise
            h1 = _gen_particles(
                kstate, trig_t, trig_k, n_per, c.electron_fraction if len(peaks) else 1.0,
                c.electron_tof_ns[0] * _NS, c.electron_tof_ns[1] * _NS, e_lo, e_hi, e_ring_w,
                pk_tof_u, pk_sig_u, pk_cum, ring_r, ring_w, i_lo, i_hi,
                float(c.tot_peak_counts[0]), float(c.tot_peak_counts[1]),
                S, cen, c.quad, busy, _ORDER, _SINCOS, _EXP, c.cluster_sigma_px, c.time_jitter_ns * _NS, c.timewalk_ns * _NS,
                int(c.min_separation_ns * _NS), _MIN_TIME, self.MAX_TRIES, c.image == "uniform",
                n_particles_total, with_truth, H, h0, p_trig, p_tof, p_cx, p_cy, p_e, acc)
            n_acc = int(acc.sum())
            stats["particles"] += n_acc
            stats["dropped_particles"] += npart - n_acc
            particles = None
            if with_truth:
                particles = self._particle_table(H[:, h0:h1], n_particles_total, acc, p_cx, p_cy, p_trig, p_tof, p_e,
                                                 trig_k, trig_t)
            n_particles_total += n_acc

            # ---- emit
            perm, pkeys, pwords, pchips, carry = _emit(H, h1, emit_limit, c0, block_u, nchips, with_truth)
            pend = H[:, carry]
            tm = e_time < emit_limit
            pend_tdc = {"time": e_time[~tm], "channel": e_ch[~tm], "rising": e_rise[~tm], "counter": e_cnt[~tm]}
            o_time, o_ch, o_rise, o_cnt = e_time[tm], e_ch[tm], e_rise[tm], e_cnt[tm]
            # global-time pairs at start + n seconds within [c0, c1)
            hb_times = []
            while start_u + hb_next * sec_u < c1:
                hb_times.append(start_u + hb_next * sec_u)
                hb_next += 1
            hb_ticks = np.array(hb_times, np.int64) >> 12

            words, chips_out, trig_order = self._assemble(
                pwords, pkeys, pchips if c.quad else None, o_time, o_ch, o_rise, o_cnt, hb_ticks, c0, block_u, nchips)
            if c.quad:
                words = frame_tpx3(words, chips_out, c.payload_bytes - 8)

            stats["hits"] += len(pwords)
            stats["tdc_words"] += len(o_time)
            stats["global_pairs"] += len(hb_ticks)
            stats["words"] += len(words)
            stats["blocks"] += 1
            truth = None
            if with_truth:
                he = H[:, perm]
                hits = PixelHits(he[R_XF].astype(np.uint16), he[R_YF].astype(np.uint16), he[R_TOA],
                                 ((he[R_PACK] >> 16) & 0x3FF).astype(np.uint16), (he[R_PACK] >> 26).astype(np.uint8))
                trigs = Triggers(o_ch[trig_order].astype(np.uint8), o_rise[trig_order].astype(bool),
                                 o_time[trig_order], (o_cnt[trig_order] & 0xFFF).astype(np.uint16),
                                 np.zeros(len(trig_order), np.uint8))
                truth = Truth(particles, hits, trigs, he[R_TRIG].copy(), he[R_PART].copy(), trig_t,
                              hb_ticks, (2 * len(hb_ticks) * nchips) if c.control_words else 0)
            yield words, truth
            c0 = c1

    @staticmethod
    def _particle_table(Hp, base, acc, p_cx, p_cy, p_trig, p_tof, p_e, trig_k, trig_t) -> Particles:
        """Ground-truth rows of the accepted particles of one chunk from their hits ``Hp``
        (ToT-weighted pixel statistics; ``base``: global number of the first one)."""
        n_acc = int(acc.sum())
        part = Hp[R_PART] - base
        tot = (Hp[R_PACK] >> 16) & 0x3FF
        w = tot.astype(np.float64)
        tsum = np.bincount(part, weights=w, minlength=n_acc)
        x = np.bincount(part, weights=w * Hp[R_XF], minlength=n_acc) / np.maximum(tsum, 1)
        y = np.bincount(part, weights=w * Hp[R_YF], minlength=n_acc) / np.maximum(tsum, 1)
        tof_h = Hp[R_TOA] - trig_t[np.searchsorted(trig_k, Hp[R_TRIG])] if len(part) else np.zeros(0, np.int64)
        # exact integer weighted mean of the tof: sum(tof * tot) / sum(tot), rounded half up
        num = np.zeros(n_acc, np.int64)
        np.add.at(num, part, tof_h * tot)
        itot = np.zeros(n_acc, np.int64)
        np.add.at(itot, part, tot)
        tmax = np.zeros(n_acc, np.int64)
        np.maximum.at(tmax, part, tot)
        tof = np.floor_divide(2 * num + itot, 2 * np.maximum(itot, 1))
        return Particles(
            trigger_nr=p_trig[acc], x=x, y=y, tof=tof,
            tot_sum=itot.astype(np.uint32), tot_max=tmax.astype(np.uint16),
            n_hits=np.bincount(part, minlength=n_acc).astype(np.uint32), x_true=p_cx[acc], y_true=p_cy[acc],
            tof_true=p_tof[acc], electron=p_e[acc])

    def _assemble(self, pwords, pkeys, pchip, o_time, o_ch, o_rise, o_cnt, hb_ticks, c0, block_u, nchips):
        """Insert the TDC, global-time and control words among the ordered pixel words at their time.

        Returns (words, chip per word or None for a single chip, TDC order for the truth).
        """
        c = self.config
        # other words: TDC (chip 0) and, per chip, global-time pair + control words
        o_words = [enc.encode_tdc(np.where(o_ch == 1, 1, 2), o_rise.astype(bool), o_time, o_cnt)]
        o_t = [o_time]
        o_chip = [np.zeros(len(o_time), np.int64)]
        o_seq = [np.zeros(len(o_time), np.int64)]
        o_is_tdc = [np.arange(len(o_time), dtype=np.int64)]
        if len(hb_ticks):
            lsb, msb = enc.encode_global_time(hb_ticks)
            if c.control_words:
                c44 = enc.encode_control(0x44, hb_ticks, 0x1C6B)
                c45 = enc.encode_control(0x45, hb_ticks, 0x1C6B)
                group = np.stack([lsb, c44, msb, c45], axis=1)
            else:
                group = np.stack([lsb, msb], axis=1)
            per = group.shape[1]
            for chip in range(nchips):
                o_words.append(group.ravel())
                o_t.append(np.repeat(hb_ticks << 12, per))
                o_chip.append(np.full(group.size, chip, np.int64))
                o_seq.append(np.tile(np.arange(1, per + 1), len(hb_ticks)))  # TDC words first on ties... then pair order
                o_is_tdc.append(np.full(group.size, -1, np.int64))
        ow = np.concatenate(o_words)
        ot = np.concatenate(o_t)
        och = np.concatenate(o_chip)
        oseq = np.concatenate(o_seq)
        otdc = np.concatenate(o_is_tdc)
        olb = np.maximum(0, (ot - c0) // block_u)
        within = ot - c0 - olb * block_u
        within = np.clip(within, 0, block_u - 1)
        okeys = (((olb * nchips + och) << 32) | within) << 1
        oo = np.lexsort((oseq, okeys))
        ow, okeys, och, otdc = ow[oo], okeys[oo], och[oo], otdc[oo]
        pos = np.searchsorted(pkeys, okeys, side="left")
        words = np.insert(pwords, pos, ow)
        chips = np.insert(pchip, pos, och) if pchip is not None else None
        trig_order = otdc[otdc >= 0]
        return words, chips, trig_order

    # -- outputs -------------------------------------------------------------------------
    def write_file(self, path: str | Path, truth_path: str | Path | None = None,
                   time_ns: int | None = None) -> dict:
        """Write the stream to ``path``: '.raw' (pymepix, 8-byte header; single chip only) or
        '.tpx3' (ASI chunks; quad streams are chunked per chip). ``truth_path``: also save the
        truth as .npz (held in memory until the end). Refuses existing files
        (FileExistsError). Returns a summary dict (hits, triggers, words, bytes)."""
        p = Path(path)
        ext = p.suffix.lower()
        c = self.config
        if ext not in (".raw", ".tpx3"):
            raise ValueError(f"{p}: output must end in .raw or .tpx3")
        if ext == ".raw" and c.quad:
            raise ValueError(f"{p}: a quad stream needs chip numbers: write a .tpx3 file, not .raw")
        if truth_path is not None and Path(truth_path).exists():
            raise FileExistsError(f"{truth_path}: truth file exists")
        truths: list[Truth] = []
        if ext == ".raw":
            writer = RawFileWriter(p, time_ns=time_ns)
        else:
            writer = Tpx3FileWriter(p)
        try:
            for words, truth in self._generate(with_truth=truth_path is not None):
                if ext == ".raw":
                    writer.write(words)
                elif c.quad:
                    writer.write_framed(words)
                else:
                    writer.write_chip(0, words, chunk_bytes=c.payload_bytes - 8 if c.payload_bytes > 8 else 8)
                if truth is not None:
                    truths.append(truth)
        finally:
            writer.close()
        if truth_path is not None:
            Truth.concat(truths).save(truth_path, c)
        return dict(self._summary(), bytes=writer.bytes_written + getattr(writer, "header_bytes", 0))

    def _summary(self) -> dict:
        s = self.stats
        return dict(hits=s.get("hits", 0), noise_hits=s.get("noise_hits", 0), particles=s.get("particles", 0),
                    dropped_particles=s.get("dropped_particles", 0), triggers=s.get("triggers", 0),
                    words=s.get("words", 0))

    def datagrams(self, words: np.ndarray, payload_bytes: int | None = None) -> list[memoryview]:
        """Split one block of words into datagram payloads of whole words (quad: whole chunks)."""
        pb = payload_bytes or self.config.payload_bytes
        raw = memoryview(np.ascontiguousarray(words, dtype="<u8")).cast("B")
        if not self.config.quad:
            return [raw[i: i + pb] for i in range(0, len(raw), pb - pb % 8)]
        starts = _chunk_starts(np.ascontiguousarray(words, dtype=np.uint64)) * 8
        out = []
        i = 0
        while i < len(starts) - 1:  # pack whole chunks up to pb bytes
            j = i + 1
            while j < len(starts) - 1 and starts[j + 1] - starts[i] <= pb:
                j += 1
            out.append(raw[starts[i]: starts[j]])
            i = j
        return out

    def send_udp(self, host: str, port: int, payload_bytes: int | None = None,
                 as_fast_as_possible: bool = False, stop_event: threading.Event | None = None,
                 truth_path: str | Path | None = None) -> dict:
        """Send the stream as UDP datagrams of whole words (quad: whole .tpx3 chunks), paced
        to the detector time (so to the configured hit rate) unless ``as_fast_as_possible``.
        Stops early (within a few ms) when ``stop_event`` is set. ``truth_path``: save the
        truth (.npz) after a complete run. Returns counts: datagrams, bytes (sent), hits and
        triggers (generated), seconds (wall), stopped (bool).

        Datagrams go out in groups (up to 64 per ``sendmmsg`` call, see
        :class:`~tango_tpx.simulator.udpsend.BatchSender`), each group no earlier than the
        detector time of its last datagram; a group spans at most ~2 ms of detector time."""
        from .udpsend import DEFAULT_BATCH, BatchSender

        pb = int(payload_bytes or self.config.payload_bytes)
        if pb < 8 or pb % 8:
            raise ValueError("payload_bytes must be a positive multiple of 8")
        if self.config.quad and pb < self.config.payload_bytes:
            raise ValueError("a quad stream is framed in chunks of SimConfig.payload_bytes: "
                             "payload_bytes cannot be smaller")
        c = self.config
        block_s = c.block_ms * 1e-3

        def offsets(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Byte ranges of the datagrams of one block (as :meth:`datagrams`)."""
            nbytes = words.size * 8
            if not c.quad:
                starts = np.arange(0, nbytes, pb, dtype=np.int64)
                return starts, np.minimum(starts + pb, nbytes)
            cs = (_chunk_starts(words) * 8).tolist()
            st, en = [], []
            i = 0
            while i < len(cs) - 1:      # pack whole chunks up to pb bytes
                j = i + 1
                while j < len(cs) - 1 and cs[j + 1] - cs[i] <= pb:
                    j += 1
                st.append(cs[i])
                en.append(cs[j])
                i = j
            return np.array(st, np.int64), np.array(en, np.int64)

        counts = dict(datagrams=0, bytes=0, hits=0, triggers=0, seconds=0.0, stopped=False)
        truths: list[Truth] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            tx = BatchSender(sock, (host, int(port)))
            t0 = time.monotonic()
            for bi, (words, truth) in enumerate(self._generate(with_truth=truth_path is not None)):
                if truth is not None:
                    truths.append(truth)
                words = np.ascontiguousarray(words, dtype="<u8")
                starts, ends = offsets(words)
                nd = starts.size
                if as_fast_as_possible:
                    group = 16 * DEFAULT_BATCH
                else:
                    group = max(1, min(DEFAULT_BATCH, int(0.002 * nd / block_s) if block_s > 0 else nd))
                di = 0
                while di < nd:
                    if stop_event is not None and stop_event.is_set():
                        counts["stopped"] = True
                        break
                    dj = min(nd, di + group)
                    if not as_fast_as_possible:
                        lag = t0 + block_s * (bi + dj / nd) - time.monotonic()
                        if lag > 0.001:
                            if stop_event is not None:
                                if stop_event.wait(lag):
                                    counts["stopped"] = True
                                    break
                            else:
                                time.sleep(lag)
                    counts["bytes"] += tx.send(words, starts[di:dj], ends[di:dj])
                    counts["datagrams"] += dj - di
                    di = dj
                if counts["stopped"]:
                    break
            counts["seconds"] = time.monotonic() - t0
        finally:
            sock.close()
        counts["hits"] = self.stats.get("hits", 0)
        counts["triggers"] = self.stats.get("triggers", 0)
        if truth_path is not None and not counts["stopped"]:
            Truth.concat(truths).save(truth_path, c)
        return counts

    @staticmethod
    def _sendto(sock: socket.socket, data, addr) -> None:
        while True:
            try:
                sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                time.sleep(0.0005)
            except ConnectionRefusedError:
                # an ICMP 'port unreachable' from an earlier datagram: nobody listens yet, keep going
                return


def simulate(config: SimConfig | None = None) -> tuple[np.ndarray, Truth]:
    """The whole simulated stream (uint64 words) and its :class:`Truth`, in memory."""
    return SpidrSimulator(config).simulate()
