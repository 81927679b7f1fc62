"""Shared-memory slots for the raw hand-off UdpSampler -> decoder (no copy, no socket I/O).

The UDP receiver writes datagrams straight into a slot of an anonymous shared mapping that
the pipeline creates before it forks the stages, so the decoder process sees the same
pages. Over ZeroMQ only a small ``RawData`` message travels: ``data`` None and ``meta``
``{"ring": slot, "n": nbytes}``. Each slot has a busy flag (int64) in the first page of
the mapping: the receiver sets it when it hands the slot over, the consumer clears it after
``process`` returned, so exactly one process writes each transition (no locks). The
hand-over is ordered by the ZeroMQ message (a system call); the release relies on the
consumer's reads completing before its later store of the flag, which x86 (and any CPU
with total store order) guarantees.

A consumer gets the bytes with :meth:`RawRing.view` (read-only numpy uint8, valid until it
releases the slot); a stage that keeps raw bytes beyond ``process`` must copy them.
"""

from __future__ import annotations

import mmap

import numpy as np

#: slot size granularity and header size (bytes)
PAGE = 4096
#: meta key of a RawData message that refers to a ring slot
META_SLOT = "ring"
META_BYTES = "n"


class RawRing:
    """``n_slots`` shared slots of ``slot_bytes`` each (rounded up to pages), plus busy flags.

    Create it in the parent before the stage processes fork; every forked process uses it.
    """

    def __init__(self, n_slots: int, slot_bytes: int) -> None:
        if n_slots < 1 or n_slots > PAGE // 8:
            raise ValueError(f"n_slots must be in 1..{PAGE // 8}, got {n_slots}")
        self.n_slots = int(n_slots)
        self.slot_bytes = -(-int(slot_bytes) // PAGE) * PAGE
        self._mm = mmap.mmap(-1, PAGE + self.n_slots * self.slot_bytes)   # MAP_SHARED | ANON
        self.busy = np.frombuffer(self._mm, np.int64, self.n_slots, 0)
        self._data = np.frombuffer(self._mm, np.uint8, self.n_slots * self.slot_bytes, PAGE)

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

    def acquire(self, i: int) -> None:
        """Producer: slot ``i`` now belongs to the consumer."""
        self.busy[i] = 1

    def release(self, i: int) -> None:
        """Consumer (or the producer after a failed send): slot ``i`` may be refilled."""
        self.busy[i] = 0

    def is_free(self, i: int) -> bool:
        return not self.busy[i]

    def close(self) -> None:
        """Unmap in this process (views must be gone; forked processes keep their mapping)."""
        self.busy = self._data = None
        try:
            self._mm.close()
        except BufferError:
            pass        # a view is still alive: the mapping goes with the last reference


#: meta keys of a message whose structure-of-arrays payload lies in a :class:`MsgRing` slot
META_SOA = "soa"
META_FIELDS = "fields"
#: byte alignment of each field inside a slot
FIELD_ALIGN = 64


class MsgRing(RawRing):
    """Shared slots for structure-of-arrays messages (e.g. ``EventData`` from the decoder to
    the centroid workers): the producer copies the fields into a free slot (one copy instead
    of the two of a socket, and no I/O-thread work), the message carries the slot number,
    class name and field layout; the consumer builds the object from read-only views and
    releases the slot after ``process``."""

    def pack(self, i: int, data) -> dict | None:
        """Copy the fields of ``data`` (a dataclass of numpy arrays) into slot ``i``; returns
        the message meta, or None if they do not fit (nothing is marked busy)."""
        import dataclasses
        flds = []
        off = 0
        arrays = []
        for f in dataclasses.fields(data):
            a = np.ascontiguousarray(getattr(data, f.name))
            off = -(-off // FIELD_ALIGN) * FIELD_ALIGN
            flds.append([f.name, a.dtype.str, int(a.size), off])
            arrays.append((off, a))
            off += a.nbytes
        if off > self.slot_bytes:
            return None
        dst = self.slot(i)
        for o, a in arrays:
            if a.nbytes:
                dst[o:o + a.nbytes] = a.view(np.uint8).reshape(-1)
        return {META_SLOT: i, META_SOA: type(data).__name__, META_FIELDS: flds}

    def unpack(self, meta: dict, cls: type):
        """The object described by ``meta`` (from :meth:`pack`), built on read-only views
        of its slot (valid until the slot is released)."""
        i = int(meta[META_SLOT])
        if not 0 <= i < self.n_slots:
            raise ValueError(f"bad ring reference: slot {i}")
        base = self.slot(i)
        kw = {}
        for name, dt, n, off in meta[META_FIELDS]:
            dtype = np.dtype(dt)
            if off < 0 or off + n * dtype.itemsize > self.slot_bytes:
                raise ValueError(f"field {name} outside ring slot {i}")
            v = np.frombuffer(base, dtype, int(n), int(off)) if n else np.zeros(0, dtype)
            v.flags.writeable = False
            kw[name] = v
        return cls(**kw)

    def free_slot(self) -> int:
        """Lowest free slot, or -1."""
        free = np.flatnonzero(self.busy == 0)
        return int(free[0]) if free.size else -1
