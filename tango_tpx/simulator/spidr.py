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

Parts: :mod:`.config` (:class:`SimConfig`), :mod:`.truth` (:class:`Truth`, :class:`Particles`),
:mod:`.scene` (particles placed as clusters), :mod:`.readout` (readout order, pixel words),
:mod:`.outputs` (file and UDP); this module runs them block by block.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from ..tpx3 import encode as enc
from ..tpx3.files import frame_tpx3, quad_to_frame
from ..tpx3.hits import PixelHits, Triggers
from ..tpx3.units import UNIT_NS
from .config import _BIG, _MIN_TIME, _NS, SimConfig
from .outputs import StreamOutputs
from .readout import _emit
from .scene import (_EXP, _ORDER, _SINCOS, N_ROWS, R_PACK, R_PART, R_TOA, R_TRIG, R_XF, R_YF,
                    _gen_particles)
from .truth import Particles, Truth

__all__ = ["SimConfig", "Particles", "Truth", "SpidrSimulator", "simulate"]


class SpidrSimulator(StreamOutputs):
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


def simulate(config: SimConfig | None = None) -> tuple[np.ndarray, Truth]:
    """The whole simulated stream (uint64 words) and its :class:`Truth`, in memory."""
    return SpidrSimulator(config).simulate()
