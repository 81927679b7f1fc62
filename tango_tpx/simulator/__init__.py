"""SPIDR/Timepix3 simulator with ground truth (see :mod:`tango_tpx.simulator.spidr`)."""

from .spidr import Particles, SimConfig, SpidrSimulator, Truth, simulate

__all__ = ["SimConfig", "SpidrSimulator", "Truth", "Particles", "simulate"]
