"""Decoder: hand-computed words, real SPIDR captures, rollover, chunking, garbage."""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.tpx3.codec import COUNT_NAMES, EXCLUSIVE_COUNTS, Decoder, decode_words
from tango_tpx.tpx3.files import quad_map
from tango_tpx.tpx3.reference import decode_numpy
from tango_tpx.tpx3.units import UNIT_NS

from .conftest import CAPTURES, needs_captures

EPOCH = 1 << 30


def pixel_word(x: int, y: int, coarse: int, ftoa: int, tot: int, hdr: int = 0xB) -> int:
    """Build a pixel word by hand from the bit layout in the spec (independent of the encoder)."""
    dcol_field = x >> 1                     # bits 53..59
    spix_field = y >> 2                     # bits 47..52
    pix = ((x & 1) << 2) | (y & 3)          # bits 44..46
    toa, spidr = coarse & 0x3FFF, (coarse >> 14) & 0xFFFF
    data = (toa << 14) | (tot << 4) | ftoa  # bits 16..43
    return (hdr << 60) | (dcol_field << 53) | (spix_field << 47) | (pix << 44) | (data << 16) | spidr


def tdc_word(sub: int, coarse: int, step: int, f: int, counter: int) -> int:
    """TDC word: header 0x6, sub-type, 12-bit counter, 32-bit coarse, 3-bit 3.125 ns step, 4-bit fine."""
    return (0x6 << 60) | (sub << 56) | (counter << 44) | ((coarse & 0xFFFFFFFF) << 12) | (step << 9) | (f << 5)


def global_words(ticks: int) -> list[int]:
    return [(0x44 << 56) | ((ticks & 0xFFFFFFFF) << 16), (0x45 << 56) | (((ticks >> 32) & 0xFFFF) << 16)]


def arr(*words: int) -> np.ndarray:
    return np.array(words, dtype=np.uint64)


def test_first_word_of_real_capture_by_hand():
    # centroid_pipeline_test.raw, word 1 (after the 8-byte header): 0xb649b61040720841.
    # dcol bits 59..53 = 0b0110010 -> 100; spix bits 52..47 = 0b010011 -> 76; pix = 3
    # -> x = 100, y = 79.  data = 0x6104072: ToA = 0x1841, ToT = 7, FToA = 2; spidr = 0x0841
    # coarse = 0x841 << 14 | 0x1841 = 34625601 ticks; phase k = (100 // 2) % 16 = 2
    d = decode_words(arr(0xB649B61040720841))
    assert d.pixels.x.tolist() == [100] and d.pixels.y.tolist() == [79]
    assert d.pixels.tot.tolist() == [7]
    assert d.pixels.toa[0] * UNIT_NS == pytest.approx(34625601 * 25 - 2 * 1.5625 + 2 * 1.5625, abs=1e-9)
    assert d.pixels.toa.dtype == np.int64 and d.pixels.toa[0] == (34625601 << 12)


