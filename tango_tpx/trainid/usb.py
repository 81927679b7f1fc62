"""pyusb transport for the train-ID receiver (no kernel serial driver needed).

The receiver is a USB-serial bridge. :class:`UsbTransport` finds it by vendor/product id
(default: the common bridges in :data:`DEFAULT_IDS`), detaches the kernel driver from
the interface if one is bound, claims the interface, sets 115200 baud 8N1 for the bridge
families whose vendor requests are known here (FTDI, CP210x, PL2303; a CH340 keeps the
line settings it has) and reads the bulk IN endpoint with a timeout.

FTDI chips prepend 2 modem-status bytes to every USB packet (``wMaxPacketSize`` bytes,
64 at full speed), even when no data follows: :func:`strip_ftdi_status` removes them.

Source strings understood by :func:`parse_usb_source`: ``"usb"`` (any known bridge),
``"usb:0403:6001"`` (vendor:product, hex), ``"usb:0403:6001:1"`` (plus interface number).
Needs read/write access to the USB device node (udev rule or root).
"""

from __future__ import annotations

import errno
from typing import Any, Sequence

from .protocol import TransportError

FTDI_VID = 0x0403
CP210X_VID = 0x10C4
CH340_VID = 0x1A86
PL2303_VID = 0x067B

#: (vendor id, product id) of common USB-serial bridges, tried in this order.
DEFAULT_IDS: tuple[tuple[int, int], ...] = (
    (FTDI_VID, 0x6001),    # FT232R
    (FTDI_VID, 0x6015),    # FT-X series
    (CP210X_VID, 0xEA60),  # CP2102/CP2104
    (CH340_VID, 0x7523),   # CH340
    (PL2303_VID, 0x2303),  # PL2303
)

#: Serial line rate of the receiver.
BAUDRATE = 115200


def parse_usb_source(source: str) -> dict[str, Any]:
    """``'usb'`` / ``'usb:VID:PID'`` / ``'usb:VID:PID:IFACE'`` -> UsbTransport kwargs."""
    parts = source.split(":")
    if parts[0].lower() != "usb" or len(parts) not in (1, 3, 4):
        raise ValueError(f"bad USB source {source!r}: use 'usb', 'usb:VID:PID' or 'usb:VID:PID:IFACE' (hex ids)")
    if len(parts) == 1:
        return {}
    try:
        kw: dict[str, Any] = {"ids": ((int(parts[1], 16), int(parts[2], 16)),)}
        if len(parts) == 4:
            kw["interface"] = int(parts[3])
    except ValueError:
        raise ValueError(f"bad USB source {source!r}: ids must be hex, interface an integer") from None
    return kw


def strip_ftdi_status(data: bytes, packet_size: int = 64) -> bytes:
    """Remove the 2 modem-status bytes at the start of each ``packet_size`` packet."""
    if packet_size <= 2:
        raise ValueError("packet_size must be > 2")
    return b"".join(data[i + 2:i + packet_size] for i in range(0, len(data), packet_size))


def ftdi_baud_divisor(baudrate: int, clock_hz: int = 3_000_000) -> tuple[int, int]:
    """FTDI (FT232R/FT-X, 3 MHz base) SIO_SET_BAUD_RATE (wValue, wIndex) for ``baudrate``.

    The divisor is 14.3 fixed point: integer part in bits 0..13, the eighths encoded in
    bits 14..16 (bit 16 travels in wIndex). 115200 baud -> divisor 26 (0x001A, 0).
    """
    if baudrate <= 0:
        raise ValueError("baudrate must be > 0")
    eighths = round(clock_hz * 8 / baudrate)
    integer, frac = divmod(eighths, 8)
    if integer == 0 or integer > 0x3FFF:
        raise ValueError(f"baud rate {baudrate} out of range for FTDI")
    # eighths -> encoding of the fraction: 0, 1/8, 1/4, 3/8, 1/2, 5/8, 3/4, 7/8
    frac_code = (0, 3, 2, 4, 1, 5, 6, 7)[frac]
    value = integer | (frac_code << 14)
    return value & 0xFFFF, value >> 16


def _usb_errno(exc: Exception) -> int | None:
    return getattr(exc, "errno", None) or getattr(exc, "backend_error_code", None)


def _is_timeout(exc: Exception) -> bool:
    import usb.core
    if isinstance(exc, usb.core.USBTimeoutError):
        return True
    return _usb_errno(exc) in (errno.ETIMEDOUT, 110) or "timed out" in str(exc).lower()


