"""pymepix import path of the decode stage: ``PipelinePacketProcessor(packet_processor=PacketProcessor(), ...)``.

The stage is tango-tpx's zero-copy decode stage
(:class:`tango_tpx.pipeline.packetprocessor.PipelinePacketProcessor`) configured from a
pymepix-style :class:`~.logic.packet_processor.PacketProcessor`, whose ``handle_events``
and ``event_window`` may be changed while the pipeline runs (shared memory, read before
every chunk). As pymepix's stage it sends ``PixelData`` for every decoded chunk, also in
event mode (``send_pixels``), and with a ``longtime`` (int or ``multiprocessing.Value``,
read before every chunk) it puts every word in the 26.8 s epoch nearest that longtime,
ignoring the stream's global-time words, as pymepix's live pipeline does (single-chip
streams; a quad's ``.tpx3``-framed stream keeps tango-tpx's rule). With ``longtime=None``
the stream's global-time words anchor the time (tango-tpx's rule).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipeline.messages import MessageType
from ..pipeline.packetprocessor import PipelinePacketProcessor as _ZeroCopyStage
from .events import PacketProcessor as _EventBuilder
from .logic.packet_processor import PacketProcessor, strip_global_time


class _PixelsFirst:
    """Event builder wrapper that hands each chunk's pixels to the stage first."""

    def __init__(self, stage: "PipelinePacketProcessor", builder: _EventBuilder) -> None:
        self._stage = stage
        self.builder = builder

    def process(self, decoded):
        if len(decoded.pixels):
            self._stage.pushOutput(MessageType.PixelData, decoded.pixels)
        return self.builder.process(decoded)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.builder, name)


class PipelinePacketProcessor(_ZeroCopyStage):
    """Decode stage with pymepix's signature; see the module doc.

    packet_processor: the :class:`~.logic.packet_processor.PacketProcessor` holding
    handle_events, event_window and timewalk_lut (orientation and position offset are
    not applied live: ValueError unless the defaults). send_pixels: also send
    ``PixelData`` in event mode. Other keywords as the zero-copy stage (``layout``,
    ``longtime``, ``preview_period_s``, ...).
    """

    def __init__(self, packet_processor: PacketProcessor = PacketProcessor(), input_queue: Any = None,
                 create_output: bool = True, num_outputs: int = 1, shared_output: Any = None, *,
                 send_pixels: bool = True, **kwargs: Any) -> None:
        if not isinstance(packet_processor, PacketProcessor):
            raise TypeError("packet_processor must be a tango_tpx.processing.logic.packet_processor.PacketProcessor")
        if not packet_processor.is_default_geometry:
            raise ValueError("the live pipeline does not apply orientation/position_offset: use "
                             "PixelOrientation.Up and (0, 0), or transform x, y after the pipeline")
        kwargs.setdefault("use_events", packet_processor.handle_events)
        kwargs.setdefault("event_window", packet_processor.event_window)
        kwargs.setdefault("timewalk_lut", packet_processor.timewalk_lut)
        kwargs.setdefault("name", "PipelinePacketProcessor")
        super().__init__(None, input_queue, create_output, num_outputs, shared_output, **kwargs)
        self.logic = packet_processor
        self.send_pixels = bool(send_pixels)

    def pre_run(self) -> None:
        super().pre_run()
        self._wrap_builder()

    def _wrap_builder(self) -> None:
        pp = self.packet_processor
        if pp is not None and self.send_pixels and not isinstance(pp, _PixelsFirst):
            self.packet_processor = _PixelsFirst(self, pp)

    def _builder(self) -> _EventBuilder | None:
        pp = self.packet_processor
        return pp.builder if isinstance(pp, _PixelsFirst) else pp

    def _sync_settings(self) -> None:
        """Apply live changes of handle_events / event_window made through ``logic``."""
        handle = self.logic.handle_events
        if handle and self.packet_processor is None:
            self.packet_processor = _EventBuilder(self.logic.event_window, self.timewalk_lut)
            self._wrap_builder()
        self.use_events = handle
        window = self.logic.event_window
        builder = self._builder()
        if builder is not None and builder.event_window != window:
            builder.event_window = window
            self.event_window = window

    def _words(self, chunk: np.ndarray) -> np.ndarray:
        words = super()._words(chunk)
        lt = self.longtime
        if lt is None or self.framing != "raw":      # .tpx3-framed (quad) streams keep their own clock
            return words
        self.decoder.set_longtime(int(lt.value if hasattr(lt, "value") else lt))
        return strip_global_time(words)

    def process(self, data_type=None, data=None):
        if data_type == MessageType.RawData:
            self._sync_settings()
        return super().process(data_type, data)


__all__ = ["PipelinePacketProcessor"]
