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


#: (stream time in us after which it is set, event window end in us) of the window versions
#: 1, 2, 3: shortened in the middle of event 10 (before its old end), lengthened back in the
#: middle of event 20 (after its new end: the event is partly released already)
_VERSIONS = [(None, 80), (1000 + 10 * 100 + 45, 10), (1000 + 20 * 100 + 60, 80)]


@pytest.mark.parametrize("presort", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_window_change_applies_to_later_triggers_and_never_splits_an_event(presort, seed):
    rng = np.random.default_rng(seed)
    trig = (1000 + 100 * np.arange(30)) * US                       # a trigger every 100 us
    offsets = np.array([0, 3, 10, 10.01, 25, 40, 79, 80, 80.01, 99], float)   # ToF of the hits, us
    toa = (trig[:, None] + (offsets * US).astype(np.int64)[None, :]).ravel()
    toa = np.concatenate((np.array([500 * US]), toa))              # one hit before the first trigger
    n = len(toa)
    arrival = np.argsort(toa + rng.integers(0, 15 * US, n), kind="stable")   # up to 15 us late
    px = PixelHits(np.arange(n, dtype=np.uint16)[arrival], np.zeros(n, np.uint16), toa[arrival],
                   np.ones(n, np.uint16), np.zeros(n, np.uint8))
    seg = Segmenter((0, 80 * US), 20 * US, presort=presort)
    seg.set_window((0, 80 * US), 1)
    trig_version = np.zeros(len(trig), np.int64)                    # the version each trigger came with
    parts: list[tuple[int, Events]] = []

    def release(final: bool = False) -> None:
        while (s := seg.release(final)) is not None:
            parts.append((s.tag, segment_events(s, s.window)[0]))

    pos, fed, version = 0, -1, 1
    while pos < n:
        m = int(rng.choice([1, 2, 3, 7, 11, 19, 23]))                  # awkward chunk sizes
        chunk = px.take(slice(pos, pos + m))
        pos += m
        reach = max(fed, int(chunk.toa.max()))
        new = (trig > fed) & (trig <= reach)
        seg.add_triggers(_triggers(trig[new]))
        trig_version[new] = version
        fed = reach
        seg.add_pixels(chunk)
        release()
        if version < len(_VERSIONS) and fed >= _VERSIONS[version][0] * US:
            version += 1
            seg.set_window((0, _VERSIONS[version - 1][1] * US), version)
    release(final=True)
    assert version == 3 and set(trig_version.tolist()) == {1, 2, 3}

    # every event whole in exactly one part, made with the window of its trigger's version
    ends = np.array([0] + [end for _, end in _VERSIONS]) * US
    seen: set[int] = set()
    for tag, ev in parts:
        nrs = set(np.unique(ev.trigger_nr).tolist())
        assert not nrs & seen, f"events split over two outputs: {sorted(nrs & seen)}"
        seen |= nrs
        assert all(trig_version[k] == tag for k in nrs), (tag, sorted(nrs))
    got = Events.concat([ev for _, ev in parts])
    assert np.all(np.diff(got.toa) >= 0)
    nr = np.searchsorted(trig, np.sort(toa), side="right") - 1
    tof = np.sort(toa) - trig[np.maximum(nr, 0)]
    keep = (nr >= 0) & (tof <= ends[trig_version[np.maximum(nr, 0)]])
    np.testing.assert_array_equal(got.toa, np.sort(toa)[keep])
    np.testing.assert_array_equal(got.trigger_nr, nr[keep])
    assert len(np.unique(got.x)) == len(got) and seen == set(range(len(trig)))
    # the event open at each change kept its window: 80 us, then 10 us
    assert trig_version[10] == 1 and got.tof[got.trigger_nr == 10].max() == 80 * US
    assert trig_version[20] == 2 and got.tof[got.trigger_nr == 20].max() == 10 * US
    assert seg.stats["pixels_in"] == n and seg.stats["late_pixels"] == 0 and seg.held_pixels == 0
