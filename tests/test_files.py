"""Raw/.tpx3 files: header detection, streaming reads, writers, quad layout."""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.tpx3.files import (
    RawFileWriter,
    Tpx3FileWriter,
    frame_to_quad,
    frame_tpx3,
    inspect_file,
    iter_words,
    map_words,
    quad_map,
    quad_to_frame,
    read_words,
)

from .conftest import CAPTURES, needs_captures

HDR_TIME = 1_700_000_000_123_456_789  # 2023-11-14, a plausible time_ns
MAGIC = 0x33585054


# ---- real captures ------------------------------------------------------------------------

@needs_captures
def test_real_capture_without_header():
    info = inspect_file(CAPTURES / "out_5sec.raw")
    assert (info.kind, info.framing, info.header_time_ns, info.data_offset) == ("raw", "raw", None, 0)
    assert info.n_words == 4_145_752 // 8 and info.trailing_bytes == 0
    # first word is a 0x44 global-time word, yielded as data
    first = next(iter_words(CAPTURES / "out_5sec.raw", chunk_words=4))
    assert int(first[0]) == 0x440004ADF08A12B7


@needs_captures
def test_real_capture_with_header():
    path = CAPTURES / "centroid_pipeline_test.raw"
    info = inspect_file(path)
    head = int.from_bytes(path.read_bytes()[:8], "little")
    assert (info.kind, info.framing, info.data_offset) == ("raw", "raw", 8)
    assert info.header_time_ns == head == 1_667_991_101_711_283_699  # 2022-11-09
    assert info.n_words == (32_768 - 8) // 8 == 4095 and info.trailing_bytes == 0
    words = read_words(path)
    hdr = words >> np.uint64(60)
    assert (hdr == 0xB).sum() == 1858  # the spec's pixel count for this file


@needs_captures
def test_iter_words_chunks_match_whole_file():
    path = CAPTURES / "out_5sec.raw"
    whole = np.fromfile(path, dtype="<u8")
    parts = list(iter_words(path, chunk_words=100_000))
    assert [len(p) for p in parts] == [100_000] * 5 + [18_219]
    assert all(p.dtype == np.uint64 for p in parts)
    assert np.array_equal(np.concatenate(parts), whole)
    sub = np.concatenate(list(iter_words(path, chunk_words=7, start_word=1000, stop_word=1050)))
    assert np.array_equal(sub, whole[1000:1050])


# ---- detection and errors -----------------------------------------------------------------

def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.raw"
    with pytest.raises(FileNotFoundError, match="nope.raw"):
        inspect_file(missing)
    with pytest.raises(IsADirectoryError, match=str(tmp_path.name)):
        inspect_file(tmp_path)
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.raw.*empty"):
        inspect_file(empty)
    short = tmp_path / "short.raw"
    short.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="short.raw"):
        list(iter_words(short))


def test_header_detection_rules(tmp_path):
    pixel = 0xB000000040500000
    # a time_ns header then one pixel word and 3 stray bytes
    p = tmp_path / "h.raw"
    p.write_bytes(HDR_TIME.to_bytes(8, "little") + pixel.to_bytes(8, "little") + b"abc")
    info = inspect_file(p)
    assert (info.header_time_ns, info.data_offset, info.n_words, info.trailing_bytes) == (HDR_TIME, 8, 1, 3)
    assert read_words(p).tolist() == [pixel]
    # header-less: first word is a valid packet
    q = tmp_path / "n.raw"
    q.write_bytes(pixel.to_bytes(8, "little") * 2)
    assert inspect_file(q).header_time_ns is None and inspect_file(q).n_words == 2
    # an invalid nibble that is not a plausible time (year 1970) is data, not a header
    r = tmp_path / "r.raw"
    r.write_bytes((12345).to_bytes(8, "little") + pixel.to_bytes(8, "little"))
    assert inspect_file(r).data_offset == 0 and inspect_file(r).n_words == 2


def test_iter_words_bad_chunk(tmp_path):
    p = tmp_path / "x.raw"
    p.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError):
        list(iter_words(p, chunk_words=0))


# ---- writers ------------------------------------------------------------------------------

def test_raw_writer_roundtrip(tmp_path):
    p = tmp_path / "w.raw"
    words = np.array([0xB000000040500000, 0x6F02704BAF164A60, 0x440004ADF08A12B7], np.uint64)
    with RawFileWriter(p, time_ns=HDR_TIME) as w:
        w.write(words[:1])
        w.write(words[1:].astype(">u8"))  # big-endian input is written little-endian
        w.write(b"")
        w.flush()
        assert w.bytes_written == 24 and w.header_bytes == 8
    assert w.closed
    data = p.read_bytes()
    assert data[:8] == HDR_TIME.to_bytes(8, "little") and len(data) == 32
    info = inspect_file(p)
    assert info.header_time_ns == HDR_TIME and info.n_words == 3
    assert np.array_equal(read_words(p), words)
    with pytest.raises(FileExistsError):
        RawFileWriter(p)


def test_raw_writer_without_header_and_bytes(tmp_path):
    p = tmp_path / "nh.raw"
    w = RawFileWriter(p, header=False)
    w.write(bytes.fromhex("00005040000000b0"))  # little-endian bytes of 0xB000000040500000
    w.write(memoryview(bytes(8)))
    w.close()
    assert inspect_file(p).header_time_ns is None
    assert read_words(p).tolist() == [0xB000000040500000, 0]


