"""pymepix import path of ``UdpSampler(address, longtime, chunk_size=10000, flush_timeout=0.3, ...)``.

The receiver is tango-tpx's zero-copy UDP stage
(:class:`tango_tpx.pipeline.udpsampler.UdpSampler`: receive straight into shared memory,
hand-off without copies, lossless recording off the receive path). Parameters mean what
they mean in pymepix: a chunk is handed on once it holds more than ``chunk_size`` x 8192
bytes (capped at ``chunk_bytes``, default 4 MiB, the size of the receive buffers; at least
64 KiB) or ``flush_timeout`` s after its first datagram. ``longtime`` is accepted for pymepix's
signature; the receiver does not decode, the decode stage takes it (see
:mod:`.pipeline_packet_processor`).
"""

from __future__ import annotations

from typing import Any

from ..pipeline.udpsampler import DEFAULT_CHUNK_BYTES, MAX_DATAGRAM, open_udp_socket
from ..pipeline.udpsampler import UdpSampler as _ZeroCopyReceiver

#: pymepix's chunk_size unit, bytes
CHUNK_UNIT_BYTES = 8192
#: datagram count limit handed to the receiver: never reached, bytes and time decide
_NO_DATAGRAM_LIMIT = 1 << 40


class UdpSampler(_ZeroCopyReceiver):
    """UDP receiver stage (a ``multiprocessing.Process``) with pymepix's signature."""

    def __init__(self, address: tuple[str, int], longtime: Any, chunk_size: int = 10000,
                 flush_timeout: float = 0.3, input_queue: Any = None, create_output: bool = True,
                 num_outputs: int = 1, shared_output: Any = None, *,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, **kwargs: Any) -> None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1 (units of {CHUNK_UNIT_BYTES} bytes), got {chunk_size!r}")
        self.pymepix_chunk_size = int(chunk_size)
        handoff = max(MAX_DATAGRAM, min(int(chunk_size) * CHUNK_UNIT_BYTES, int(chunk_bytes)))
        super().__init__(address, _NO_DATAGRAM_LIMIT, flush_timeout, input_queue, create_output,
                         num_outputs, shared_output, chunk_bytes=handoff, **kwargs)

    def create_socket_connection(self, address: tuple[str, int]):
        """Bind the UDP socket (large receive buffer, drop reporting); returns it. Raises
        OSError naming the address."""
        sock, granted = open_udp_socket(str(address[0]), int(address[1]), rcvbuf=self.rcvbuf_bytes)
        if self.wiring is not None:
            self.wiring.counters.set("rcvbuf_bytes", granted)
        return sock

    def init_new_process(self) -> None:
        """Open what lives in the receiving process (pymepix hook): the socket, when it is
        not open yet (``pre_run`` opens it in a pipeline)."""
        if getattr(self, "sock", None) is None:
            self.sock = self.create_socket_connection(self.address)


__all__ = ["UdpSampler"]
