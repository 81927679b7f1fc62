"""Merging new pixels into the held ones (the live segmenter's presort mode): the packed
path and the index-order path against numpy's stable argsort of held + new, with ties
between held and new pixels, several chips, wide fields and already ordered chunks."""

import numpy as np
import pytest

from tango_tpx.processing.heldmerge import merge_in_order
from tango_tpx.processing.timeorder import sort_packed
from tango_tpx.tpx3.hits import PixelHits


def _pixels(rng: np.random.Generator, n: int, t0: int, span: int, chips: int = 1, field_max: int = 256,
            ordered: bool = False) -> PixelHits:
    t = (t0 + rng.integers(0, span, n)) // 256 * 256      # ToAs: multiples of 256 fine units
    if ordered:
        t = np.sort(t)
    return PixelHits(rng.integers(0, field_max, n).astype(np.uint16), rng.integers(0, field_max, n).astype(np.uint16),
                     t.astype(np.int64), rng.integers(0, 1024, n).astype(np.uint16),
                     rng.integers(0, chips, n).astype(np.uint8))


def _reference(held: PixelHits, px: PixelHits) -> PixelHits:
    cols = [np.concatenate((getattr(held, f), getattr(px, f))) for f in ("x", "y", "toa", "tot", "chip")]
    order = np.argsort(cols[2], kind="stable")
    return PixelHits(*(c[order] for c in cols))


@pytest.mark.parametrize("case, packs", [("one chip", True), ("quad", False), ("wide fields", False),
                                         ("ordered", False), ("no held", True), ("ties", True)])
def test_the_merge_is_a_stable_sort_of_held_then_new(case, packs):
    rng = np.random.default_rng(3)
    span = 1 << 30
    held = _pixels(rng, 5_000, span // 2, span, ordered=True)
    px = _pixels(rng, 40_000, 0, 2 * span, chips=4 if case == "quad" else 1,
                 field_max=2048 if case == "wide fields" else 256, ordered=case == "ordered")
    if case == "no held":
        held = held.take(slice(0, 0))
    if case == "ties":                      # new pixels at exactly the held times
        px.toa[:len(held)] = held.toa
    assert (sort_packed(px.toa, px.x, px.y, px.tot) is not None and len(set(px.chip.tolist())) == 1) == packs
    got, newest = merge_in_order(held, px)
    ref = _reference(held, px)
    for f in ("x", "y", "toa", "tot", "chip"):
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
        assert getattr(got, f).dtype == getattr(ref, f).dtype
    assert newest == int(px.toa.max())
