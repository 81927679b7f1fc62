"""The armed pipeline: stages that stay up between acquisitions, behind a gate.

An armed pipeline is started once (processes forked and warmed, UDP socket bound) and then
serves any number of acquisitions:

* :class:`~.gatedreceiver.GatedUdpSampler` receives all the time and drops what it receives
  while the gate is closed; ``begin`` / ``end`` open and close the gate (and the recording)
  and send *begin* / *end* markers down (:mod:`.gatedreceiver`).
* :class:`GatedPacketProcessor` starts a fresh decoder and event builder at each *begin*
  marker (trigger numbers restart at 0, exactly as an offline conversion of the file),
  the decoder anchored on the best known detector time (the latest global time seen, by
  the receiver while idle or by the decoder in the previous acquisition, plus the host time
  since: the first words of an acquisition that starts past the 26.8 s rollover are not
  put in epoch 0),
  applies live settings between chunks, keeps per-acquisition results (hit map, ToF
  histogram, ROI hits, detector time span) and ends a bounded acquisition itself:
  at the (N+1)-th TDC1 rising edge (``AcquisitionTriggers`` = N) or at the first TDC1 edge
  at or after ``start + AcquisitionTime`` in detector time (without triggers: the chunk whose
  newest hit passes that time). It then flushes, reports ``('acq', id, reason, offset)`` to
  the parent and ignores data until the next *begin*.
* :class:`~.gatedcentroid.GatedCentroidCalculator` clusters each chunk with the settings
  version it carries and counts the centroids inside the region of interest
  (:mod:`.gatedcentroid`).

Every chunk the armed stages send carries the version of the live settings that made it
(meta ``sv``, see :mod:`.livesettings`).
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from ..processing.events import PacketProcessor
from ..tpx3.codec import Decoder
from ..tpx3.encode import TPX3_MAGIC
from .acquisition import CentroidPipeline, PixelPipeline
from .counters import N_TOF_BINS, SharedPreview, accumulate_preview, tof_bins
from .gatedcentroid import GatedCentroidCalculator
from .gatedreceiver import (IDLE_SCAN_S, META_ACQ, META_BEGIN_HOST, META_GLOBAL, META_GLOBAL_HOST, META_ID,
                            META_OFFSET, META_TIME, META_TRIGGERS, GatedUdpSampler)
from .livesettings import META_CLUSTERING, META_SETTINGS_VERSION, LiveSettings, roi_mask
from .messages import MessageType
from .packetprocessor import PipelinePacketProcessor

#: detector clock ticks (25 ns) per second of host time
TICKS_PER_S = 40_000_000


def _tdc1_rising_positions(words: np.ndarray) -> np.ndarray:
    """Word indices of TDC1 rising edges (header 0x6, sub-type 0xF; not a .tpx3 chunk header)."""
    return np.flatnonzero((((words >> np.uint64(56)) & np.uint64(0xFF)) == np.uint64(0x6F))
                          & ((words & np.uint64(0xFFFFFFFF)) != np.uint64(TPX3_MAGIC)))


class GatedPacketProcessor(PipelinePacketProcessor):
    """Decode stage of the armed pipeline (see the module docstring).

    live: :class:`~.livesettings.LiveSettings`; acq_preview: a :class:`SharedPreview` for the
    per-acquisition hit map and ToF histogram; other arguments as :class:`PipelinePacketProcessor`.
    """

    def __init__(self, *args: Any, live: LiveSettings | None = None, acq_preview: SharedPreview | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live = live
        self.acq_preview = acq_preview

    def pre_run(self) -> None:
        self.use_events = True
        super().pre_run()
        self._live_gen = -1
        self._roi = (0.0, 0.0, 1e9, 1e9, 0.0, 1e12)
        self._active = False
        self._acq_id = -1
        self._clock = (-1, 0.0)       # latest global time decoded (25 ns ticks), time.monotonic() then
        self._acq_map = np.zeros(self._pv_shape, np.int32)
        self._acq_hist = np.zeros(N_TOF_BINS, np.float64)
        self._apply_live()

    # -- live settings ------------------------------------------------------------------------
    def _apply_live(self) -> None:
        if self.live is None or self.live.generation == self._live_gen:
            return
        self._live_gen, v = self.live.read()
        self._roi = v.roi
        # every chunk sent from now on says which settings made it (see livesettings)
        self.out_meta = {META_SETTINGS_VERSION: self._live_gen // 2, META_CLUSTERING: v.clustering.to_attrs()}
        # the events of the triggers from now on are made with this version; an event whose
        # trigger came before keeps its version (window, clustering): it is never split
        if self.packet_processor is not None:
            self.packet_processor.set_event_window(tuple(v.event_window), self.out_meta)
        if tuple(v.event_window) != tuple(self.event_window):
            self.event_window = tuple(v.event_window)
            self._tof_lo, self._tof_hi, self._tof_axis_ns = tof_bins(self.event_window, N_TOF_BINS)
            self._pv_hist[...] = 0      # a histogram holds one binning: restart it
            self._acq_hist[...] = 0

    # -- acquisitions -------------------------------------------------------------------------
    def _detector_time(self, meta: dict) -> int:
        """Best estimate of the detector time at the *begin* marker (25 ns ticks), -1 if
        none: the more recent of the global time the receiver saw while idle and the one
        this decoder saw last, plus the host time elapsed since."""
        idle = (int(meta.get(META_GLOBAL, -1)), float(meta.get(META_GLOBAL_HOST, 0.0)))
        ticks, seen = max(idle, self._clock, key=lambda c: (c[0] >= 0, c[1]))
        if ticks < 0:
            return -1
        now = float(meta.get(META_BEGIN_HOST, 0.0)) or time.monotonic()
        return ticks + int(max(0.0, now - seen) * TICKS_PER_S)

    def _begin(self, meta: dict) -> None:
        self._apply_live()
        self.decoder = Decoder(framing=self.framing, layout=self.layout)
        self.decoder.anchor(self._detector_time(meta))   # a pair in the first chunk replaces it
        self.packet_processor = PacketProcessor(self.event_window, self.timewalk_lut)
        self.packet_processor.set_event_window(self.event_window, self.out_meta)
        self._carry = np.zeros(0, np.uint8)
        self._stats_prev = {}
        self._acq_id = int(meta.get(META_ID, 0))
        self._limit_time_u = 0
        t = float(meta.get(META_TIME, 0.0) or 0.0)
        if t > 0:
            from ..tpx3.units import s_to_units
            self._limit_time_u = int(s_to_units(t))
        self._limit_trig = int(meta.get(META_TRIGGERS, 0) or 0)
        self._trig_words = 0
        self._t_start: int | None = None
        self._t_end: int | None = None
        self._acq_map[...] = 0
        self._acq_hist[...] = 0
        c = self.wiring.counters
        c.set("acq_t_start", 0)
        c.set("acq_t_last", 0)
        self._publish_acq()
        self._active = True

    def _finish(self, reason: str, offset: int) -> None:
        out = self.packet_processor.flush()
        self._emit_events(out)
        self._account(None, out.events)
        self._maybe_publish_preview(force=True)
        self._publish_acq()
        self._active = False
        self.report("acq", self._acq_id, reason, int(offset))

    def _publish_acq(self) -> None:
        if self.acq_preview is not None:
            self.acq_preview.publish(self._acq_map, self._acq_hist, self._tof_axis_ns)

    def _account(self, pixels, events) -> None:
        """Per-acquisition hit map / ToF histogram, the rolling preview's ToF, ROI hits."""
        z16 = self._pv_map[:0, 0].astype(np.uint16)
        if pixels is not None:
            accumulate_preview(self._acq_map, pixels.x, pixels.y, self._acq_hist, events.tof[:0],
                               self._tof_lo, self._tof_hi)
            accumulate_preview(self._pv_map, pixels.x, pixels.y, self._pv_hist, events.tof[:0],
                               self._tof_lo, self._tof_hi)
        if len(events):
            accumulate_preview(self._acq_map, z16, z16, self._acq_hist, events.tof, self._tof_lo, self._tof_hi)
            accumulate_preview(self._pv_map, z16, z16, self._pv_hist, events.tof, self._tof_lo, self._tof_hi)
            n_roi = int(np.count_nonzero(roi_mask(events.x, events.y, events.tof, self._roi)))
            if n_roi:
                self.wiring.counters.add("roi_hits", n_roi)

    def _cut(self, words: np.ndarray) -> tuple[int | None, Any]:
        """Decode ``words`` up to the end of a bounded acquisition: (cut word index or None,
        decoded data of the words kept)."""
        self.decoder.look_ahead(words)      # the same anchor for the whole chunk and a part of it
        pos = _tdc1_rising_positions(words) if (self._limit_trig or self._limit_time_u) else None
        if self._limit_trig:
            allowed = self._limit_trig - self._trig_words
            if len(pos) > allowed:
                self._cut_reason = "triggers"
                return int(pos[allowed]), self.decoder.decode(words[:pos[allowed]])
        if not self._limit_time_u:
            self._trig_words += 0 if pos is None else len(pos)
            return None, self.decoder.decode(words)
        state, counts = self.decoder._state.copy(), self.decoder._counts.copy()
        dec = self.decoder.decode(words)
        tr = dec.triggers
        rising1 = tr.time[(tr.channel == 1) & tr.rising]
        if self._t_start is None:
            first = [int(rising1[0])] if len(rising1) else []
            if len(dec.pixels):
                first.append(int(dec.pixels.toa.min()))
            if first:
                self._t_start = min(first)
                self._t_end = self._t_start + self._limit_time_u
        if self._t_end is None:
            return None, dec
        late = np.flatnonzero(rising1 >= self._t_end)
        if len(late) and late[0] < len(pos):
            self._cut_reason = "time"
            cut = int(pos[late[0]])
            self.decoder._state[...] = state
            self.decoder._counts[...] = counts
            return cut, self.decoder.decode(words[:cut])
        self._trig_words += len(pos)
        if not len(rising1) and not self._trig_words and len(dec.pixels) \
                and int(dec.pixels.toa.max()) >= self._t_end:
            self._cut_reason = "time"
            return len(words), dec                 # no triggers at all: end after this chunk
        return None, dec

    def process(self, data_type=None, data=None):
        if data_type != MessageType.RawData:
            return None
        meta = self.current_meta
        kind = meta.get(META_ACQ)
        if kind == "begin":
            self._begin(meta)
            return None
        if kind == "end":
            if self._active:
                self._finish("stop", int(meta.get(META_OFFSET, 0)))
            return None
        if not self._active:
            return None                          # after a bounded end, until the next begin
        self._apply_live()
        c = self.wiring.counters
        raw = np.asarray(data).view(np.uint8)
        carry = self._carry.size
        words = self._words(raw)
        cut, dec = self._cut(words)
        n_used = words.size if cut is None else cut
        n_pix, n_trig = len(dec.pixels), len(dec.triggers)
        c.add("words", int(n_used))
        c.add("hits", n_pix)
        c.add("triggers", n_trig)
        c.add("malformed_words", int(dec.counts.malformed))
        self._pv_hits += n_pix
        times = [int(dec.pixels.toa.max())] if n_pix else []
        if n_trig:
            times.append(int(dec.triggers.time.max()))
        if times:
            if not c.get("acq_t_start"):
                first = [int(dec.pixels.toa.min())] if n_pix else []
                if n_trig:
                    first.append(int(dec.triggers.time.min()))
                c.set("acq_t_start", min(first))
            c.set("acq_t_last", max(max(times), c.get("acq_t_last")))
        if dec.longtime >= 0 and dec.longtime != self._clock[0]:
            self._clock = (dec.longtime, time.monotonic())
        out = self.packet_processor.process(dec)
        self._emit_events(out)
        self._account(dec.pixels, out.events)
        c.add("decoded_chunks", 1)   # counted once its events are passed on
        self._maybe_publish_preview()
        if cut is not None:
            self._carry = np.zeros(0, np.uint8)
            self._finish(self._cut_reason, int(meta.get(META_OFFSET, 0)) - carry + 8 * cut)
        return None

    def post_run(self):
        if self._active:
            self._finish("stop", -1)
        self._maybe_publish_preview(force=True)
        return None