class UsbTransport:
    """Read bytes from a USB-serial bridge through pyusb.

    ids: (vendor, product) pairs tried in order (default :data:`DEFAULT_IDS`);
    interface: interface number; timeout_ms applies to each bulk read;
    device: an already found pyusb device (skips the search; tests use a stand-in).
    ``open()`` raises ``OSError`` (``FileNotFoundError`` when no bridge is present);
    ``read(timeout_s)`` returns ``b''`` on timeout and raises :class:`TransportError`
    when the device is gone.
    """

    def __init__(self, ids: Sequence[tuple[int, int]] | None = None, interface: int = 0,
                 baudrate: int = BAUDRATE, device: Any = None) -> None:
        self.ids = tuple(ids) if ids else DEFAULT_IDS
        self.interface = interface
        self.baudrate = baudrate
        self._given = device
        self._dev: Any = None
        self._ep_in: int | None = None
        self._packet = 64
        self._ftdi = False
        self.detached_kernel_driver = False

    @property
    def description(self) -> str:
        if self._dev is not None:
            return f"usb {self._dev.idVendor:04x}:{self._dev.idProduct:04x} interface {self.interface}"
        return "usb " + ",".join(f"{v:04x}:{p:04x}" for v, p in self.ids)

    @property
    def is_open(self) -> bool:
        return self._dev is not None

    def _find(self) -> Any:
        if self._given is not None:
            return self._given
        import usb.core
        try:
            for vid, pid in self.ids:
                dev = usb.core.find(idVendor=vid, idProduct=pid)
                if dev is not None:
                    return dev
        except usb.core.NoBackendError as exc:
            raise TransportError(errno.ENOSYS, f"no libusb backend: {exc}") from exc
        raise FileNotFoundError(errno.ENOENT, "no USB train-ID receiver found", self.description)

    def open(self) -> None:
        import usb.core
        import usb.util
        self.close()
        dev = self._find()
        try:
            try:
                if dev.is_kernel_driver_active(self.interface):
                    dev.detach_kernel_driver(self.interface)
                    self.detached_kernel_driver = True
            except NotImplementedError:  # not on this platform/backend
                pass
            try:
                cfg = dev.get_active_configuration()
            except usb.core.USBError:
                cfg = None
            if cfg is None:
                dev.set_configuration()
                cfg = dev.get_active_configuration()
            intf = cfg[(self.interface, 0)]
            usb.util.claim_interface(dev, self.interface)
            ep_in = None
            for ep in intf:
                if (usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN
                        and usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK):
                    ep_in = ep
                    break
            if ep_in is None:
                raise TransportError(errno.ENODEV, "no bulk IN endpoint", self.description)
            self._ep_in = ep_in.bEndpointAddress
            self._packet = int(ep_in.wMaxPacketSize) or 64
            self._dev = dev
            self._configure_line(dev)
        except usb.core.USBError as exc:
            self._dispose(dev)
            self._dev = None
            raise TransportError(_usb_errno(exc) or errno.EIO, f"USB open failed: {exc}",
                                 self.description) from exc
        except BaseException:
            self._dispose(dev)
            self._dev = None
            raise

    def _configure_line(self, dev: Any) -> None:
        """Vendor requests for 8N1 at ``self.baudrate``, no flow control."""
        vid = dev.idVendor
        self._ftdi = vid == FTDI_VID
        if vid == FTDI_VID:
            port = self.interface + 1 if self.interface else 0   # wIndex: port A=1.. on multi-port chips
            dev.ctrl_transfer(0x40, 0x00, 0x0000, port, None)      # SIO_RESET (purge)
            dev.ctrl_transfer(0x40, 0x02, 0x0000, port, None)      # SIO_SET_FLOW_CTRL: none
            value, index_hi = ftdi_baud_divisor(self.baudrate)
            dev.ctrl_transfer(0x40, 0x03, value, (index_hi << 8) | port, None)  # SIO_SET_BAUD_RATE
            dev.ctrl_transfer(0x40, 0x04, 0x0008, port, None)      # SIO_SET_DATA: 8N1
        elif vid == CP210X_VID:
            dev.ctrl_transfer(0x41, 0x00, 0x0001, self.interface, None)   # IFC_ENABLE
            dev.ctrl_transfer(0x41, 0x1E, 0, self.interface,
                              self.baudrate.to_bytes(4, "little"))      # SET_BAUDRATE
            dev.ctrl_transfer(0x41, 0x03, 0x0800, self.interface, None)   # SET_LINE_CTL: 8N1
        elif vid == PL2303_VID:
            line = self.baudrate.to_bytes(4, "little") + bytes([0, 0, 8])  # CDC line coding
            dev.ctrl_transfer(0x21, 0x20, 0, self.interface, line)     # SET_LINE_CODING
        # CH340: line settings left as the chip has them (use the ch341 kernel driver and
        # the serial transport where the rate must be set).

    def read(self, timeout_s: float) -> bytes:
        import usb.core
        dev = self._dev
        if dev is None:
            raise TransportError(errno.EBADF, "transport not open", self.description)
        size = self._packet * 8
        try:
            data = bytes(dev.read(self._ep_in, size, timeout=max(1, int(timeout_s * 1000))))
        except usb.core.USBError as exc:
            if _is_timeout(exc):
                return b""
            raise TransportError(_usb_errno(exc) or errno.EIO, f"USB read failed: {exc}",
                                 self.description) from exc
        if self._ftdi:
            data = strip_ftdi_status(data, self._packet)
        return data

    @staticmethod
    def _dispose(dev: Any) -> None:
        import usb.util
        try:
            usb.util.dispose_resources(dev)
        except Exception:  # device already gone
            pass

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is None:
            return
        import usb.util
        try:
            usb.util.release_interface(dev, self.interface)
        except Exception:
            pass
        if self.detached_kernel_driver:
            try:
                dev.attach_kernel_driver(self.interface)
            except Exception:
                pass
            self.detached_kernel_driver = False
        self._dispose(dev)

    def __enter__(self) -> "UsbTransport":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
