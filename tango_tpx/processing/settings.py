"""Typed processing settings, checked once where they are made and carried unchanged.

* :class:`ClusteringConfig`: the clustering backend (a key of the clustering registry,
  :func:`register_clustering`) and its parameters;
* :class:`EventWindow`: the time-of-flight window of an event (s, as pymepix);
* :class:`DetectorLayout`: one chip or a 2x2 quad, and its frame size;
* :class:`TimeWalk`: the two optional time-walk tables.

Every object is frozen and validated in ``__post_init__`` (a :class:`ValueError` names the
value, what is allowed and its unit), and has ``to_attrs()`` / ``from_attrs()``: the flat
HDF5 attributes a conversion writes and reads back.

The clustering registry maps a key (``'fast'``, ``'dbscan'``, ...) to a
:class:`ClusteringBackend`; a backend registers itself in the module that defines it, so a
new one (a GPU backend, say) plugs in with one :func:`register_clustering` call and no edit
elsewhere. The built-in backends live in :mod:`tango_tpx.processing.centroids`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import numpy as np

#: Modules that define the built-in clustering backends (imported on first look-up).
BUILTIN_BACKEND_MODULES: tuple[str, ...] = ("tango_tpx.processing.centroids",)
#: Pixel side of one chip and of the 2x2 quad frame (px).
FRAME_SIZE_PX: dict[str, int] = {"single": 256, "quad": 516}
LAYOUTS: tuple[str, ...] = tuple(FRAME_SIZE_PX)


# ----------------------------------------------------------------------------------------
# clustering registry
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusteringBackend:
    """A clustering algorithm.

    run(arrays, config, tw_units) -> Centroids: ``arrays`` = (trigger_nr int64, x, y,
    tof int64 fine units of 25/4096 ns, tot counts), sorted by (trigger_nr, tof);
    ``config`` the :class:`ClusteringConfig`; ``tw_units`` the centroid time-walk table in
    fine units per ToT bin (empty: none). It returns centroids sorted by (trigger_nr, tof)
    and must never join hits of different triggers.
    default_min_cluster_size: hits, used when a config leaves ``min_cluster_size`` unset.
    """

    run: Callable[..., Any]
    default_min_cluster_size: int = 1
    description: str = ""


_REGISTRY: dict[str, ClusteringBackend] = {}


def register_clustering(key: str, backend: ClusteringBackend) -> None:
    """Make ``backend`` available as ``ClusteringConfig(algorithm=key)`` (replaces a backend
    of the same key)."""
    if not isinstance(key, str) or not key or key != key.strip().lower():
        raise ValueError(f"clustering key must be a non-empty lower-case name, got {key!r}")
    if not isinstance(backend, ClusteringBackend):
        raise TypeError(f"backend must be a ClusteringBackend, got {type(backend).__name__}")
    _REGISTRY[key] = backend


def _load_builtins() -> None:
    for name in BUILTIN_BACKEND_MODULES:
        importlib.import_module(name)


def clustering_keys() -> tuple[str, ...]:
    """The registered clustering keys, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY)


