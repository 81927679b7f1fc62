"""Encoder: hand-computed words, real captures re-encoded bit for bit, quantisation, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.tpx3.encode import (
    TDC_FINE_TABLE,
    encode_control,
    encode_global_time,
    encode_pixels,
    encode_tdc,
    quantize_pixel_toa,
    quantize_tdc_time,
    tpx3_chunk_header,
)

from .conftest import CAPTURES, needs_captures


def spec_decode_pixels(w: np.ndarray):
    """Pixel decode written straight from the spec's masks (independent of the encoder)."""
    w = w.astype(np.uint64)
    dcol = ((w & np.uint64(0x0FE0000000000000)) >> np.uint64(52)).astype(np.int64)
    spix = ((w & np.uint64(0x001F800000000000)) >> np.uint64(45)).astype(np.int64)
    pix = ((w & np.uint64(0x0000700000000000)) >> np.uint64(44)).astype(np.int64)
    x = dcol + pix // 4
    y = spix + (pix & 3)
    data = ((w & np.uint64(0x00000FFFFFFF0000)) >> np.uint64(16)).astype(np.int64)
    toa = (data >> 14) & 0x3FFF
    tot = (data >> 4) & 0x3FF
    ftoa = data & 0xF
    coarse = ((w & np.uint64(0xFFFF)).astype(np.int64) << 14) | toa
    k = (x // 2) % 16
    k[k == 0] = 16
    return x, y, coarse, ftoa, tot, k


# ---- pixels -------------------------------------------------------------------------------

def test_pixel_word_by_hand_origin():
    # x=0,y=0: k=16; T=1, FToA=0 -> toa = 4096 + 16*256 = 8192; ToT=5
    # word: hdr 0xB | ToA(=1) << 30 | ToT(=5) << 20  = 0xB000000040500000
    assert int(encode_pixels([0], [0], [8192], [5])[0]) == 0xB000000040500000


def test_pixel_word_by_hand_all_fields():
    # x=3 (dcol 2, pix bit 1), y=5 (spix 4, pix 1): pix = 0b101; k = (3//2)%16 = 1
    T = (0x1234 << 14) | 0x2ABC
    toa = (T << 12) - (7 << 8) + (1 << 8)  # FToA = 7
    # 0xB0.. | dcol 2<<52 | spix 4<<45 | pix 5<<44 | ToA 0x2ABC<<30 | ToT 0x3FF<<20 | FToA 7<<16 | 0x1234
    assert int(encode_pixels([3], [5], [toa], [0x3FF])[0]) == 0xB020DAAF3FF71234


def test_pixel_phase_k_16_and_ftoa_wrap():
    # x=32: (32//2)%16 = 0 -> k = 16. toa = T*4096 + 256 -> FToA must be 15 (16 - 15 = 1 step)
    T = 1000
    w = int(encode_pixels([32], [255], [T * 4096 + 256], [1])[0])
    assert (w >> 16) & 0xF == 15
    assert ((w & 0xFFFF) << 14 | ((w >> 30) & 0x3FFF)) == T
    # y = 255: spix 252 (bits 47..52 = 63), pix low bits 3; x=32: dcol field 32 (bits 53..59 = 16)
    assert (w >> 47) & 0x3F == 63 and (w >> 44) & 7 == 3 and (w >> 53) & 0x7F == 16


def test_pixel_roundtrip_random():
    rng = np.random.default_rng(5)
    n = 20000
    x = rng.integers(0, 256, n)
    y = rng.integers(0, 256, n)
    toa = rng.integers(16, 1 << 40, n) * 256
    tot = rng.integers(0, 1024, n)
    w = encode_pixels(x, y, toa, tot)
    assert w.dtype == np.uint64 and np.all(w >> np.uint64(60) == 0xB)
    dx, dy, coarse, ftoa, dtot, k = spec_decode_pixels(w)
    T = toa >> 12  # true coarse is within one tick of this
    # the 30-bit coarse plus the extension (known here) gives back the exact toa
    ext = (T & ~((1 << 30) - 1)) | coarse
    ext = np.where(ext - T > (1 << 29), ext - (1 << 30), np.where(T - ext > (1 << 29), ext + (1 << 30), ext))
    back = (ext << 12) - (ftoa << 8) + (k << 8)
    assert np.array_equal(dx, x) and np.array_equal(dy, y) and np.array_equal(dtot, tot)
    assert np.array_equal(back, toa)
    assert np.all((ftoa >= 0) & (ftoa <= 15))


@needs_captures
def test_real_capture_pixels_reencode_bit_exact():
    raw = np.fromfile(CAPTURES / "out_5sec.raw", dtype="<u8")
    pix = raw[(raw >> np.uint64(60)) == 0xB]
    x, y, coarse, ftoa, tot, k = spec_decode_pixels(pix)
    toa = (coarse << 12) - (ftoa << 8) + (k << 8)
    ok = toa >= 4096  # (every pixel in this capture)
    assert ok.all()
    assert np.array_equal(encode_pixels(x, y, toa, tot), pix)


def test_pixel_errors():
    with pytest.raises(ValueError, match="multiple of 256"):
        encode_pixels([0], [0], [8192 + 1], [1])
    with pytest.raises(ValueError, match=">= 0"):
        encode_pixels([0], [0], [-256], [1])
    with pytest.raises(ValueError, match="0..255"):
        encode_pixels([256], [0], [8192], [1])
    with pytest.raises(ValueError, match="ToT"):
        encode_pixels([0], [0], [8192], [1024])
    with pytest.raises(ValueError, match="too small"):
        encode_pixels([0], [0], [256 * 0], [1])  # k=16 needs coarse -1
    with pytest.raises(TypeError):
        encode_pixels([0.5], [0], [8192], [1])
    assert encode_pixels([], [], [], []).shape == (0,)


def test_quantize_pixel_toa():
    assert quantize_pixel_toa([0, 255, 256, 257, 100_000]).tolist() == [0, 0, 256, 256, 99_840]


# ---- TDC ----------------------------------------------------------------------------------

def test_tdc_fine_table_by_hand():
    # ((f-1) << 9) // 12 for f = 1..12
    assert TDC_FINE_TABLE.tolist() == [0, 42, 85, 128, 170, 213, 256, 298, 341, 384, 426, 469]


def test_tdc_word_matches_real_capture_word():
    # 0x6f02704baf164a60 from out_5sec.raw: TDC1 rising, counter 0x027, coarse 0x4BAF164,
    # low 12 bits 0xA60: step (bits 9..11) = 5, f (bits 5..8) = 3 -> fine 85
    t = (0x4BAF164 << 12) + (5 << 9) + 85
    assert int(encode_tdc(1, True, t, 39)) == 0x6F02704BAF164A60


def test_tdc_subtypes_and_counter_by_hand():
    t = (7 << 12) + (2 << 9) + 469  # step 2, f = 12
    words = encode_tdc([1, 1, 2, 2], [True, False, True, False], [t] * 4, [4095, 4096, 1, 0x1234])
    low = (7 << 12) | (2 << 9) | (12 << 5)
    assert [int(w) for w in words] == [
        (0x6F << 56) | (4095 << 44) | low,
        (0x6A << 56) | (0 << 44) | low,       # counter taken modulo 4096
        (0x6E << 56) | (1 << 44) | low,
        (0x6B << 56) | (0x234 << 44) | low,
    ]


def test_tdc_coarse_keeps_32_bits():
    T = (1 << 31) + (1 << 30) + 5  # bits 30 and 31 of the coarse go to word bits 42, 43
    w = int(encode_tdc(2, True, T << 12, 0))
    assert (w >> 12) & 0xFFFFFFFF == T


def test_quantize_tdc_time():
    T = 1000 << 12
    got = quantize_tdc_time([T, T + 41, T + 42, T + 100, T + 511, T + 512 + 41, T + 4095])
    assert got.tolist() == [T, T, T + 42, T + 85, T + 469, T + 512, T + 3584 + 469]
    # every quantised value is representable and encodes to its own fine code
    rng = np.random.default_rng(1)
    t = quantize_tdc_time(rng.integers(0, 1 << 44, 5000))
    w = encode_tdc(1, True, t, 0)
    f = ((w >> np.uint64(5)) & np.uint64(0xF)).astype(np.int64)
    back = (((w >> np.uint64(12)) & np.uint64(0xFFFFFFFF)).astype(np.int64) << 12) \
        + (w & np.uint64(0xE00)).astype(np.int64) + ((f - 1) << 9) // 12
    assert np.array_equal(back & ((1 << 44) - 1), t & ((1 << 44) - 1))
    assert f.min() >= 1 and f.max() <= 12


def test_tdc_errors():
    with pytest.raises(ValueError, match="not representable"):
        encode_tdc(1, True, (5 << 12) + 1, 0)
    with pytest.raises(ValueError, match="channel"):
        encode_tdc(3, True, 5 << 12, 0)
    with pytest.raises(ValueError, match=">= 0"):
        encode_tdc(1, True, -4096, 0)


# ---- global time, control, chunk header ---------------------------------------------------

def test_global_time_by_hand():
    # real capture: 0x440004adf08a12b7 / 0x45000000000012b7 for ticks 0x04ADF08A
    lsb, msb = encode_global_time(0x04ADF08A)
    assert (int(lsb), int(msb)) == (0x440004ADF08A12B7, 0x45000000000012B7)
    # ticks 0x123489ABCDEF: lsb field 0x89ABCDEF, msb field 0x1234, spidr (ticks >> 14) & 0xFFFF = 0x26AF
    lsb, msb = encode_global_time(np.array([0x123489ABCDEF]))
    assert int(lsb[0]) == 0x440089ABCDEF26AF and int(msb[0]) == 0x45000000123426AF
    with pytest.raises(ValueError):
        encode_global_time(1 << 48)


def test_control_word_by_hand():
    # real capture: 0x714400001c6b12b7
    assert int(encode_control(0x44, 0x04ADF08A, 0x1C6B)) == 0x714400001C6B12B7


def test_chunk_header_bytes():
    h = tpx3_chunk_header(2, 8192)
    assert np.array([h], "<u8").tobytes() == b"TPX3\x02\x00\x00\x20"
    assert int(tpx3_chunk_header(3, 65528, mode=1)) == 0x33585054 | (3 << 32) | (1 << 40) | (65528 << 48)
    for bad in ((0, 12), (0, 65536), (256, 8)):
        with pytest.raises(ValueError):
            tpx3_chunk_header(*bad)
