"""Message types and the ZeroMQ frame format of the live pipeline.

Every message between stages (and on the public PUB stream) is one ZeroMQ multipart
message of numpy buffers, never a pickle:

``[header, buf_0, buf_1, ...]``

* ``header``: UTF-8 JSON object
  ``{"v": 1, "type": <MessageType int>, "seq": <int>, "kind": <str>, "fields": [[name, dtype, n], ...], "meta": {...}}``

  - ``kind`` says how to rebuild the payload: ``"array"`` (one numpy array, field name
    ``"data"``), a structure-of-arrays class name (``"PixelHits"``, ``"Triggers"``,
    ``"Events"``, ``"TriggerTable"``, ``"Centroids"``: one buffer per dataclass field, in
    the order of ``fields``), ``"str"`` (``meta["text"]``) or ``"none"``.
  - ``dtype`` is the numpy dtype string (``"<u2"``, ``"<i8"`` ...), ``n`` the element count.
  - ``seq`` is the sender's sequence number (used to re-order centroid results).
* ``buf_i``: the raw little-endian bytes of field ``i`` (sent and received zero-copy).

On the public PUB socket (``AcquisitionController(stream_address=...)``) a topic frame
with the message type name (``b"PixelData"``, ``b"TriggerData"``, ``b"EventData"``,
``b"CentroidData"``) is prepended, so a viewer subscribes with e.g.
``sub.setsockopt(zmq.SUBSCRIBE, b"CentroidData")`` and decodes ``frames[1:]`` with
:func:`decode_frames`.

Settings versions: the armed pipeline (:mod:`.gated`, what the ``AcquisitionController`` and
the Tango device run) tags every message made from live data with the version of the live
settings that made it, ``meta["sv"]`` (int, :attr:`~.livesettings.LiveSettings.version`); on
the PUB stream it is in the header, and ``data_queue`` gets a :class:`QueueMessage`: the
``(MessageType, data)`` pair as before (a 2-tuple, so ``t, d = msg`` still works, with every
payload shape unchanged) whose ``settings_version`` attribute says which (None when the
pipeline has no live settings).

Units of the payloads are those of their classes: times in int64 counts of 25/4096 ns,
ToT in counts of 25 ns, x/y in pixels, raw data as the SPIDR little-endian uint64 words.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from enum import IntEnum
from typing import Any

import numpy as np

FORMAT_VERSION = 1


class MessageType(IntEnum):
    """pymepix message types (same numbers) plus internal control messages."""

    RawData = 0
    PixelData = 1
    EventData = 2
    CentroidData = 3
    OpenFileCommand = 4
    CloseFileCommand = 5
    TriggerData = 8
    #: internal: end of stream; ``meta`` carries totals of the sender.
    EndOfStream = 100


class QueueMessage(tuple):
    """What ``data_queue`` receives: the pair ``(MessageType, data)`` (a plain 2-tuple to any
    code that unpacks or indexes it) plus ``settings_version``: the live-settings version
    that made the data (int), or None outside an armed pipeline."""

    def __new__(cls, msg_type: Any, data: Any, settings_version: int | None = None) -> "QueueMessage":
        self = super().__new__(cls, (msg_type, data))
        self.settings_version = settings_version
        return self

    def __reduce__(self):
        return (QueueMessage, (self[0], self[1], self.settings_version))


#: structure-of-arrays classes that may travel in a message: kind -> "module:Class".
SOA_CLASSES: dict[str, str] = {
    "PixelHits": "tango_tpx.tpx3.hits:PixelHits",
    "Triggers": "tango_tpx.tpx3.hits:Triggers",
    "Events": "tango_tpx.processing.events:Events",
    "TriggerTable": "tango_tpx.processing.events:TriggerTable",
    "Centroids": "tango_tpx.processing.centroids:Centroids",
}
_class_cache: dict[str, type] = {}


class MessageFormatError(ValueError):
    """A received multipart message does not follow the documented format."""


def _soa_class(kind: str) -> type:
    cls = _class_cache.get(kind)
    if cls is None:
        try:
            module, name = SOA_CLASSES[kind].split(":")
        except KeyError:
            raise MessageFormatError(f"unknown payload kind {kind!r}") from None
        cls = getattr(importlib.import_module(module), name)
        _class_cache[kind] = cls
    return cls


def encode_frames(msg_type: int, data: Any, seq: int = 0, meta: dict | None = None) -> list:
    """Build the frames ``[header, buffers...]`` for one message (no copies of the arrays).

    data: a numpy array, a structure-of-arrays dataclass (see :data:`SOA_CLASSES`), a
    ``str`` or ``None``.
    """
    meta = dict(meta) if meta else {}
    bufs: list = []
    if data is None:
        kind, flds = "none", []
    elif isinstance(data, str):
        kind, flds = "str", []
        meta["text"] = data
    elif isinstance(data, np.ndarray):
        arr = np.ascontiguousarray(data)
        kind, flds = "array", [["data", arr.dtype.str, int(arr.size)]]
        bufs.append(arr)
    elif dataclasses.is_dataclass(data) and type(data).__name__ in SOA_CLASSES:
        kind, flds = type(data).__name__, []
        for f in dataclasses.fields(data):
            arr = np.ascontiguousarray(getattr(data, f.name))
            flds.append([f.name, arr.dtype.str, int(arr.size)])
            bufs.append(arr)
    else:
        raise TypeError(f"cannot send payload of type {type(data).__name__}")
    header = {"v": FORMAT_VERSION, "type": int(msg_type), "seq": int(seq), "kind": kind,
              "fields": flds, "meta": meta}
    return [json.dumps(header, separators=(",", ":")).encode()] + bufs


def _buffer(frame) -> memoryview | bytes:
    return frame.buffer if hasattr(frame, "buffer") else frame


def decode_frames(frames: list) -> tuple[MessageType | int, Any, int, dict]:
    """Inverse of :func:`encode_frames`: ``(type, data, seq, meta)``; arrays are zero-copy
    (read-only) views of the received frames.

    Raises :class:`MessageFormatError` for anything that does not follow the format.
    """
    if not frames:
        raise MessageFormatError("empty message")
    try:
        header = json.loads(bytes(_buffer(frames[0])))
        mtype = int(header["type"])
        kind = header["kind"]
        flds = header["fields"]
        seq = int(header.get("seq", 0))
        meta = header.get("meta", {}) or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageFormatError(f"bad header: {exc}") from None
    if len(frames) != 1 + len(flds):
        raise MessageFormatError(f"header lists {len(flds)} buffers, message has {len(frames) - 1}")
    try:
        mtype = MessageType(mtype)
    except ValueError:
        pass
    arrays = {}
    for (name, dt, n), frame in zip(flds, frames[1:]):
        arr = np.frombuffer(_buffer(frame), dtype=np.dtype(dt))
        if arr.size != n:
            raise MessageFormatError(f"field {name}: expected {n} elements, got {arr.size}")
        arrays[name] = arr
    if kind == "none":
        data = None
    elif kind == "str":
        data = str(meta.get("text", ""))
    elif kind == "array":
        data = arrays["data"]
    else:
        data = _soa_class(kind)(**arrays)
    return mtype, data, seq, meta
