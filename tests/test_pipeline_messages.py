"""Unit tests of the pipeline's message format, counters and preview (no processes)."""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.pipeline.counters import SharedCounters, SharedPreview, accumulate_preview
from tango_tpx.pipeline.messages import (MessageFormatError, MessageType, decode_frames,
                                         encode_frames)
from tango_tpx.processing.events import Events
from tango_tpx.tpx3.hits import PixelHits


def test_message_numbers_are_pymepix():
    assert [int(m) for m in (MessageType.RawData, MessageType.PixelData, MessageType.EventData,
                             MessageType.CentroidData, MessageType.OpenFileCommand,
                             MessageType.CloseFileCommand, MessageType.TriggerData)] == [0, 1, 2, 3, 4, 5, 8]


def test_soa_round_trip_zero_copy():
    px = PixelHits(np.array([1, 2, 255], np.uint16), np.array([3, 4, 0], np.uint16),
                   np.array([-5, 1 << 40, 7], np.int64), np.array([10, 1023, 0], np.uint16),
                   np.array([0, 0, 0], np.uint8))
    frames = encode_frames(MessageType.PixelData, px, seq=42, meta={"a": 1})
    assert len(frames) == 1 + 5
    assert frames[3] is not None and np.shares_memory(frames[3], px.toa)   # no copy on send
    mtype, data, seq, meta = decode_frames([bytes(frames[0])] + [memoryview(f) for f in frames[1:]])
    assert mtype is MessageType.PixelData and seq == 42 and meta == {"a": 1}
    assert isinstance(data, PixelHits)
    for name in ("x", "y", "toa", "tot", "chip"):
        assert getattr(data, name).dtype == getattr(px, name).dtype
        assert np.array_equal(getattr(data, name), getattr(px, name))


def test_array_str_none_and_events():
    raw = np.arange(10, dtype=np.uint8)
    t, d, _, _ = decode_frames(encode_frames(MessageType.RawData, raw))
    assert t is MessageType.RawData and np.array_equal(d, raw)
    t, d, _, _ = decode_frames(encode_frames(MessageType.OpenFileCommand, "/tmp/x.raw"))
    assert t is MessageType.OpenFileCommand and d == "/tmp/x.raw"
    t, d, _, _ = decode_frames(encode_frames(MessageType.EndOfStream, None))
    assert t is MessageType.EndOfStream and d is None
    ev = Events.empty(0)
    t, d, _, _ = decode_frames(encode_frames(MessageType.EventData, ev))
    assert isinstance(d, Events) and len(d) == 0


@pytest.mark.parametrize("frames", [[], [b"not json"], [b'{"v":1,"type":1,"kind":"array","fields":[["data","<u2",3]]}'],
                                    [b'{"v":1,"type":1,"kind":"array","fields":[["data","<u2",3]]}', b"\x00" * 4],
                                    [b'{"v":1,"type":1,"kind":"Bogus","fields":[]}']])
def test_bad_messages_raise_clear_error(frames):
    with pytest.raises(MessageFormatError):
        decode_frames(frames)


def test_counters_single_writer_slots_and_reset():
    c = SharedCounters()
    c.add("hits", 5)
    c.add("hits", 7)
    c.set("rcvbuf_bytes", 1000)
    c.worker_add(0, "centroids", 3)
    c.worker_add(5, "centroids", 4)
    c.stage_sent(1, 10)
    c.stage_taken(1, 4)
    snap = c.snapshot()
    assert snap["hits"] == 12 and snap["centroids"] == 7 and snap["rcvbuf_bytes"] == 1000
    assert c.queue_depths(2) == [0, 6]
    c.reset()
    snap = c.snapshot()
    assert snap["hits"] == 0 and snap["centroids"] == 0 and snap["rcvbuf_bytes"] == 1000


def test_preview_accumulate_and_publish():
    hm = np.zeros((4, 5), np.int32)
    hist = np.zeros(4)
    x = np.array([0, 4, 4, 9], np.uint16)      # 9 is outside the map: ignored
    y = np.array([0, 3, 3, 0], np.uint16)
    tof = np.array([0, 24, 25, 99, 100, -1], np.int64)   # bins of 25 over [0, 100)
    accumulate_preview(hm, x, y, hist, tof, 0, 100)
    assert hm[0, 0] == 1 and hm[3, 4] == 2 and hm.sum() == 3
    assert hist.tolist() == [2.0, 1.0, 0.0, 1.0]
    p = SharedPreview(4, 5, n_tof_bins=4)
    p.publish(hm, hist, np.array([1.0, 2, 3, 4]))
    m, h, a = p.read()
    assert np.array_equal(m, hm) and np.array_equal(h, hist) and a.tolist() == [1, 2, 3, 4]
    assert p.frames == 1
