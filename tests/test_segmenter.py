"""The event segmenter shared by the live event builder and the converter.

Both ways of holding pixels back (sorted on entry for the live path, arrival order and sorted
per segment for the converter's workers) must give the events of a brute-force reference:
every pixel assigned to the last trigger at or before its ToA, kept when the ToF lies in the
window (both edges inclusive), whatever the chunking, the batch size and the reordering.
"""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.processing.segmenter import (
    INF,
    Events,
    Segmenter,
    apply_timewalk,
    emit_boundary,
    segment_events,
)
from tango_tpx.tpx3.hits import PixelHits, Triggers
from tango_tpx.tpx3.units import ns_to_units

US = int(ns_to_units(1000.0))  # one microsecond in fine units


def _triggers(times: np.ndarray) -> Triggers:
    m = len(times)
    return Triggers(np.ones(m, np.uint8), np.ones(m, np.bool_), np.asarray(times, np.int64),
                    (np.arange(m) & 0xFFF).astype(np.uint16), np.zeros(m, np.uint8))


def _stream(seed: int = 3, n: int = 20_000):
    """Pixels on a 1.5625 ns grid over 50 ms, locally shuffled (up to ~0.4 ms late), x = index;
    triggers every ~1 ms."""
    rng = np.random.default_rng(seed)
    toa = np.sort(rng.integers(0, 50_000 * US // 256, n)) * 256
    late = rng.random(n) < 0.2
    arrival = np.argsort(toa + np.where(late, rng.integers(0, 400 * US, n), 0), kind="stable")
    toa = toa[arrival]
    px = PixelHits((np.arange(n) % 60000).astype(np.uint16), rng.integers(0, 256, n).astype(np.uint16), toa,
                   rng.integers(1, 60, n).astype(np.uint16), np.zeros(n, np.uint8))
    trig = np.cumsum(rng.integers(800 * US, 1200 * US, 45)).astype(np.int64) + 2000 * US
    return px, trig


def _reference(px: PixelHits, trig: np.ndarray, window: tuple[int, int]) -> Events:
    order = np.argsort(px.toa, kind="stable")
    toa = px.toa[order]
    j = np.searchsorted(trig, toa, side="right") - 1
    tof = toa - trig[np.maximum(j, 0)]
    keep = (j >= 0) & (tof >= window[0]) & (tof <= window[1])
    return Events(j[keep].astype(np.int64), px.x[order][keep], px.y[order][keep], tof[keep],
                  px.tot[order][keep], toa[keep])


def _segment(px: PixelHits, trig: np.ndarray, window: tuple[int, int], chunk: int, presort: bool,
             min_pixels: int) -> tuple[Events, Segmenter]:
    seg = Segmenter(window, 1000 * US, presort=presort, min_pixels=min_pixels)
    parts = []
    reach = np.maximum.accumulate(px.toa)
    for i in range(0, len(px), chunk):
        lo = reach[i - 1] if i else np.iinfo(np.int64).min
        hi = reach[min(i + chunk, len(px)) - 1]
        seg.add_triggers(_triggers(trig[(trig > lo) & (trig <= hi)]))
        seg.add_pixels(px.take(slice(i, i + chunk)))
        s = seg.release()
        if s is not None:
            assert s.ordered == presort
            parts.append(segment_events(s, window)[0])
    seg.add_triggers(_triggers(trig[trig > reach[-1]]))
    s = seg.release(final=True)
    if s is not None:
        parts.append(segment_events(s, window)[0])
    return Events.concat(parts), seg


@pytest.mark.parametrize("presort", [True, False])
@pytest.mark.parametrize("window_us", [(0, None), (5, 300)])
@pytest.mark.parametrize("chunk,min_pixels", [(997, 0), (4096, 0), (1500, 5000)])
def test_segments_give_the_reference_events(presort, window_us, chunk, min_pixels):
    px, trig = _stream()
    window = (window_us[0] * US, INF if window_us[1] is None else window_us[1] * US)
    ref = _reference(px, trig, window)
    got, seg = _segment(px, trig, window, chunk, presort, min_pixels)
    assert len(ref) > 1000 and seg.held_pixels == 0 and seg.stats["late_pixels"] == 0
    for k, v in ref.as_dict().items():
        np.testing.assert_array_equal(getattr(got, k), v, err_msg=k)


def test_window_edges_are_inclusive_and_events_wait_for_completeness():
    window = (1 * US, 3 * US)
    seg = Segmenter(window, 0, presort=False)
    seg.add_triggers(_triggers(np.array([10 * US])))
    toa = np.array([9, 11, 12, 13, 13.5], float) * US + 0.5
    toa = (toa.astype(np.int64) // 256) * 256
    toa[1], toa[3] = 11 * US, 13 * US            # exactly on the edges
    n = len(toa)
    seg.add_pixels(PixelHits(np.arange(n, dtype=np.uint16), np.zeros(n, np.uint16), toa,
                             np.ones(n, np.uint16), np.zeros(n, np.uint8)))
    # the watermark (13.5 us) has passed the window end (13 us): the event is complete
    assert emit_boundary(int(toa.max()), 0, np.array([10 * US]), window[1]) == int(toa.max())
    s = seg.release()
    ev, before, outside = segment_events(s, window)
    assert ev.x.tolist() == [1, 2, 3] and before == 1 and outside == 0
    # the pixel at the watermark itself is held back, and counted outside the window at the end
    assert seg.held_pixels == 1
    ev, before, outside = segment_events(seg.release(final=True), window)
    assert len(ev) == 0 and outside == 1
    # an open window: the event of the last trigger waits for the next trigger
    seg = Segmenter((0, INF), 0)
    seg.add_triggers(_triggers(np.array([10 * US])))
    seg.add_pixels(PixelHits(np.zeros(1, np.uint16), np.zeros(1, np.uint16), np.array([20 * US]),
                             np.ones(1, np.uint16), np.zeros(1, np.uint8)))
    assert seg.release() is None and seg.held_pixels == 1


def test_late_pixels_are_dropped_and_counted():
    seg = Segmenter((0, INF), 0)
    seg.add_triggers(_triggers(np.array([10 * US, 20 * US])))
    one = lambda t: PixelHits(np.zeros(1, np.uint16), np.zeros(1, np.uint16), np.array([t]),  # noqa: E731
                              np.ones(1, np.uint16), np.zeros(1, np.uint8))
    seg.add_pixels(one(25 * US))
    assert seg.release() is None                  # boundary 20 us (the open event's trigger)
    seg.add_pixels(one(15 * US))                  # behind the released boundary
    assert seg.stats["late_pixels"] == 1 and seg.held_pixels == 1


def test_timewalk_is_applied_once_on_entry():
    lut = np.array([50.0, 25.0, 10.0])            # ns for ToT 1, 2, 3
    toa = np.full(3, 1000 * US, np.int64)
    px = PixelHits(np.zeros(3, np.uint16), np.zeros(3, np.uint16), toa, np.array([1, 2, 9], np.uint16),
                   np.zeros(3, np.uint8))
    corrected = apply_timewalk(px, lut).toa
    assert (toa - corrected).tolist() == ns_to_units(np.array([50.0, 25.0, 10.0])).tolist()
    seg = Segmenter((0, INF), 0, timewalk_lut=lut)
    seg.add_triggers(_triggers(np.array([0])))
    seg.add_pixels(px)
    ev, _, _ = segment_events(seg.release(final=True), (0, INF))
    np.testing.assert_array_equal(ev.toa, np.sort(corrected))
