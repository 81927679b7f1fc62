"""Ground truth of a simulated stream: per-particle rows (:class:`Particles`) and the whole
:class:`Truth` (hits, triggers, per-hit particle and trigger numbers), saved as .npz.

Units: times int64 fine units of 25/4096 ns; ToT counts of 25 ns; positions in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..tpx3.hits import PixelHits, Triggers, _SoA
from .config import SimConfig

__all__ = ["Particles", "Truth"]


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
