"""Shared-memory slot rings: the one implementation behind every bulk hand-off.

A :class:`SlotRing` is ``n_slots`` equal slots of one shared mapping, plus one busy flag
(int64) per slot in the mapping's first page. The mapping is a ``memfd`` (Linux; an
anonymous ``MAP_SHARED`` mmap elsewhere): it has no name in ``/dev/shm`` and vanishes with
the last process that maps it, so nothing is left behind by a crash. Forked children
inherit it; a fresh interpreter maps it from the file descriptor it was started with
(:meth:`SharedMemory.fd`).

Three uses:

* raw bytes (:meth:`SlotRing.slot` / :meth:`SlotRing.view`): the UDP receiver writes
  datagrams into a slot, the decoder reads them;
* structure-of-arrays messages (:class:`MsgRing` ``pack``/``unpack`` of a dataclass of
  numpy arrays): the decoder's ``EventData`` to the centroid workers;
* named numpy arrays at 64-byte aligned offsets (:meth:`SlotRing.place`,
  :meth:`SlotRing.arrays`): the tasks and results of :mod:`tango_tpx.runtime.pool`.

Ownership: exactly one process writes each busy-flag transition (the producer sets it when
it hands a slot over, the consumer clears it after use), so no locks are needed. The
hand-over is ordered by a message on a socket or pipe (a system call); the release relies
on the consumer's reads completing before its later store of the flag, which x86 (and any
CPU with total store order) guarantees.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from typing import Any, Iterable, Mapping

import numpy as np

#: slot size granularity and header size (bytes)
PAGE = 4096
#: byte alignment of each array inside a slot
FIELD_ALIGN = 64
#: meta keys of a message that refers to a ring slot (raw bytes: slot and byte count)
META_SLOT = "ring"
META_BYTES = "n"
#: meta keys of a message whose structure-of-arrays payload lies in a :class:`MsgRing` slot
META_SOA = "soa"
META_FIELDS = "fields"

#: one array placed in a slot: [name, dtype string, element count, byte offset in the slot]
Layout = list


def align(n: int, to: int = FIELD_ALIGN) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return -(-int(n) // to) * to


class SharedMemory:
    """``size`` bytes shared with child processes: a ``memfd`` mapping (or an anonymous
    shared mmap where ``memfd_create`` is missing; those reach forked children only).

    fd: an inherited descriptor to map instead of creating a new area (a started child).
    """

    def __init__(self, size: int, fd: int = -1) -> None:
        self.size = max(int(size), PAGE)
        self.fd = -1
        if fd >= 0:
            self.fd = fd
            self.mm = mmap.mmap(fd, self.size)
        elif hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("tango-tpx-slots", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size)
        else:
            self.mm = mmap.mmap(-1, self.size)

    @property
    def shareable(self) -> bool:
        """True if a fresh interpreter can map it (from :attr:`fd`), not only a forked child."""
        return self.fd >= 0

    def close(self) -> None:
        """Unmap here and close the descriptor (children keep their own mappings). Arrays
        still viewing the mapping keep it alive until they go."""
        try:
            self.mm.close()
        except BufferError:
            pass
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class SlotRing:
    """``n_slots`` shared slots of ``slot_bytes`` each (rounded up to pages), plus busy flags.

    Create it in the parent before its children start; fd: map an inherited descriptor
    (see :meth:`spec` / :meth:`attach`).
    """

    def __init__(self, n_slots: int, slot_bytes: int, fd: int = -1) -> None:
        if n_slots < 1 or n_slots > PAGE // 8:
            raise ValueError(f"n_slots must be in 1..{PAGE // 8}, got {n_slots}")
        self.n_slots = int(n_slots)
        self.slot_bytes = max(PAGE, align(slot_bytes, PAGE))
        self.mem = SharedMemory(PAGE + self.n_slots * self.slot_bytes, fd)
        self.busy = np.frombuffer(self.mem.mm, np.int64, self.n_slots, 0)
        self._data = np.frombuffer(self.mem.mm, np.uint8, self.n_slots * self.slot_bytes, PAGE)

    # -- sharing with a fresh interpreter -----------------------------------------------------
    def spec(self) -> tuple[int, int, int]:
        """(n_slots, slot_bytes, fd): what :meth:`attach` needs in a child that was given ``fd``."""
        return self.n_slots, self.slot_bytes, self.mem.fd

    @classmethod
    def attach(cls, spec: tuple[int, int, int]) -> "SlotRing":
        n_slots, slot_bytes, fd = spec
        return cls(n_slots, slot_bytes, fd=fd)

    # -- raw bytes -------------------------------------------------------------------------
    def slot(self, i: int) -> np.ndarray:
        """Writable uint8 array of slot ``i`` (the producer fills it)."""
        return self._data[i * self.slot_bytes:(i + 1) * self.slot_bytes]

    def view(self, i: int, nbytes: int) -> np.ndarray:
        """Read-only uint8 view of the first ``nbytes`` of slot ``i`` (the consumer)."""
        if not (0 <= i < self.n_slots and 0 <= nbytes <= self.slot_bytes):
            raise ValueError(f"bad ring reference: slot {i}, {nbytes} bytes")
        v = self._data[i * self.slot_bytes:i * self.slot_bytes + nbytes]
        v.flags.writeable = False
        return v

    # -- busy flags ------------------------------------------------------------------------
    def acquire(self, i: int) -> None:
        """Producer: slot ``i`` now belongs to the consumer."""
        self.busy[i] = 1

    def release(self, i: int) -> None:
        """Consumer (or the producer after a failed send): slot ``i`` may be refilled."""
        self.busy[i] = 0

    def is_free(self, i: int) -> bool:
        return not self.busy[i]

    def free_slot(self) -> int:
        """Lowest free slot, or -1."""
        free = np.flatnonzero(self.busy == 0)
        return int(free[0]) if free.size else -1

    # -- named arrays ------------------------------------------------------------------------
    def place(self, i: int, specs: Iterable[tuple[str, Any, int]], start: int = 0
              ) -> tuple[dict[str, np.ndarray], Layout, int] | None:
        """Writable arrays ``name -> dtype[n]`` laid out in slot ``i`` from byte ``start``:
        (arrays, layout for :meth:`arrays`, end offset), or None if they do not fit."""
        layout, off = [], align(start)
        for name, dt, n in specs:
            dt = np.dtype(dt)
            layout.append([name, dt.str, int(n), off])
            off = align(off + int(n) * dt.itemsize)
        if off > self.slot_bytes:
            return None
        return self.arrays(i, layout, writeable=True), layout, off

    def put(self, i: int, arrays: Mapping[str, np.ndarray], start: int = 0
            ) -> tuple[Layout, int] | None:
        """Copy 1-d ``arrays`` into slot ``i`` from byte ``start``: (layout, end offset), or
        None if they do not fit (nothing written)."""
        arrays = {k: np.ascontiguousarray(a).reshape(-1) for k, a in arrays.items()}
        got = self.place(i, [(k, a.dtype, a.size) for k, a in arrays.items()], start)
        if got is None:
            return None
        views, layout, end = got
        for k, a in arrays.items():
            if a.size:
                views[k][...] = a
        return layout, end

    def arrays(self, i: int, layout: Layout, writeable: bool = False) -> dict[str, np.ndarray]:
        """The arrays of ``layout`` (from :meth:`place`/:meth:`put`) as views of slot ``i``;
        ValueError for a reference outside the slot."""
        if not 0 <= i < self.n_slots:
            raise ValueError(f"bad ring reference: slot {i}")
        base = self.slot(i)
        out = {}
        for name, dt, n, off in layout:
            dtype = np.dtype(dt)
            if off < 0 or n < 0 or off + n * dtype.itemsize > self.slot_bytes:
                raise ValueError(f"array {name} outside ring slot {i}")
            v = np.frombuffer(base, dtype, int(n), int(off)) if n else np.zeros(0, dtype)
            if not writeable:
                v.flags.writeable = False
            out[name] = v
        return out

    def offset_of(self, i: int, a: np.ndarray) -> int:
        """Byte offset of ``a``'s data inside slot ``i``, or -1 if ``a`` is not a contiguous
        array lying wholly inside it."""
        if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.size):
            return -1
        base = self.slot(i).ctypes.data
        off = a.ctypes.data - base
        return int(off) if 0 <= off and off + a.nbytes <= self.slot_bytes else -1

    def close(self) -> None:
        """Unmap in this process (forked processes keep their mapping)."""
        self.busy = self._data = None
        self.mem.close()


#: the live pipeline's name for a ring of raw byte slots
RawRing = SlotRing


class MsgRing(SlotRing):
    """Shared slots for structure-of-arrays messages (e.g. ``EventData`` from the decoder to
    the centroid workers): the producer copies the fields into a free slot (one copy instead
    of the two of a socket, and no I/O-thread work), the message carries the slot number,
    class name and field layout; the consumer builds the object from read-only views and
    releases the slot after ``process``."""

    def pack(self, i: int, data: Any) -> dict | None:
        """Copy the fields of ``data`` (a dataclass of numpy arrays) into slot ``i``; returns
        the message meta, or None if they do not fit (nothing is marked busy)."""
        got = self.put(i, {f.name: getattr(data, f.name) for f in dataclasses.fields(data)})
        if got is None:
            return None
        return {META_SLOT: i, META_SOA: type(data).__name__, META_FIELDS: got[0]}

    def unpack(self, meta: dict, cls: type) -> Any:
        """The object described by ``meta`` (from :meth:`pack`), built on read-only views
        of its slot (valid until the slot is released)."""
        return cls(**self.arrays(int(meta[META_SLOT]), meta[META_FIELDS]))


__all__ = ["PAGE", "FIELD_ALIGN", "META_SLOT", "META_BYTES", "META_SOA", "META_FIELDS", "align",
           "SharedMemory", "SlotRing", "RawRing", "MsgRing"]
