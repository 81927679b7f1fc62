"""SPIDR/Timepix3 simulator with ground truth (see :mod:`tango_tpx.simulator.spidr`).

Modules: config (:class:`SimConfig`), truth (ground truth), scene (particles and clusters),
readout (readout order, pixel words), outputs (file, UDP), spidr (the simulator), udpsend
(batched UDP sender), cli (``tango-tpx simulate``).
"""

from .spidr import Particles, SimConfig, SpidrSimulator, Truth, simulate

__all__ = ["SimConfig", "SpidrSimulator", "Truth", "Particles", "simulate"]
