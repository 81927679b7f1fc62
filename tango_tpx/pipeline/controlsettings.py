"""The typed settings of the :class:`~.controller.AcquisitionController` and the flat names
they are also set by (``event_window``, ``clustering_algorithm``, ``tot_threshold``,
``timewalk_lut``, ``cent_timewalk_lut``): each is validated once, when it is set, by the
objects of :mod:`tango_tpx.processing.settings`."""

from __future__ import annotations

from dataclasses import replace

from ..processing.settings import ClusteringConfig, EventWindow, TimeWalk


class TypedSettings:
    """Properties over ``_window`` (EventWindow), ``_clustering`` (ClusteringConfig) and
    ``_timewalk`` (TimeWalk)."""

    @property
    def window(self) -> EventWindow:
        """Event window of the next start / arm (an armed pipeline: :meth:`set_live`)."""
        return self._window

    @window.setter
    def window(self, value: EventWindow | tuple[float, float]) -> None:
        self._window = EventWindow.of(value)

    @property
    def event_window(self) -> tuple[float, float]:
        """(min, max) ToF in s: :attr:`window` as a pair."""
        return self._window.as_tuple()

    @event_window.setter
    def event_window(self, value: tuple[float, float]) -> None:
        self.window = value

    @property
    def clustering(self) -> ClusteringConfig:
        """Clustering of the next start / arm (an armed pipeline: :meth:`set_live`)."""
        return self._clustering

    @clustering.setter
    def clustering(self, value: ClusteringConfig) -> None:
        if not isinstance(value, ClusteringConfig):
            raise ValueError(f"clustering must be a ClusteringConfig, got {type(value).__name__}")
        self._clustering = value

    @property
    def clustering_algorithm(self) -> str:
        """Registered clustering key of :attr:`clustering`."""
        return self._clustering.algorithm

    @clustering_algorithm.setter
    def clustering_algorithm(self, value: str) -> None:
        self._clustering = self._clustering.with_(algorithm=value)

    @property
    def tot_threshold(self) -> int:
        """ToT threshold of :attr:`clustering` (counts of 25 ns)."""
        return self._clustering.tot_threshold

    @tot_threshold.setter
    def tot_threshold(self, value: int) -> None:
        self._clustering = self._clustering.with_(tot_threshold=value)

    @property
    def timewalk(self) -> TimeWalk:
        """Time-walk tables of the next start / arm."""
        return self._timewalk

    @timewalk.setter
    def timewalk(self, value: TimeWalk) -> None:
        if not isinstance(value, TimeWalk):
            raise ValueError(f"timewalk must be a TimeWalk, got {type(value).__name__}")
        self._timewalk = value

    @property
    def timewalk_lut(self):
        """Per-hit time-walk table (ns per ToT bin) or None."""
        return self._timewalk.pixel_lut

    @timewalk_lut.setter
    def timewalk_lut(self, lut) -> None:
        self._timewalk = replace(self._timewalk, pixel_lut=lut)

    @property
    def cent_timewalk_lut(self):
        """Centroid time-walk table (ns per ToT bin) or None."""
        return self._timewalk.centroid_lut

    @cent_timewalk_lut.setter
    def cent_timewalk_lut(self, lut) -> None:
        self._timewalk = replace(self._timewalk, centroid_lut=lut)
