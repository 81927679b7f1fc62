"""pymepix import path of the live pipelines: ``PixelPipeline`` and ``CentroidPipeline``.

Same names, signatures and ``data_queue`` messages as pymepix (shapes and units in
:mod:`.shapes`): a ``PixelPipeline`` sends ``PixelData`` (and with ``use_event=True``
``EventData``), a ``CentroidPipeline`` ``PixelData``, ``EventData`` and ``CentroidData``,
each also ``TriggerData`` (an extra, see :mod:`.shapes`). ``typed_records=True`` gives
tango-tpx's typed zero-copy records and message set instead (those of
:mod:`tango_tpx.pipeline.acquisition`). The engine is the same in both cases: the
zero-copy stages of :mod:`tango_tpx.pipeline`.
"""

from __future__ import annotations

from typing import Any

from ..pipeline import acquisition as _zc
from ..tpx3.codec import stream_framing
from .baseacquisition import AcquisitionPipeline
from .logic.centroid_calculator import CentroidCalculator
from .logic.packet_processor import PacketProcessor
from .pipeline_centroid_calculator import PipelineCentroidCalculator
from .pipeline_packet_processor import PipelinePacketProcessor

#: clustering of the live CentroidPipeline: the fast connected components (pymepix: DBSCAN)
LIVE_DBSCAN_DEFAULT = False


class _PymepixStages:
    """Configures the decode and centroid stages from pymepix-style processing objects
    (unless ``typed_records``); the logic objects hold the settings a running pipeline
    reads (event window, events on/off)."""

    _logic_pp: PacketProcessor | None = None

    def _reconfigureProcessor(self) -> None:
        if self.typed_records:
            return super()._reconfigureProcessor()
        if self._logic_pp is None:
            self._logic_pp = PacketProcessor(handle_events=self._use_events, event_window=self._event_window,
                                             timewalk_lut=self.timewalk_lut)
        else:                       # shared with the running stage: changes apply live
            self._logic_pp.handle_events = self._use_events
            self._logic_pp.event_window = self._event_window
        self.getStage(2).configureStage(
            PipelinePacketProcessor, packet_processor=self._logic_pp, layout=self.layout,
            framing=stream_framing(self.layout), longtime=self.longtime,
            preview_period_s=self.preview_period_s)

    def _reconfigureCentroid(self) -> None:
        if self.typed_records:
            return _zc.CentroidPipeline._reconfigureCentroid(self)
        args = dict(self._clustering_args)
        args.setdefault("tot_threshold", self._tot_threshold * 25)
        calc = CentroidCalculator(cent_timewalk_lut=self._cent_lut, clustering_args=args,
                                  dbscan_clustering=self._dbscan)
        self.getStage(4).configureStage(PipelineCentroidCalculator, centroid_calculator=calc)


class PixelPipeline(_PymepixStages, _zc.PixelPipeline, AcquisitionPipeline):
    """UDP receiver + decoder (pymepix): ``PixelData``, with ``use_event`` also
    ``EventData``. longtime: ``multiprocessing.Value`` (or int) with the 48-bit global
    time in 25 ns ticks, read for every chunk (None: anchor on the stream's global-time
    words). event_window: (min, max) ToF in s; ``eventWindow`` and ``enableEvents`` apply
    while running. Keyword extras as :class:`tango_tpx.pipeline.acquisition.PixelPipeline`,
    plus ``typed_records`` (default False: pymepix shapes)."""

    def __init__(self, data_queue: Any, address: tuple[str, int], longtime: Any, use_event: bool = False,
                 name: str = "Pixel", event_window: tuple[float, float] = (0, 0.001), *,
                 typed_records: bool = False, **kwargs: Any) -> None:
        super().__init__(data_queue, address, longtime, use_event, name, event_window,
                         typed_records=typed_records, **kwargs)


class CentroidPipeline(_zc.CentroidPipeline, PixelPipeline):
    """PixelPipeline + centroiding (pymepix): ``PixelData``, ``EventData`` and
    ``CentroidData``. ``numBlobProcesses`` (default 1) and the clustering settings
    (``totThreshold`` ns, ``epsilon``, ``samples``, ``centroidSkip``, ``dbscanClustering``,
    default False: the fast clustering) take effect at the next start."""

    def __init__(self, data_queue: Any, address: tuple[str, int], longtime: Any, *,
                 typed_records: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("dbscan_clustering", LIVE_DBSCAN_DEFAULT)
        super().__init__(data_queue, address, longtime, typed_records=typed_records, **kwargs)

    _reconfigureCentroid = _PymepixStages._reconfigureCentroid

    def _arg(self, key: str, default: Any) -> Any:
        return self._clustering_args.get(key, default)

    def _set_arg(self, key: str, value: Any) -> None:
        self._clustering_args[key] = value
        self._reconfigureCentroid()

    @property
    def totThreshold(self) -> float:
        """Keep hits with ToT > this, ns (pymepix's unit); next start."""
        return self._arg("tot_threshold", self._tot_threshold * 25)

    @totThreshold.setter
    def totThreshold(self, value: float) -> None:
        self._tot_threshold = int(value // 25)
        self._set_arg("tot_threshold", value)

    @property
    def epsilon(self) -> float:
        """DBSCAN eps; next start."""
        return self._arg("epsilon", 2.0)

    @epsilon.setter
    def epsilon(self, value: float) -> None:
        self._set_arg("epsilon", float(value))

    @property
    def samples(self) -> int:
        """DBSCAN min_samples; next start."""
        return self._arg("min_samples", 3)

    @samples.setter
    def samples(self, value: int) -> None:
        self._set_arg("min_samples", int(value))

    @property
    def centroidSkip(self) -> int:
        """Centroid every n-th trigger; next start."""
        return self._arg("triggers_processed", 1)

    @centroidSkip.setter
    def centroidSkip(self, value: int) -> None:
        self._set_arg("triggers_processed", int(value))


__all__ = ["AcquisitionPipeline", "PixelPipeline", "CentroidPipeline"]