class _ArmedMixin:
    """Pipeline side of the armed stages: replaces the stage classes, keeps the stages'
    ``('acq', ...)`` reports for :class:`~.session.AcquisitionSession`."""

    def _arm_stages(self, live: LiveSettings, acq_preview: SharedPreview) -> None:
        self.live = live
        self.acq_reports: collections.deque = collections.deque()
        s0 = self.getStage(0)
        s0.configureStage(GatedUdpSampler, *s0._args, **s0._kwargs)
        s2 = self.getStage(2)
        kw = dict(s2._kwargs, live=live, acq_preview=acq_preview, use_events=True)
        s2.configureStage(GatedPacketProcessor, *s2._args, **kw)
        s4 = self.getStage(4)
        if s4 is not None:
            s4.configureStage(GatedCentroidCalculator, *s4._args, **dict(s4._kwargs, live=live))

    def _handle_report(self, p, msg: tuple, ready_sink) -> None:
        if msg[0] == "acq":
            self.acq_reports.append(msg[2:])
        else:
            super()._handle_report(p, msg, ready_sink)

    def send_command(self, name: str, arg: Any) -> int:
        """Send a command to the receiver without waiting; returns its id (see :meth:`reply`)."""
        if not self._running:
            raise RuntimeError("the pipeline is not armed")
        p, conn = self._sampler()
        cid = next(self._cid)
        with self._reports_lock:
            conn.send(("cmd", cid, name, arg))
        return cid

    def reply(self, cid: int) -> tuple[bool, Any] | None:
        """(ok, value) of command ``cid`` once the receiver answered, else None."""
        return self._replies.pop(cid, None)


class ArmedPixelPipeline(_ArmedMixin, PixelPipeline):
    """PixelPipeline (events on) with gated stages."""

    def __init__(self, *args: Any, live: LiveSettings, acq_preview: SharedPreview, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arm_stages(live, acq_preview)


class ArmedCentroidPipeline(_ArmedMixin, CentroidPipeline):
    """CentroidPipeline with gated stages."""

    def __init__(self, *args: Any, live: LiveSettings, acq_preview: SharedPreview, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arm_stages(live, acq_preview)


__all__ = ["IDLE_SCAN_S", "META_ACQ", "META_BEGIN_HOST", "META_GLOBAL", "META_GLOBAL_HOST", "META_ID", "META_OFFSET",
           "META_TIME", "META_TRIGGERS", "TICKS_PER_S", "ArmedCentroidPipeline", "ArmedPixelPipeline",
           "GatedCentroidCalculator", "GatedPacketProcessor", "GatedUdpSampler"]
