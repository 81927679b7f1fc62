"""What the three Timepix3 Pool controllers share: properties, state, synchronisation, start/stop.

Mixed in before the Sardana controller class (``class X(Timepix3CtrlMixin, TwoDController)``).
Every controller of a measurement group calls :meth:`DeviceLink.start` in ``StartAll``; the
link turns the calls of one point into one bounded acquisition of ``AcquisitionTime`` = the
integration time. Synchronisation: ``SoftwareTrigger`` and ``SoftwareGate`` (the Pool starts
each point and waits while the channels are Moving; a gate of the integration time is the
same bounded acquisition). Hardware modes and ``SoftwareStart`` need several acquisitions
per start with a value per trigger, which the device does not buffer: they are refused with
an error naming the mode.

A device in Fault is refused in ``PrepareOne`` (the measurement group's prepare, before the
Pool starts anything). ``LoadOne`` and ``StartAll`` never raise: the Pool runs them in a job
whose completion callback marks its software acquisition ready, and an exception there leaves
that acquisition busy for good (the next ``ct`` or scan of the measurement group would wait
for ever). A failed load or start puts the channels in Fault with its reason instead
(:meth:`DeviceLink.fail`), and the Pool ends the point with Fault.
"""

from __future__ import annotations

from typing import Any

from sardana import State
from sardana.pool import AcqSynch
from sardana.pool.controller import DefaultValue, Description, Type

from tango_tpx.sardana.link import SUPPORTED_SYNCH, DeviceError, get_link

#: Controller properties (``CreateController ... Device NAME Timeout S``).
TIMEPIX3_CTRL_PROPERTIES: dict[str, dict[Any, Any]] = {
    "Device": {Type: str, DefaultValue: "tpx3/detector/1",
               Description: "Timepix3 Tango device (name or tango://HOST:PORT/name)"},
    "Timeout": {Type: float, DefaultValue: 3.0,
                Description: "client timeout of every call to the device, s"},
}

_STATES = {"On": State.On, "Moving": State.Moving, "Fault": State.Fault}


class Timepix3CtrlMixin:
    """Device link, state mapping, synchronisation check, shared start and stop."""

    Device: str
    Timeout: float

    def _init_timepix3(self) -> None:
        self.link = get_link(self.Device, self.Timeout)
        self._synchronization = AcqSynch.SoftwareTrigger

    # -- synchronisation -----------------------------------------------------------------------
    def SetCtrlPar(self, parameter: str, value: Any) -> None:  # noqa: N802 - Sardana API
        if parameter.lower() == "synchronization":
            mode = AcqSynch(value) if not isinstance(value, AcqSynch) else value
            if mode.name not in SUPPORTED_SYNCH:
                raise ValueError(f"{self.GetName()}: synchronization {mode.name} is not supported by the Timepix3 "
                                 f"controllers (supported: {', '.join(SUPPORTED_SYNCH)}); the device makes "
                                 f"one bounded acquisition per start and keeps no values per trigger "
                                 f"or repetition")
            self._synchronization = mode
            return
        super().SetCtrlPar(parameter, value)  # type: ignore[misc]

    def GetCtrlPar(self, parameter: str) -> Any:  # noqa: N802
        if parameter.lower() == "synchronization":
            return self._synchronization
        if parameter.lower() == "latency_time":
            return 0.0
        return super().GetCtrlPar(parameter)  # type: ignore[misc]

    # -- state ---------------------------------------------------------------------------------
    def StateOne(self, axis: int) -> tuple[Any, str]:  # noqa: N802
        state, status = self.link.state()
        return _STATES[state], status

    # -- acquisition ---------------------------------------------------------------------------
    def LoadOne(self, axis: int, value: float, repetitions: int, latency: float) -> None:  # noqa: N802
        try:
            if repetitions != 1:
                raise ValueError(f"{self.GetName()}: {repetitions} repetitions per start are not supported "
                                 f"(one bounded acquisition per start)")
            self.link.load(value)
        except Exception as exc:  # noqa: BLE001 - reported as the channels' Fault (see module docstring)
            self._failed("load", exc)

    def PrepareOne(self, axis: int, value: float, repetitions: int, latency: float,  # noqa: N802
                   nb_starts: int) -> None:
        self.link.check_ready()

    def PreStartOne(self, axis: int, value: float) -> bool:  # noqa: N802
        return True

    def StartOne(self, axis: int, value: float) -> None:  # noqa: N802
        pass  # the one Start per controller is in StartAll

    def StartAll(self) -> None:  # noqa: N802
        try:
            self.link.start(f"{self.GetName()}@{id(self):x}")
        except Exception as exc:  # noqa: BLE001 - reported as the channels' Fault (see module docstring)
            self._failed("start", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, (DeviceError, ValueError)) else f"{self.GetName()}: {what}: {exc}"
        self._log.error("%s failed: %s", what, reason)
        self.link.fail(reason)

    def StopOne(self, axis: int) -> None:  # noqa: N802
        self.link.stop()

    def AbortOne(self, axis: int) -> None:  # noqa: N802
        self.link.stop()


def checked(fn):
    """Decorator: a DeviceError keeps its text; other errors get the controller name."""

    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except DeviceError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise RuntimeError(f"{self.GetName()}.{fn.__name__}: {exc}") from exc

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
