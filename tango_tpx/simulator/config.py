"""Simulation parameters of the SPIDR emulator (:class:`SimConfig`) and its unit constants.

Units: times int64 fine units of 25/4096 ns unless the name says ns/us/s; ToT counts of 25 ns.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..tpx3.units import FINE_PER_TICK, UNIT_NS

__all__ = ["SimConfig"]

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
