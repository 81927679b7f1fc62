"""The HDF5 file attributes that record a conversion's processing settings, made from the
typed settings (:mod:`tango_tpx.processing.settings`) and read back into them."""

from __future__ import annotations

from typing import Any

from tango_tpx.processing.settings import ClusteringConfig, DetectorLayout, EventWindow, TimeWalk


def settings_attrs(window: EventWindow, detector: DetectorLayout, clustering: ClusteringConfig,
                   timewalk: TimeWalk, centroiding: bool, clustering_args: dict | None = None) -> dict[str, Any]:
    """Attributes of the settings: the objects' ``to_attrs()``, plus ``centroiding`` and
    ``clustering_args`` (the pymepix-style arguments as given); without centroiding
    ``clustering_algorithm`` is ``'none'``."""
    attrs: dict[str, Any] = {}
    attrs.update(detector.to_attrs())
    attrs.update(window.to_attrs())
    attrs.update(clustering.to_attrs())
    attrs.update(timewalk.to_attrs())
    attrs["centroiding"] = bool(centroiding)
    attrs["clustering_args"] = dict(clustering_args or {})
    if not centroiding:
        attrs["clustering_algorithm"] = "none"
    return attrs


def settings_from_attrs(attrs: Any) -> tuple[EventWindow, DetectorLayout, ClusteringConfig | None, TimeWalk]:
    """(window, layout, clustering or None without centroiding, time-walk) of a file's
    attributes (``h5py`` ``File.attrs`` or a dict)."""
    algo = attrs.get("clustering_algorithm", "fast")
    if isinstance(algo, bytes):
        algo = algo.decode()
    clustering = None if algo == "none" else ClusteringConfig.from_attrs(attrs)
    return EventWindow.from_attrs(attrs), DetectorLayout.from_attrs(attrs), clustering, TimeWalk.from_attrs(attrs)


__all__ = ["settings_attrs", "settings_from_attrs"]
