"""PacketProcessor: trigger assignment, ToF, window edges, chunk boundaries, lost triggers."""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.processing.events import Events, PacketProcessor
from tango_tpx.tpx3.codec import Decoded, WordCounts, decode_words
from tango_tpx.tpx3.hits import PixelHits, Triggers
from tango_tpx.tpx3.units import ns_to_units, UNIT_NS

from .conftest import CAPTURES, needs_captures

US = int(ns_to_units(1000.0))  # one microsecond in fine units


def chunk(pix_us=(), trig_us=(), counters=None, falling_us=()) -> Decoded:
    """A decoded chunk with pixels (x = index, y = 7, tot = 3) and TDC1 edges at given us."""
    n = len(pix_us)
    px = PixelHits(np.arange(n, dtype=np.uint16), np.full(n, 7, np.uint16),
                   np.array([int(t * US) for t in pix_us], np.int64), np.full(n, 3, np.uint16),
                   np.zeros(n, np.uint8))
    times = [int(t * US) for t in trig_us] + [int(t * US) for t in falling_us]
    rising = [True] * len(trig_us) + [False] * len(falling_us)
    m = len(times)
    cnt = counters if counters is not None else list(range(len(trig_us))) + list(range(len(falling_us)))
    tr = Triggers(np.ones(m, np.uint8), np.array(rising, bool), np.array(times, np.int64),
                  np.array(cnt, np.uint16), np.zeros(m, np.uint8))
    return Decoded(px, tr, WordCounts())


def run(pp: PacketProcessor, chunks: list[Decoded]) -> tuple[Events, list[Events]]:
    outs = [pp.process(c).events for c in chunks] + [pp.flush().events]
    return Events.concat(outs), outs


def test_assignment_tof_and_inclusive_window():
    pp = PacketProcessor(event_window=(1e-6, 3e-6), reorder_window_ns=0)
    # trigger 0 at 10 us, trigger 1 at 100 us; pixels at tof 0.5, 1 (edge), 2, 3 (edge), 3.5 us
    ev, _ = run(pp, [chunk(pix_us=[5, 10.5, 11, 12, 13, 13.5, 101, 103], trig_us=[10, 100])])
    assert ev.trigger_nr.tolist() == [0, 0, 0, 1, 1]
    assert (ev.tof * UNIT_NS).round(6).tolist() == [1000.0, 2000.0, 3000.0, 1000.0, 3000.0]
    assert ev.x.tolist() == [2, 3, 4, 6, 7]
    assert pp.stats["before_first_trigger"] == 1 and pp.stats["outside_window"] == 2


def _split(pix: np.ndarray, trig: np.ndarray, cut: int) -> list[Decoded]:
    """Cut the stream every `cut` pixels; each trigger goes where the stream reaches its time."""
    reach = np.maximum.accumulate(pix)
    chunks = []
    for i in range(0, pix.size, cut):
        lo = reach[i - 1] if i else -np.inf
        hi = reach[min(i + cut, pix.size) - 1] if i + cut < pix.size else np.inf
        c = chunk(pix_us=pix[i:i + cut], trig_us=trig[(trig > lo) & (trig <= hi)])
        c.pixels.x[:] = np.arange(i, i + len(c.pixels), dtype=np.uint16)
        chunks.append(c)
    return chunks


def test_chunk_boundaries_give_the_same_events_and_never_split():
    rng = np.random.default_rng(5)
    trig = np.arange(0, 2000, 100.0)                     # 20 triggers, 100 us apart
    pix = np.sort(rng.uniform(0, 2050, 3000)) + rng.uniform(0, 3, 3000)  # out of order <= 3 us
    whole, _ = run(PacketProcessor(event_window=(0, 1e-4), reorder_window_ns=5000),
                   _split(pix, trig, pix.size))
    assert len(whole) > 2900 and np.all(np.diff(whole.trigger_nr) >= 0)
    assert np.all(np.diff(whole.toa) >= 0)
    for cut in (1, 17, 250, 999):
        pp = PacketProcessor(event_window=(0, 1e-4), reorder_window_ns=5000)
        got, outs = run(pp, _split(pix, trig, cut))
        for name in ("trigger_nr", "tof", "x", "toa"):
            np.testing.assert_array_equal(getattr(got, name), getattr(whole, name), err_msg=name)
        seen: set[int] = set()
        for o in outs:  # an event never appears in two outputs
            nrs = set(np.unique(o.trigger_nr).tolist())
            assert not (nrs & seen)
            seen |= nrs
        assert pp.stats["late_pixels"] == 0


def test_late_trigger_holds_events_until_successor():
    # infinite window: an event is complete only once the next trigger is seen
    pp = PacketProcessor(event_window=(0, np.inf), reorder_window_ns=0)
    out1 = pp.process(chunk(pix_us=[1, 2, 3], trig_us=[0])).events
    assert len(out1) == 0 and pp.held_pixels == 3
    out2 = pp.process(chunk(pix_us=[1000, 1001], trig_us=[999])).events
    assert out2.trigger_nr.tolist() == [0, 0, 0]
    assert (out2.tof * UNIT_NS).round(3).tolist() == [1000.0, 2000.0, 3000.0]
    out3 = pp.flush().events
    assert out3.trigger_nr.tolist() == [1, 1]


