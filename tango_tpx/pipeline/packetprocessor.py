"""PipelinePacketProcessor: the one ordered decode stage (pymepix name).

Raw chunks (bytes cut anywhere; a partial trailing word is carried to the next chunk) ->
:class:`tango_tpx.tpx3.codec.Decoder` (time extension from the stream's 0x44/0x45 words,
or re-anchored through :meth:`AcquisitionController.set_longtime`) -> optionally
:class:`tango_tpx.processing.events.PacketProcessor` (global trigger numbers, ToF; never
splits an event across outputs).  Outputs ``PixelData`` + ``TriggerData`` (pixel mode) or
``EventData`` + ``TriggerData`` (event mode). Also updates the live counters and the
rolling preview: every ``preview_period_s`` the hit map of all pixels decoded in that
period and the ToF histogram of its events (axis: bin centres in ns over the event window)
replace the published frame; a period without hits keeps the previous frame.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..processing.events import PacketProcessor
from ..tpx3.codec import Decoder
from .baseplugin import BasePipelineObject
from .counters import CTRL_LONGTIME, CTRL_LONGTIME_GEN, N_TOF_BINS, accumulate_preview, tof_bins
from .messages import MessageType


class PipelinePacketProcessor(BasePipelineObject):
    """Decode stage.

    packet_processor: a configured :class:`~tango_tpx.processing.events.PacketProcessor`
        (used when ``use_events``), or None to build one from ``event_window``;
    use_events: assign pixels to triggers (ToF) instead of passing pixels on;
    event_window: (min, max) ToF in s; layout: 'single' | 'quad'; framing: 'raw' | 'tpx3';
    longtime: initial 48-bit global time (25 ns ticks): int, a ``multiprocessing.Value``
        or None; preview_period_s: s per published preview frame.
    """

    accepts = frozenset({MessageType.RawData})
    raw_ring_ok = True        # raw chunks are decoded (or the carry copied) inside process()

    def __init__(self, packet_processor: Any = None, input_queue=None, create_output: bool = True,
                 num_outputs: int = 1, shared_output=None, *, use_events: bool = False,
                 event_window: tuple[float, float] = (0.0, 1e-3), timewalk_lut: Any = None,
                 layout: str = "single", framing: str = "raw", longtime: Any = None,
                 preview_period_s: float = 1.0, name: str = "PacketProcessor", **kwargs: Any) -> None:
        super().__init__(name, input_queue=input_queue, create_output=create_output,
                         num_outputs=num_outputs, shared_output=shared_output, **kwargs)
        self.packet_processor = packet_processor
        self.use_events = bool(use_events or packet_processor is not None)
        self.event_window = (float(event_window[0]), float(event_window[1]))
        self.timewalk_lut = timewalk_lut
        self.layout = layout
        self.framing = framing
        self.longtime = longtime
        self.preview_period_s = float(preview_period_s)
        #: meta sent with every events/triggers message (the armed stage's settings version)
        self.out_meta: dict | None = None

    @classmethod
    def warm_up(cls) -> None:
        ro = np.frombuffer(bytes(16), np.uint8)          # stage inputs are read-only frames
        for layout in ("single", "quad"):
            d = Decoder(layout=layout)
            d.decode(ro.view(np.uint64))
            d.decode(np.zeros(2, np.uint64))
        pp = PacketProcessor()
        pp.process(Decoder().decode(ro.view(np.uint64)))
        pp.flush()
        z16, z64 = np.zeros(0, np.uint16), np.zeros(0, np.int64)
        accumulate_preview(np.zeros((2, 2), np.int32), z16, z16, np.zeros(2), z64, 0, 1)

    def pre_run(self) -> None:
        lt = self.longtime
        if lt is not None and hasattr(lt, "value"):
            lt = lt.value
        lt = int(lt) if lt else None
        self.decoder = Decoder(framing=self.framing, layout=self.layout, longtime=lt)
        self.decoder.decode(np.zeros(0, np.uint64))       # load/compile kernels before data
        if self.use_events and self.packet_processor is None:
            self.packet_processor = PacketProcessor(self.event_window, self.timewalk_lut)
        if self.packet_processor is not None:
            self.event_window = tuple(self.packet_processor.event_window)
        self._carry = np.zeros(0, np.uint8)
        self._lt_gen = int(self.wiring.counters.ctrl[CTRL_LONGTIME_GEN])
        self._stats_prev: dict[str, int] = {}
        # preview accumulation for the current period
        prev = self.wiring.preview
        self._pv_shape = prev.shape if prev is not None else (256, 256)
        self._pv_map = np.zeros(self._pv_shape, np.int32)
        self._pv_hist = np.zeros(N_TOF_BINS, np.float64)
        self._tof_lo, self._tof_hi, self._tof_axis_ns = tof_bins(self.event_window, N_TOF_BINS)
        self._pv_t0 = time.monotonic()
        self._pv_hits = 0
        self._empty_i64 = np.zeros(0, np.int64)

    def _words(self, chunk: np.ndarray) -> np.ndarray:
        if self._carry.size:
            chunk = np.concatenate([self._carry, chunk])
        n = (chunk.size // 8) * 8
        self._carry = chunk[n:].copy() if n != chunk.size else np.zeros(0, np.uint8)
        return chunk[:n].view(np.uint64) if chunk.flags.c_contiguous else np.ascontiguousarray(chunk[:n]).view(np.uint64)

    def process(self, data_type=None, data=None):
        if data_type != MessageType.RawData:
            return None
        c = self.wiring.counters
        gen = int(c.ctrl[CTRL_LONGTIME_GEN])
        if gen != self._lt_gen:
            self._lt_gen = gen
            self.decoder.set_longtime(int(c.ctrl[CTRL_LONGTIME]))
        raw = np.asarray(data).view(np.uint8)
        words = self._words(raw)
        dec = self.decoder.decode(words)
        n_pix, n_trig = len(dec.pixels), len(dec.triggers)
        c.add("words", int(words.size))
        c.add("hits", n_pix)
        c.add("triggers", n_trig)
        c.add("malformed_words", int(dec.counts.malformed))
        self._pv_hits += n_pix
        if self.use_events:
            out = self.packet_processor.process(dec)
            self._emit_events(out)
            accumulate_preview(self._pv_map, dec.pixels.x, dec.pixels.y, self._pv_hist,
                               out.events.tof, self._tof_lo, self._tof_hi)
        else:
            accumulate_preview(self._pv_map, dec.pixels.x, dec.pixels.y, self._pv_hist,
                               self._empty_i64, self._tof_lo, self._tof_hi)
            if n_pix:
                self.pushOutput(MessageType.PixelData, dec.pixels)
            if n_trig:
                self.pushOutput(MessageType.TriggerData, dec.triggers)
        c.add("decoded_chunks", 1)   # counted once its pixels or events are passed on
        self._maybe_publish_preview()
        return None

    def _emit_events(self, out) -> None:
        c = self.wiring.counters
        if len(out.triggers):
            c.add("trigger_events", len(out.triggers))
            self.pushOutput(MessageType.TriggerData, out.triggers, meta=self.out_meta)
        for tag, events in out.parts:        # one message per settings version (the part's tag)
            if len(events):
                c.add("events", len(events))
                self.pushOutput(MessageType.EventData, events, meta=self.out_meta if tag is None else tag)
        st = self.packet_processor.stats
        for key in ("lost_triggers", "late_pixels"):
            v = int(st.get(key, 0))
            d = v - self._stats_prev.get(key, 0)
            if d:
                c.add(key, d)
                self._stats_prev[key] = v

    def _maybe_publish_preview(self, force: bool = False) -> None:
        prev = self.wiring.preview
        if prev is None:
            return
        now = time.monotonic()
        if force or now - self._pv_t0 >= self.preview_period_s:
            # a period without any decoded hit keeps the last frame on display
            if self._pv_hits:
                prev.publish(self._pv_map, self._pv_hist, self._tof_axis_ns)
                self._pv_map[...] = 0
                self._pv_hist[...] = 0
                self._pv_hits = 0
            self._pv_t0 = now

    def on_idle(self) -> None:
        self._maybe_publish_preview()

    def post_run(self):
        c = self.wiring.counters
        if self._carry.size:
            c.add("malformed_words", 1)          # a trailing partial word
            self._carry = np.zeros(0, np.uint8)
        if self.use_events:
            out = self.packet_processor.flush()
            self._emit_events(out)
            accumulate_preview(self._pv_map, self._pv_map[:0, 0].astype(np.uint16),
                               self._pv_map[:0, 0].astype(np.uint16), self._pv_hist,
                               out.events.tof, self._tof_lo, self._tof_hi)
        self._maybe_publish_preview(force=True)
        return None