def test_tpx3_writer_chunks_by_hand(tmp_path):
    p = tmp_path / "c.tpx3"
    words = np.arange(1, 6, dtype=np.uint64) | np.uint64(0xB << 60)
    with Tpx3FileWriter(p) as w:
        w.write_chip(3, words, chunk_bytes=16)  # chunks of 2, 2, 1 words
    raw = p.read_bytes()
    assert len(raw) == 8 * (5 + 3) == w.bytes_written
    assert raw[:8] == b"TPX3\x03\x00\x10\x00"
    assert raw[24:32] == b"TPX3\x03\x00\x10\x00"
    assert raw[48:56] == b"TPX3\x03\x00\x08\x00"
    info = inspect_file(p)
    assert (info.kind, info.framing, info.data_offset, info.n_words) == ("tpx3", "tpx3", 0, 8)
    got = read_words(p)
    assert got[[1, 2, 4, 5, 7]].tolist() == words.tolist()
    with pytest.raises(FileExistsError):
        Tpx3FileWriter(p)


def test_headered_raw_recording_of_a_framed_stream_has_tpx3_framing(tmp_path):
    """The live pipeline records a quad (.tpx3-framed) stream as pymepix .raw: header, chunks."""
    words = np.arange(1, 4, dtype=np.uint64) | np.uint64(0xB << 60)
    p = tmp_path / "quad.raw"
    with RawFileWriter(p, time_ns=HDR_TIME) as w:
        w.write(frame_tpx3(words, 2, 16))
    info = inspect_file(p)
    assert (info.kind, info.framing, info.header_time_ns, info.data_offset, info.n_words) == \
        ("raw", "tpx3", HDR_TIME, 8, 5)
    assert read_words(p)[[1, 2, 4]].tolist() == words.tolist()


def test_frame_tpx3_chip_changes():
    words = np.array([10, 11, 12, 13], np.uint64)
    out = frame_tpx3(words, np.array([0, 0, 1, 0]), chunk_bytes=8192)
    hdr = lambda chip, n: MAGIC | (chip << 32) | ((8 * n) << 48)  # noqa: E731
    assert out.tolist() == [hdr(0, 2), 10, 11, hdr(1, 1), 12, hdr(0, 1), 13]
    assert frame_tpx3(np.zeros(0, np.uint64), 0).size == 0
    with pytest.raises(ValueError):
        frame_tpx3(words, 0, chunk_bytes=70000)


# ---- quad layout --------------------------------------------------------------------------

def test_quad_corners_by_hand():
    # chips "2 1 / 3 0": chip0 bottom-right (x+258, 513-y), chip1 top-right (513-x, y),
    # chip2 top-left (255-x, y), chip3 bottom-left (x, 513-y)
    cases = {
        (0, 0, 0): (258, 513), (255, 255, 0): (513, 258), (0, 255, 0): (258, 258),
        (0, 0, 1): (513, 0), (255, 255, 1): (258, 255),
        (0, 0, 2): (255, 0), (255, 255, 2): (0, 255),
        (0, 0, 3): (0, 513), (255, 255, 3): (255, 258),
    }
    x, y, c = (np.array(v) for v in zip(*cases))
    X, Y = quad_to_frame(x, y, c)
    assert list(zip(X.tolist(), Y.tolist())) == list(cases.values())
    assert X.dtype == np.uint16
    for (xx, yy, cc), (XX, YY) in cases.items():
        assert quad_map(xx, yy, cc) == (XX, YY)  # the numba scalar version


def test_quad_roundtrip_all_pixels():
    x, y = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    for chip in range(4):
        X, Y = quad_to_frame(x.ravel(), y.ravel(), chip)
        assert len(set(zip(X.tolist()[:1000], Y.tolist()[:1000]))) == 1000
        bx, by, bc = frame_to_quad(X, Y)
        assert np.array_equal(bx, x.ravel()) and np.array_equal(by, y.ravel()) and np.all(bc == chip)
    # every valid frame pixel maps to exactly one chip pixel and back
    valid = np.r_[0:256, 258:514]
    X, Y = np.meshgrid(valid, valid, indexing="ij")
    bx, by, bc = frame_to_quad(X, Y)
    X2, Y2 = quad_to_frame(bx, by, bc)
    assert np.array_equal(X2, X.ravel()) and np.array_equal(Y2, Y.ravel())
    assert np.bincount(bc).tolist() == [65536] * 4


def test_quad_errors():
    with pytest.raises(ValueError, match="gap"):
        frame_to_quad([256], [0])
    with pytest.raises(ValueError, match="gap"):
        frame_to_quad([0], [514])
    with pytest.raises(ValueError, match="0..3"):
        quad_to_frame([0], [0], [4])
    with pytest.raises(ValueError, match="0..255"):
        quad_to_frame([256], [0], [0])


@needs_captures
def test_memory_map_equals_streamed_words_and_skips_header():
    for name, offset in (("centroid_pipeline_test.raw", 8), ("out_5sec.raw", 0)):
        path = CAPTURES / name
        mapped = map_words(path)
        expected = np.fromfile(path, dtype="<u8", offset=offset)
        assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
        np.testing.assert_array_equal(mapped, expected)
        np.testing.assert_array_equal(mapped, np.concatenate(list(iter_words(path, chunk_words=1000))))


def test_memory_map_leaves_out_trailing_partial_word(tmp_path):
    p = tmp_path / "t.raw"
    p.write_bytes(np.array([0xB000000000000001, 0xB000000000000002], "<u8").tobytes() + b"\x01\x02\x03")
    assert map_words(p).tolist() == [0xB000000000000001, 0xB000000000000002]