def clustering_backend(key: str) -> ClusteringBackend:
    """The backend registered as ``key``; ValueError naming the known keys."""
    backend = _REGISTRY.get(key)
    if backend is None:
        _load_builtins()
        backend = _REGISTRY.get(key)
    if backend is None:
        raise ValueError(f"clustering algorithm must be one of {clustering_keys()}, got {key!r}")
    return backend


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _int(name: str, value: Any, lo: int, hi: int | None, unit: str) -> int:
    try:
        ok = int(value) == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or value < lo or (hi is not None and value > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {span} ({unit}), got {value!r}")
    return int(value)


def _float(name: str, value: Any, lo: float, hi: float, unit: str, lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number ({unit}), got {value!r}") from None
    if math.isnan(v) or v < lo or v > hi or (lo_open and v == lo):
        op = ">" if lo_open else ">="
        raise ValueError(f"{name} must be {op} {lo} and <= {hi} ({unit}), got {value!r}")
    return v


def _set(obj: Any, **values: Any) -> None:
    for k, v in values.items():
        object.__setattr__(obj, k, v)


# ----------------------------------------------------------------------------------------
# settings objects
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusteringConfig:
    """How hits become clusters and centroids.

    algorithm: a registered key (:func:`clustering_keys`: ``'fast'`` connected components,
    ``'dbscan'`` pymepix's DBSCAN); radius: px, the neighbourhood of ``'fast'`` (1 = the 8
    neighbours); time_window_ns: ns, the largest time gap inside a ``'fast'`` cluster;
    min_cluster_size: hits, smaller clusters are dropped (None: the backend's default, 3 for
    ``'fast'``, 1 for ``'dbscan'``); tot_threshold: ToT counts of 25 ns, only hits with
    ``tot > tot_threshold`` are clustered; eps (DBSCAN distance in pymepix's feature space),
    min_samples (hits) and chunk_hits (hits per DBSCAN call, whole triggers) for ``'dbscan'``.
    """

    algorithm: str = "fast"
    radius: int = 1
    time_window_ns: float = 200.0
    min_cluster_size: int | None = None
    tot_threshold: int = 0
    eps: float = 2.0
    min_samples: int = 3
    chunk_hits: int = 6500

    def __post_init__(self) -> None:
        algo = str(self.algorithm).strip().lower()
        backend = clustering_backend(algo)
        mcs = backend.default_min_cluster_size if self.min_cluster_size is None else self.min_cluster_size
        _set(self, algorithm=algo,
             radius=_int("radius", self.radius, 0, None, "px"),
             time_window_ns=_float("time_window_ns", self.time_window_ns, 0.0, 1e10, "ns"),
             min_cluster_size=_int("min_cluster_size", mcs, 1, None, "hits"),
             tot_threshold=_int("tot_threshold", self.tot_threshold, 0, 1023, "ToT counts of 25 ns"),
             eps=_float("eps", self.eps, 0.0, 1e12, "DBSCAN feature units", lo_open=True),
             min_samples=_int("min_samples", self.min_samples, 1, None, "hits"),
             chunk_hits=_int("chunk_hits", self.chunk_hits, 1, None, "hits"))

    @property
    def backend(self) -> ClusteringBackend:
        """The registered backend of :attr:`algorithm`."""
        return clustering_backend(self.algorithm)

    def with_(self, **changes: Any) -> "ClusteringConfig":
        """A validated copy with ``changes``."""
        return replace(self, **changes)

    def to_attrs(self) -> dict[str, Any]:
        """Flat HDF5 attributes (names carry the units)."""
        return {"clustering_algorithm": self.algorithm, "clustering_radius_px": self.radius,
                "clustering_time_window_ns": self.time_window_ns,
                "clustering_min_cluster_size": self.min_cluster_size, "tot_threshold": self.tot_threshold,
                "clustering_eps": self.eps, "clustering_min_samples": self.min_samples,
                "clustering_chunk_hits": self.chunk_hits}

    @classmethod
    def from_attrs(cls, attrs: Any) -> "ClusteringConfig":
        """Inverse of :meth:`to_attrs` (missing keys take the defaults)."""
        keys = {"algorithm": "clustering_algorithm", "radius": "clustering_radius_px",
                "time_window_ns": "clustering_time_window_ns",
                "min_cluster_size": "clustering_min_cluster_size", "tot_threshold": "tot_threshold",
                "eps": "clustering_eps", "min_samples": "clustering_min_samples",
                "chunk_hits": "clustering_chunk_hits"}
        kw = {k: _plain(attrs[a]) for k, a in keys.items() if a in attrs}
        return cls(**kw)

    @classmethod
    def from_pymepix(cls, clustering_args: dict | None = None, dbscan: bool = False,
                     tot_threshold: int | None = None) -> "ClusteringConfig":
        """From pymepix's ``clustering_args`` keys (``epsilon``, ``min_samples``,
        ``tot_threshold``, ``chunk_size_limit``, ``cs_min_cluster_size``, ``cs_max_dist_tof`` s)
        and tango-tpx's ``radius``, ``time_window_ns``, ``min_cluster_size``; other keys are
        ignored here (see :class:`~tango_tpx.processing.centroids.CentroidCalculator`)."""
        a = dict(clustering_args or {})
        kw: dict[str, Any] = {"algorithm": "dbscan" if dbscan else "fast"}
        if "epsilon" in a:
            kw["eps"] = a["epsilon"]
        for k in ("min_samples", "radius", "time_window_ns"):
            if k in a:
                kw[k] = a[k]
        if "chunk_size_limit" in a:
            kw["chunk_hits"] = a["chunk_size_limit"]
        mcs = a.get("min_cluster_size", a.get("cs_min_cluster_size"))
        if mcs is not None:
            kw["min_cluster_size"] = mcs
        if "time_window_ns" not in a and "cs_max_dist_tof" in a:
            kw["time_window_ns"] = float(a["cs_max_dist_tof"]) * 1e9
        tt = tot_threshold if tot_threshold is not None else a.get("tot_threshold")
        if tt is not None:
            kw["tot_threshold"] = tt
        return cls(**kw)


@dataclass(frozen=True)
class EventWindow:
    """Time-of-flight window of an event: a hit is kept when ``start_s <= tof <= end_s``
    (s, both inclusive, as pymepix's ``event_window``); ``end_s`` may be ``inf``."""

    start_s: float = 0.0
    end_s: float = 1e-3

    def __post_init__(self) -> None:
        lo = _float("event window start", self.start_s, 0.0, math.inf, "s")
        hi = _float("event window end", self.end_s, 0.0, math.inf, "s")
        if math.isinf(lo) or hi < lo:
            raise ValueError(f"event window must satisfy 0 <= start <= end (s, end may be inf), "
                             f"got ({self.start_s!r}, {self.end_s!r})")
        _set(self, start_s=lo, end_s=hi)

    @classmethod
    def of(cls, value: "EventWindow | tuple[float, float] | Any") -> "EventWindow":
        """An EventWindow from itself or a (start, end) pair in s."""
        if isinstance(value, EventWindow):
            return value
        try:
            lo, hi = value
        except (TypeError, ValueError):
            raise ValueError(f"event window must be (start, end) in s, got {value!r}") from None
        return cls(lo, hi)

    @classmethod
    def from_ns(cls, start_ns: float, end_ns: float) -> "EventWindow":
        """From ns."""
        return cls(float(start_ns) / 1e9, float(end_ns) / 1e9)

    @property
    def start_ns(self) -> float:
        return self.start_s * 1e9

    @property
    def end_ns(self) -> float:
        return self.end_s * 1e9

    def as_tuple(self) -> tuple[float, float]:
        """(start, end) in s, the form pymepix and the event builder take."""
        return (self.start_s, self.end_s)

    def to_attrs(self) -> dict[str, Any]:
        return {"event_window": [self.start_s, self.end_s], "event_window_unit": "s"}

    @classmethod
    def from_attrs(cls, attrs: Any) -> "EventWindow":
        lo, hi = (float(v) for v in attrs["event_window"])
        return cls(lo, hi)


@dataclass(frozen=True)
class DetectorLayout:
    """One chip (``'single'``, 256 x 256 px) or a 2x2 quad (``'quad'``, 516 x 516 px frame,
    gaps included); the only place the layout name is checked."""

    layout: str = "single"

    def __post_init__(self) -> None:
        name = str(self.layout).strip().lower() if isinstance(self.layout, str) else self.layout
        if name not in FRAME_SIZE_PX:
            raise ValueError(f"layout must be 'single' or 'quad' (one chip, 256 x 256 px, or 2x2 chips, "
                             f"516 x 516 px), got {self.layout!r}")
        _set(self, layout=name)

    @classmethod
    def of(cls, value: "DetectorLayout | str") -> "DetectorLayout":
        return value if isinstance(value, DetectorLayout) else cls(value)

    @property
    def quad(self) -> bool:
        return self.layout == "quad"

    @property
    def frame_size_px(self) -> int:
        """Side of the pixel frame (px)."""
        return FRAME_SIZE_PX[self.layout]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(rows, columns) of a hit map (px)."""
        return (self.frame_size_px, self.frame_size_px)

    @property
    def live_framing(self) -> str:
        """Word framing of the detector's UDP stream: plain words (one chip) or ASI .tpx3 chunks."""
        return "tpx3" if self.quad else "raw"

    def __str__(self) -> str:
        return self.layout

    def to_attrs(self) -> dict[str, Any]:
        return {"layout": self.layout, "frame_size_px": self.frame_size_px}

    @classmethod
    def from_attrs(cls, attrs: Any) -> "DetectorLayout":
        return cls(_plain(attrs["layout"]))


@dataclass(frozen=True, eq=False)
class TimeWalk:
    """Time-walk tables, ns per ToT bin (``lut[i]`` for ToT = (i + 1) * 25 ns), each optional:
    ``pixel_lut`` corrects every hit's ToA, ``centroid_lut`` a centroid's ToF by its largest
    ToT. ``pixel_file`` / ``centroid_file`` name where they came from ('' none)."""

    pixel_lut: np.ndarray | None = None
    centroid_lut: np.ndarray | None = None
    pixel_file: str = ""
    centroid_file: str = ""

    def __post_init__(self) -> None:
        for name in ("pixel_lut", "centroid_lut"):
            lut = getattr(self, name)
            if lut is None:
                continue
            arr = np.asarray(lut, dtype=np.float64)
            if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
                raise ValueError(f"time-walk {name} must be a non-empty 1-D table of finite ns per ToT bin, "
                                 f"got shape {np.shape(lut)}")
            arr = arr.copy()
            arr.setflags(write=False)
            _set(self, **{name: arr})
        _set(self, pixel_file=str(self.pixel_file or ""), centroid_file=str(self.centroid_file or ""))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimeWalk):
            return NotImplemented
        return all(_lut_eq(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    def __hash__(self) -> int:
        return hash((self.pixel_file, self.centroid_file))

    def to_attrs(self) -> dict[str, Any]:
        """File names, the tables that are set (``timewalk_lut``, ``cent_timewalk_lut``) and their unit."""
        out: dict[str, Any] = {"timewalk_file": self.pixel_file, "cent_timewalk_file": self.centroid_file,
                               "timewalk_unit": "ns per ToT bin (lut[i] for ToT = (i + 1) * 25 ns)"}
        if self.pixel_lut is not None:
            out["timewalk_lut"] = self.pixel_lut
        if self.centroid_lut is not None:
            out["cent_timewalk_lut"] = self.centroid_lut
        return out

    @classmethod
    def from_attrs(cls, attrs: Any) -> "TimeWalk":
        def lut(key: str):
            a = np.asarray(attrs.get(key, np.zeros(0)), np.float64)
            return a if a.size else None
        return cls(lut("timewalk_lut"), lut("cent_timewalk_lut"), _plain(attrs.get("timewalk_file", "")),
                   _plain(attrs.get("cent_timewalk_file", "")))


def _lut_eq(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, str):
        return a == b
    return bool(np.array_equal(a, b))


def _plain(v: Any) -> Any:
    """An HDF5 attribute value as a plain Python value (bytes -> str, numpy scalar -> item)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


__all__ = ["ClusteringBackend", "ClusteringConfig", "DetectorLayout", "EventWindow", "TimeWalk",
           "register_clustering", "clustering_backend", "clustering_keys", "FRAME_SIZE_PX", "LAYOUTS"]