def test_hand_built_pixel_fields():
    w = pixel_word(x=37, y=202, coarse=0x2ABCDEF1 & 0x3FFFFFFF, ftoa=11, tot=0x155)
    d = decode_words(arr(w))
    assert (d.pixels.x[0], d.pixels.y[0], d.pixels.tot[0]) == (37, 202, 0x155)
    k = (37 // 2) % 16  # 2
    assert d.pixels.toa[0] == ((0x2ABCDEF1 & 0x3FFFFFFF) << 12) - (11 << 8) + (k << 8)
    # phase 0 becomes 16: column 32 -> (32 // 2) % 16 == 0
    d = decode_words(arr(pixel_word(x=32, y=0, coarse=1000, ftoa=0, tot=1, hdr=0xA)))
    assert d.pixels.toa[0] == (1000 << 12) + (16 << 8)


def test_tdc_word_of_real_capture_by_hand():
    # out_5sec.raw word 1944 = 0x6f02704baf164a60: TDC1 rising, counter 0x027 = 39,
    # coarse 0x04baf164 = 79360356 ticks, step bits 0xa00, f = 3 -> fine (2 << 9) // 12 = 85
    # anchored on the global time pair at the file start (0x04adf08a ticks, same epoch).
    w = arr(*global_words(0x04ADF08A), 0x6F02704BAF164A60)
    d = decode_words(w)
    tr = d.triggers
    assert (tr.channel[0], bool(tr.rising[0]), tr.counter[0]) == (1, True, 39)
    assert tr.time[0] == (79360356 << 12) + 0xA00 + 85
    assert tr.time[0] * UNIT_NS == pytest.approx(1984008900 + 2645 * 25 / 4096, abs=1e-6)
    assert d.longtime == 0x04ADF08A


@pytest.mark.parametrize("sub,channel,rising", [(0xF, 1, True), (0xA, 1, False), (0xE, 2, True), (0xB, 2, False)])
def test_tdc_kinds(sub, channel, rising):
    d = decode_words(arr(tdc_word(sub, coarse=5000, step=7, f=12, counter=4095)))
    assert d.triggers.channel.tolist() == [channel]
    assert d.triggers.rising.tolist() == [rising]
    assert d.triggers.counter.tolist() == [4095]
    assert d.triggers.time[0] == (5000 << 12) + (7 << 9) + ((11 << 9) // 12)


def test_tdc1_with_header_4_and_invalid_fine():
    w4 = tdc_word(0xF, 100, 0, 1, 3) & ~(0xF << 60) | (0x4 << 60)
    d = decode_words(arr(w4, tdc_word(0xF, 100, 0, 0, 4), tdc_word(0xF, 100, 0, 13, 5)))
    assert d.triggers.channel.tolist() == [1] and d.triggers.time.tolist() == [100 << 12]
    assert d.counts.tdc == 1 and d.counts.tdc_invalid == 2


@needs_captures
def test_real_capture_counts_centroid_pipeline_test():
    words = np.fromfile(CAPTURES / "centroid_pipeline_test.raw", dtype="<u8", offset=8)
    d = decode_words(words)
    tr = d.triggers
    assert len(d.pixels) == 1858
    assert ((tr.channel == 1) & tr.rising).sum() == 14 and ((tr.channel == 1) & ~tr.rising).sum() == 14
    assert ((tr.channel == 2) & tr.rising).sum() == 1100 and ((tr.channel == 2) & ~tr.rising).sum() == 1101
    assert d.counts.words == len(words) == 4095


@needs_captures
def test_real_capture_counts_out_5sec():
    words = np.fromfile(CAPTURES / "out_5sec.raw", dtype="<u8")
    d = decode_words(words)
    c = d.counts
    assert (c.pixels, c.global_lsb, c.global_msb, c.control, c.other, c.tdc_invalid) == (518047, 4, 4, 8, 0, 0)
    tr = d.triggers
    for ch in (1, 2):
        for edge in (True, False):
            assert ((tr.channel == ch) & (tr.rising == edge)).sum() == 39
    # the eight control words are the 0x71 words
    assert int(np.sum((words >> np.uint64(56)) == 0x71)) == 8
    assert c.ambiguous_time == 0
    # independent numpy implementation of the spec agrees on every value
    p, t = decode_numpy(words)
    for name, a in p.as_dict().items():
        np.testing.assert_array_equal(a, getattr(d.pixels, name), err_msg=name)
    for name, a in t.as_dict().items():
        np.testing.assert_array_equal(a, getattr(d.triggers, name), err_msg=name)
    # ToA within the 5 s of the capture, times near the global-time anchor (1.96 s)
    assert 1.9e9 < d.pixels.toa.min() * UNIT_NS < d.pixels.toa.max() * UNIT_NS < 6.0e9


@needs_captures
@pytest.mark.parametrize("chunk", [1, 7, 4096, 100_003])
def test_chunked_decode_equals_whole(chunk):
    words = np.fromfile(CAPTURES / "out_5sec.raw", dtype="<u8")[:200_000]
    whole = decode_words(words)
    dec = Decoder()
    parts = [dec.decode(words[i:i + chunk]) for i in range(0, len(words), chunk)]
    for name, a in whole.pixels.as_dict().items():
        np.testing.assert_array_equal(np.concatenate([getattr(p.pixels, name) for p in parts]), a)
    for name, a in whole.triggers.as_dict().items():
        np.testing.assert_array_equal(np.concatenate([getattr(p.triggers, name) for p in parts]), a)
    assert dec.counts == whole.counts


def test_rollover_extends_monotonically_and_cut_anywhere():
    # coarse times step through the 30-bit rollover, a little out of order, with a trigger
    coarse = [EPOCH - 300, EPOCH - 100, EPOCH - 200, 50, EPOCH - 10, 400, 2000, 1000]
    words = [pixel_word(10, 10, c, 0, 5) for c in coarse]
    words.insert(4, tdc_word(0xF, 20, 0, 1, 1))
    words = arr(*words)
    whole = decode_words(words)
    expected_coarse = [EPOCH - 300, EPOCH - 100, EPOCH - 200, EPOCH + 50, EPOCH - 10,
                       EPOCH + 400, EPOCH + 2000, EPOCH + 1000]
    k = (10 // 2) % 16
    assert whole.pixels.toa.tolist() == [(c << 12) + (k << 8) for c in expected_coarse]
    assert whole.triggers.time.tolist() == [(EPOCH + 20) << 12]
    assert whole.counts.ambiguous_time == 0
    for cut in range(len(words) + 1):
        dec = Decoder()
        a, b = dec.decode(words[:cut]), dec.decode(words[cut:])
        assert np.concatenate([a.pixels.toa, b.pixels.toa]).tolist() == whole.pixels.toa.tolist()
        assert np.concatenate([a.triggers.time, b.triggers.time]).tolist() == whole.triggers.time.tolist()


def test_several_rollovers_and_global_time_anchor():
    # (x = 2: phase k = 1 adds 256 fine units, below one coarse tick)
    # a global time pair in epoch 5 anchors the following words; each later word is less
    # than half an epoch after the previous one, across two more rollovers
    anchor = 5 * EPOCH + 100
    coarse = [(anchor + i * (EPOCH // 3)) & (EPOCH - 1) for i in range(1, 8)]
    d = decode_words(arr(*global_words(anchor), *[pixel_word(2, 0, c, 0, 1) for c in coarse]))
    assert (d.pixels.toa >> 12).tolist() == [anchor + i * (EPOCH // 3) for i in range(1, 8)]
    assert d.longtime == anchor
    # a constructor anchor behaves like a global-time pair
    d2 = Decoder(longtime=anchor).decode(arr(*[pixel_word(2, 0, c, 0, 1) for c in coarse]))
    np.testing.assert_array_equal(d2.pixels.toa, d.pixels.toa)


def test_ambiguous_jump_is_counted():
    # 0.4 epoch (10.7 s) after the previous word: assigned to the nearest epoch and counted
    words = arr(pixel_word(2, 0, 1000, 0, 1), pixel_word(2, 0, 1000 + int(0.4 * EPOCH), 0, 1),
                pixel_word(2, 0, 1000 + int(0.45 * EPOCH), 0, 1))
    d = decode_words(words)
    assert d.counts.ambiguous_time == 1
    assert (d.pixels.toa >> 12).tolist() == [1000, 1000 + int(0.4 * EPOCH), 1000 + int(0.45 * EPOCH)]


def test_garbage_never_raises_and_every_word_counted_once():
    rng = np.random.default_rng(1234)
    words = rng.integers(0, np.iinfo(np.uint64).max, size=1_000_000, dtype=np.uint64, endpoint=True)
    for framing in ("raw", "tpx3"):
        dec = Decoder(framing=framing)
        total = dec.decode(words[:333_333]).counts + dec.decode(words[333_333:]).counts
        assert total.words == len(words)
        assert total == dec.counts
        hdr = words >> np.uint64(60)
        if framing == "raw":
            assert total.pixels == int(np.sum((hdr == 0xA) | (hdr == 0xB)))
            assert total.chunk_headers == 0
        assert sum(getattr(total, n) for n in EXCLUSIVE_COUNTS) == len(words)
    assert len(COUNT_NAMES) == 10


def _chunk_header(chip: int, nbytes: int) -> int:
    return 0x33585054 | (chip << 32) | (nbytes << 48)


def test_tpx3_framing_sets_chip_and_quad_mapping():
    px = [pixel_word(0, 0, 10, 0, 1), pixel_word(255, 255, 11, 0, 1)]
    words = []
    for chip in range(4):
        words += [_chunk_header(chip, 16)] + px
    words = arr(*words)
    single = decode_words(words, framing="tpx3")
    assert single.counts.chunk_headers == 4 and single.counts.framing_errors == 0
    assert single.pixels.chip.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert single.pixels.x.tolist() == [0, 255] * 4
    quad = decode_words(words, framing="tpx3", layout="quad")
    # chips `2 1 / 3 0`: chip0 x+258, y flipped +258; chip1 x flipped +258; chip2 x flipped;
    # chip3 y flipped +258
    assert list(zip(quad.pixels.x.tolist(), quad.pixels.y.tolist())) == [
        (258, 513), (513, 258),     # chip 0: (0,0) -> (258, 255+258); (255,255) -> (513, 258)
        (513, 0), (258, 255),       # chip 1
        (255, 0), (0, 255),         # chip 2
        (0, 513), (255, 258),       # chip 3
    ]
    assert quad_map.py_func(0, 0, 0) == (258, 513)
    # a corrupt header naming chip 7 in a quad: its pixels are counted as 'other', skipped
    bad = decode_words(arr(_chunk_header(7, 8), px[0]), framing="tpx3", layout="quad")
    assert len(bad.pixels) == 0 and bad.counts.other == 1
    # a stream cut inside a chunk decodes the same
    dec = Decoder(framing="tpx3", layout="quad")
    parts = [dec.decode(words[i:i + 2]) for i in range(0, len(words), 2)]
    assert np.concatenate([p.pixels.x for p in parts]).tolist() == quad.pixels.x.tolist()


def test_tpx3_framing_error_counted():
    words = arr(pixel_word(1, 1, 5, 0, 1), _chunk_header(2, 8), pixel_word(1, 1, 6, 0, 1))
    d = decode_words(words, framing="tpx3")
    assert d.counts.framing_errors == 1 and d.counts.chunk_headers == 1
    assert d.pixels.chip.tolist() == [0, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="framing"):
        Decoder(framing="udp")
    with pytest.raises(ValueError, match="layout"):
        Decoder(layout="hex")
    assert len(decode_words(np.zeros(0, np.uint64)).pixels) == 0
