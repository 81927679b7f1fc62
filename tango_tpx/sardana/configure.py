"""``tango-tpx sardana-setup``: Pool, MacroServer, Door, Timepix3 controllers and a measurement group.

Three steps, each idempotent (run it twice and nothing is created twice):

1. :func:`register_sardana` writes the server ``Sardana/<instance>`` with its Pool, MacroServer
   and Door into the database, with ``PoolPath`` (the Timepix3 controllers), ``MacroPath`` (the
   ``tpx3_*`` macros), ``PythonPath``, ``PoolNames``, the Door ``Id`` and, when given, the
   MacroServer ``EnvironmentDb``;
2. :func:`configure_pool` asks the running Pool to create the three Timepix3 controllers and
   their elements, a dummy motor controller with ``mot01``, and the measurement group
   ``tpx3_mg`` with every Timepix3 channel (the image channel with value references on);
3. :func:`configure_environment` sets the MacroServer environment: ``ActiveMntGrp``,
   ``Tpx3Device`` (the device the macros drive) and, when given, ``ScanDir``/``ScanFile``.

:func:`sardana_setup` runs the three and starts a temporary ``Sardana`` server for steps 2
and 3 when none is running (everything it creates is kept in the database).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from tango_tpx.sardana import (
    CONTROLLER_DIR,
    CT_CHANNELS,
    DEFAULT_DEVICE,
    DEFAULT_INSTANCE,
    DUMMY_MOTOR,
    IMAGE_CHANNEL,
    MACRO_DIR,
    MEASUREMENT_GROUP,
    PACKAGE_PARENT,
    TOF_CHANNEL,
)

#: Client timeout for the Pool's Create* commands (they load modules and create devices), ms.
POOL_TIMEOUT_MS = 30000


@dataclass(frozen=True)
class SardanaNames:
    """Device names of one ``Sardana/<instance>`` server."""

    instance: str = DEFAULT_INSTANCE

    @property
    def server(self) -> str:
        return f"Sardana/{self.instance}"

    @property
    def pool(self) -> str:
        return f"pool/{self.instance}/1"

    @property
    def macroserver(self) -> str:
        return f"macroserver/{self.instance}/1"

    @property
    def door(self) -> str:
        return f"door/{self.instance}/1"

    @property
    def devices(self) -> tuple[str, str, str]:
        return (self.pool, self.macroserver, self.door)


@dataclass(frozen=True)
class ControllerSpec:
    """A Pool controller and its elements: (axis, element name)."""

    kind: str        # Pool element type: CTExpChannel, TwoDExpChannel, OneDExpChannel, Motor
    library: str     # module file in PoolPath (or a built-in Sardana controller)
    klass: str
    name: str
    elements: tuple[tuple[int, str], ...]
    properties: dict[str, str] = field(default_factory=dict)


def timepix3_controllers(device: str = DEFAULT_DEVICE, timeout_s: float = 3.0) -> list[ControllerSpec]:
    """The controllers ``sardana-setup`` creates for ``device`` (plus the dummy motor)."""
    props = {"Device": device, "Timeout": f"{timeout_s:g}"}
    return [
        ControllerSpec("CTExpChannel", "Timepix3CounterTimerCtrl.py", "Timepix3CounterTimerCtrl", "tpx3_ctctrl",
                       tuple(enumerate(CT_CHANNELS, start=1)), dict(props)),
        ControllerSpec("TwoDExpChannel", "Timepix3TwoDCtrl.py", "Timepix3TwoDCtrl", "tpx3_2dctrl",
                       ((1, IMAGE_CHANNEL),), dict(props)),
        ControllerSpec("OneDExpChannel", "Timepix3TofCtrl.py", "Timepix3TofCtrl", "tpx3_tofctrl",
                       ((1, TOF_CHANNEL),), dict(props)),
        ControllerSpec("Motor", "DummyMotorController.py", "DummyMotorController", "motctrl01",
                       ((1, DUMMY_MOTOR),)),
    ]


def _merge_path(current: list[str], wanted: str) -> list[str]:
    return current if wanted in current else [wanted, *current]


def register_sardana(db: Any, names: SardanaNames = SardanaNames(), env_db: str | None = None) -> list[str]:
    """Register Pool, MacroServer and Door of ``Sardana/<instance>`` in ``db`` (a tango.Database).

    Keeps devices and path entries already there; returns one line per change made (empty
    when everything was already in place).
    """
    import tango

    changes: list[str] = []
    existing = set(db.get_device_class_list(names.server).value_string[0::2])
    for klass, dev in (("Pool", names.pool), ("MacroServer", names.macroserver), ("Door", names.door)):
        if dev.lower() not in {d.lower() for d in existing}:
            info = tango.DbDevInfo()
            info.name, info._class, info.server = dev, klass, names.server
            db.add_device(info)
            changes.append(f"registered {klass} {dev} in server {names.server}")

    def ensure(dev: str, prop: str, values: list[str], merge: bool = False) -> None:
        current = list(db.get_device_property(dev, prop)[prop])
        wanted = values
        if merge:
            wanted = current
            for v in reversed(values):
                wanted = _merge_path(wanted, v)
        if current != wanted:
            db.put_device_property(dev, {prop: wanted})
            changes.append(f"{dev}: {prop} = {wanted}")

    ensure(names.pool, "PoolPath", [str(CONTROLLER_DIR)], merge=True)
    ensure(names.pool, "PythonPath", [str(PACKAGE_PARENT)], merge=True)
    ensure(names.macroserver, "PoolNames", [names.pool], merge=True)
    ensure(names.macroserver, "MacroPath", [str(MACRO_DIR)], merge=True)
    ensure(names.macroserver, "PythonPath", [str(PACKAGE_PARENT)], merge=True)
    if env_db:
        ensure(names.macroserver, "EnvironmentDb", [str(env_db)])
    ensure(names.door, "Id", ["1"])
    return changes


def _names_in(pool: Any, attribute: str) -> set[str]:
    value = pool.read_attribute(attribute).value
    return {json.loads(item)["name"].lower() for item in (value or ())}


def configure_pool(pool_name: str, device: str = DEFAULT_DEVICE, timeout_s: float = 3.0,
                   say: Callable[[str], None] = print) -> list[str]:
    """Create the controllers, elements and measurement group in the running Pool ``pool_name``.

    Elements that exist already are left alone (a controller whose ``Device`` property
    differs gets the new value in the database, used from the next Pool start). Returns
    the lines describing what was created.
    """
    import tango

    pool = tango.DeviceProxy(pool_name)
    pool.set_timeout_millis(POOL_TIMEOUT_MS)
    db = tango.Database(pool.get_db_host(), int(pool.get_db_port()))
    created: list[str] = []
    controllers = _names_in(pool, "ControllerList")
    for spec in timepix3_controllers(device, timeout_s):
        if spec.name.lower() not in controllers:
            args = [spec.kind, spec.library, spec.klass, spec.name]
            for key, value in spec.properties.items():
                args += [key, value]
            pool.command_inout("CreateController", args)
            created.append(f"controller {spec.name} ({spec.klass}, {spec.kind})"
                           + (f" -> {spec.properties['Device']}" if "Device" in spec.properties else ""))
        elif spec.properties:
            full = json.loads(next(c for c in pool.read_attribute("ControllerList").value
                                   if json.loads(c)["name"].lower() == spec.name.lower()))["full_name"]
            dev_name = full.split("://")[-1].split("/", 1)[-1] if "://" in full else full
            current = list(db.get_device_property(dev_name, "Device")["Device"])
            if current and current != [spec.properties["Device"]]:
                db.put_device_property(dev_name, {"Device": [spec.properties["Device"]]})
                say(f"sardana-setup: {spec.name}: Device changed from {current[0]} to "
                    f"{spec.properties['Device']} (restart Sardana to use it)")
        kinds = "MotorList" if spec.kind == "Motor" else "ExpChannelList"
        present = _names_in(pool, kinds)
        for axis, element in spec.elements:
            if element.lower() not in present:
                pool.command_inout("CreateElement", [spec.kind, spec.name, str(axis), element])
                created.append(f"element {element} ({spec.kind}, {spec.name} axis {axis})")
    if MEASUREMENT_GROUP.lower() not in _names_in(pool, "MeasurementGroupList"):
        channels = [*CT_CHANNELS, IMAGE_CHANNEL, TOF_CHANNEL]
        pool.command_inout("CreateMeasurementGroup", [MEASUREMENT_GROUP, *channels])
        created.append(f"measurement group {MEASUREMENT_GROUP}: {', '.join(channels)} "
                       f"(timer {CT_CHANNELS[0]})")
        _enable_value_refs(pool, MEASUREMENT_GROUP, IMAGE_CHANNEL)
        created.append(f"{MEASUREMENT_GROUP}: value references on for {IMAGE_CHANNEL}")
    return created


def _enable_value_refs(pool: Any, mg_name: str, channel: str, timeout: float = 30.0) -> None:
    """Turn value references on for ``channel`` in the measurement group's configuration.

    Also records the channel's data type (float64, the type of the image's Value): Sardana's
    NXscan recorder needs it to turn ``h5file://`` references into a virtual dataset, and
    would otherwise take the type of the reference (a string) and give up.
    """
    import tango

    full = next(json.loads(m)["full_name"] for m in pool.read_attribute("MeasurementGroupList").value
                if json.loads(m)["name"].lower() == mg_name.lower())
    deadline = time.monotonic() + timeout
    while True:
        try:
            mg = tango.DeviceProxy(full)
            config = json.loads(mg.read_attribute("Configuration").value)
            break
        except tango.DevFailed:  # the new device may need a moment to be exported
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for ctrl in config["controllers"].values():
        for ch in ctrl["channels"].values():
            if ch["name"].lower() == channel.lower():
                ch["value_ref_enabled"] = True
                ch.setdefault("value_ref_pattern", "")
                ch["data_type"] = "float64"
    mg.write_attribute("Configuration", json.dumps(config))


def configure_environment(macroserver: str, device: str = DEFAULT_DEVICE, scan_dir: str | None = None,
                          scan_file: str = "tpx3_scans.h5") -> list[str]:
    """Set ``ActiveMntGrp``, ``Tpx3Device`` and (with ``scan_dir``) ``ScanDir``/``ScanFile``
    in the MacroServer environment; returns the lines describing what was set."""
    import taurus
    from sardana.taurus.core.tango.sardana import registerExtensions

    registerExtensions()
    ms = taurus.Device(macroserver)
    env = {"ActiveMntGrp": MEASUREMENT_GROUP, "Tpx3Device": device}
    if scan_dir:
        env.update(ScanDir=str(scan_dir), ScanFile=[scan_file])
    current = ms.getEnvironment() or {}
    done = []
    for key, value in env.items():
        if current.get(key) != value:
            ms.putEnvironment(key, value)
            done.append(f"environment {key} = {value}")
    return done


def sardana_setup(tango_host: str, *, instance: str = DEFAULT_INSTANCE, device: str = DEFAULT_DEVICE,
                  timeout_s: float = 3.0, scan_dir: str | None = None, env_db: str | None = None,
                  log: IO[str] | None = None, say: Callable[[str], None] = print) -> list[str]:
    """Register, then configure a running ``Sardana/<instance>`` (or a temporary one started
    here and stopped afterwards). Returns every change made; [] when all was in place."""
    import tango

    from tango_tpx.device.database import stop_process_group
    from tango_tpx.sardana.stack import start_sardana

    names = SardanaNames(instance)
    host, port = tango_host.rsplit(":", 1)
    db = tango.Database(host, int(port))
    changes = register_sardana(db, names, env_db=env_db)
    for line in changes:
        say(f"sardana-setup: {line}")
    proc = None
    try:
        tango.DeviceProxy(f"tango://{tango_host}/{names.pool}").ping()
        running = all(_answers(f"tango://{tango_host}/{d}") for d in names.devices)
    except tango.DevFailed:
        running = False
    if not running:
        say(f"sardana-setup: starting Sardana {instance} for the set-up (stopped again at the end)")
        proc = start_sardana(instance, tango_host, names.devices, log=log)
    try:
        more = configure_pool(f"tango://{tango_host}/{names.pool}", device, timeout_s, say=say)
        more += configure_environment(f"tango://{tango_host}/{names.macroserver}", device, scan_dir)
    finally:
        if proc is not None:
            stop_process_group(proc, timeout=15.0)
    for line in more:
        say(f"sardana-setup: {line}")
    return changes + more


def _answers(url: str) -> bool:
    import tango

    try:
        dev = tango.DeviceProxy(url)
        dev.set_timeout_millis(3000)
        dev.state()
        return True
    except tango.DevFailed:
        return False