def test_finite_window_releases_without_successor():
    pp = PacketProcessor(event_window=(0, 10e-6), reorder_window_ns=0)
    out = pp.process(chunk(pix_us=[1, 2, 50], trig_us=[0])).events
    assert out.trigger_nr.tolist() == [0, 0]  # window end (10 us) passed at 50 us
    assert pp.flush().events.trigger_nr.tolist() == []
    assert pp.stats["outside_window"] == 1


def test_lost_triggers_from_counter_gaps():
    pp = PacketProcessor()
    # rising-edge-only counters 0, 1, 2, 5 (3 and 4 lost), then a wrap 4095 -> 0 is no loss
    pp.process(chunk(trig_us=[1, 2, 3, 4], counters=[0, 1, 2, 5]))
    assert pp.stats["lost_triggers"] == 2
    pp.process(chunk(trig_us=[5, 6], counters=[6, 4095]))
    assert pp.stats["lost_triggers"] == 2 + 4088
    pp.process(chunk(trig_us=[7], counters=[0]))
    assert pp.stats["lost_triggers"] == 4090
    # with falling edges the counter steps by two per trigger: one lost trigger = two edges
    pp2 = PacketProcessor()
    pp2.process(chunk(trig_us=[1, 3, 7], falling_us=[2, 4, 8], counters=[10, 12, 16, 11, 13, 17]))
    # edges in counter order 10..13 then 16,17: 14, 15 (one trigger) lost
    assert pp2.stats["lost_tdc_edges"] >= 2 and pp2.stats["lost_triggers"] >= 1


def test_trigger_numbers_are_global_and_window_changes_between_chunks():
    pp = PacketProcessor(event_window=(0, 5e-6), reorder_window_ns=0)
    a = pp.process(chunk(pix_us=[1, 4, 15], trig_us=[0, 10])).events
    pp.event_window = (0, 2e-6)
    b = pp.process(chunk(pix_us=[21, 24, 35], trig_us=[20, 30])).events
    c = pp.flush().events
    allev = Events.concat([a, b, c])
    # the new window applies to the triggers after the change: pixel 15 us (tof 5 us of
    # trigger 1, still open when the window changed) keeps 0..5 us; 24, 35 us are outside 0..2 us
    assert a.trigger_nr.tolist() == [0, 0]
    assert allev.trigger_nr.tolist() == [0, 0, 1, 2]
    assert (allev.tof * UNIT_NS).round(3).tolist() == [1000.0, 4000.0, 5000.0, 1000.0]
    assert pp.stats["triggers"] == 4 and pp.stats["outside_window"] == 2
    with pytest.raises(ValueError, match="start"):
        pp.event_window = (2e-6, 1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        pp.event_window = (-1e-6, 1e-6)


@needs_captures
def test_real_capture_events_match_independent_computation():
    words = np.fromfile(CAPTURES / "centroid_pipeline_test.raw", dtype="<u8", offset=8)
    d = decode_words(words)
    pp = PacketProcessor(event_window=(0, np.inf))
    ev = Events.concat([pp.process(d).events, pp.flush().events])
    # independent: per spec, in float ns, with a python loop over pixels
    trig = sorted(t * UNIT_NS for t, ch, r in zip(d.triggers.time, d.triggers.channel, d.triggers.rising)
                  if ch == 1 and r)
    assert len(trig) == 14
    expected = []
    for x, y, toa, tot in zip(d.pixels.x, d.pixels.y, d.pixels.toa * UNIT_NS, d.pixels.tot):
        nr = max((i for i, t in enumerate(trig) if t <= toa), default=None)
        if nr is not None:
            expected.append((toa, nr, int(x), int(y), toa - trig[nr], int(tot)))
    expected.sort()
    ev = ev.take(np.lexsort((ev.tot, ev.y, ev.x, ev.toa)))  # same order for equal ToA
    assert len(ev) == len(expected) == 1858 - pp.stats["before_first_trigger"]
    assert ev.trigger_nr.tolist() == [e[1] for e in expected]
    assert ev.x.tolist() == [e[2] for e in expected] and ev.y.tolist() == [e[3] for e in expected]
    assert ev.tot.tolist() == [e[5] for e in expected]
    np.testing.assert_allclose(ev.tof * UNIT_NS, [e[4] for e in expected], atol=1e-3)
    # the 10 Hz triggers: time of flight stays below 100 ms
    assert ev.tof.max() * UNIT_NS < 1.01e8


@pytest.mark.parametrize("scale", [1, 256, 1 << 20, 1 << 30])
def test_time_order_is_a_stable_sort(scale):
    from tango_tpx.processing.events import time_order
    rng = np.random.default_rng(scale)
    base = np.sort(rng.integers(0, 50_000, 20_000)) * scale          # many ties
    t = (base + rng.integers(0, 40, base.size) * scale).astype(np.int64)  # locally out of order
    np.testing.assert_array_equal(time_order(t), np.argsort(t, kind="stable"))
    np.testing.assert_array_equal(time_order(np.sort(t)), np.arange(t.size))
    # a chunk spanning more than three radix passes takes the comparison-sort path
    wide = np.array([0, 1 << 50, 5, 1 << 45, 5], np.int64)
    assert time_order(wide).tolist() == [0, 2, 4, 3, 1]
