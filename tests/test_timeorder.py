"""The time order of pixels: the bucket sort (indices, and whole packed pixels) against
numpy's stable argsort, on near-ordered readout, bursts, wide spans and wide fields."""

import numpy as np
import pytest

from tango_tpx.processing.segmenter import INF, Events, Segment, _assign, segment_events
from tango_tpx.processing.timeorder import sort_packed, time_order
from tango_tpx.tpx3.hits import PixelHits


def _times(kind: str, rng: np.random.Generator) -> np.ndarray:
    n = 200_000
    if kind == "near":      # readout order: increasing, locally late by up to ~100 us
        t = np.sort(rng.integers(0, 1 << 34, n)) // 256 * 256
        late = rng.random(n) < 0.03
        return np.where(late, t - rng.integers(0, 64_000, n) * 256, t)
    if kind == "burst":     # a pulsed source: every hit within a few us of 10 pulses
        return np.repeat(np.arange(10, dtype=np.int64) << 28, n // 10) + rng.integers(0, 1 << 12, n)
    if kind == "span32":    # keys of exactly 32 bits (no zero low bits)
        return rng.integers(0, (1 << 32) - 1, n)
    if kind == "wide":      # beyond 32-bit keys: the 64-bit radix path
        return rng.integers(-(1 << 40), 1 << 40, n)
    return rng.integers(0, 3, n)   # many equal times: stability


@pytest.mark.parametrize("kind", ["near", "burst", "span32", "wide", "equal"])
def test_time_order_is_numpys_stable_argsort(kind):
    t = _times(kind, np.random.default_rng(1))
    np.testing.assert_array_equal(time_order(t), np.argsort(t, kind="stable"))


@pytest.mark.parametrize("kind,field_max", [("near", 256), ("burst", 516), ("span32", 1024), ("wide", 256),
                                            ("near", 2000), ("equal", 256)])
def test_segment_events_equal_the_argsort_walk(kind, field_max):
    """Packed sort + walk (or its fallbacks: wide span, a field over 10 bits) gives the
    events of a stable argsort walked with the reference kernel."""
    rng = np.random.default_rng(2)
    t = _times(kind, rng)
    n = len(t)
    x = rng.integers(0, field_max, n).astype(np.uint16)
    y = rng.integers(0, 256, n).astype(np.uint16)
    tot = rng.integers(0, 1024, n).astype(np.uint16)
    trig = np.sort(rng.choice(t, 40, replace=False))
    seg = Segment.of(PixelHits(x, y, t, tot, np.zeros(n, np.uint8)), trig, 5)
    packs = sort_packed(t, x, y, tot) is not None
    assert packs == (kind in ("near", "burst", "span32", "equal") and field_max <= 1024)
    for window in ((0, INF), (4096, 1 << 30)):
        ev, before, outside = segment_events(seg, window)
        ref = Events.empty(n)
        m, b, o = _assign(t, x, y, tot, np.argsort(t, kind="stable"), True, trig, 5, window[0], window[1],
                          *ref.as_dict().values())
        assert (len(ev), before, outside) == (m, b, o)
        for k, v in ev.as_dict().items():
            np.testing.assert_array_equal(v, getattr(ref, k)[:m])


@pytest.mark.parametrize("bucket_keys", [1, 4, 64])
@pytest.mark.parametrize("kind", ["near", "burst", "span32", "equal"])
def test_the_packed_sort_is_the_same_with_any_bucket_width(kind, bucket_keys):
    rng = np.random.default_rng(2)
    t = _times(kind, rng)
    n = len(t)
    x, y, tot = (rng.integers(0, 1024, n).astype(np.uint16) for _ in range(3))
    packed, lo, shift = sort_packed(t, x, y, tot, bucket_keys)
    order = np.argsort(t, kind="stable")
    np.testing.assert_array_equal(lo + ((packed >> np.uint64(32)).astype(np.int64) << shift), t[order])
    np.testing.assert_array_equal((packed >> np.uint64(20)) & np.uint64(1023), x[order])
    np.testing.assert_array_equal(packed & np.uint64(1023), tot[order])
