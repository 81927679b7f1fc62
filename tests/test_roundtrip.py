"""encode -> decode round trips (hypothesis): hits, triggers, rollover, every chunk cut."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tango_tpx.tpx3.codec import Decoder, decode_words
from tango_tpx.tpx3.encode import encode_global_time, encode_pixels, encode_tdc, quantize_tdc_time

EPOCH_UNITS = (1 << 30) << 12  # one 26.84 s rollover in fine units


@st.composite
def streams(draw):
    """A time-ordered stream (with small local disorder) of pixels and TDC edges."""
    start = draw(st.integers(0, 3 * EPOCH_UNITS))
    n = draw(st.integers(1, 60))
    # steps of up to ~1.6 s so that many streams cross a rollover
    steps = draw(st.lists(st.integers(0, 1 << 38), min_size=n, max_size=n))
    times = start + 4096 + np.cumsum(np.array(steps, dtype=np.int64))
    kinds = draw(st.lists(st.sampled_from(["pix", "pix", "pix", "tdc"]), min_size=n, max_size=n))
    xs = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
    ys = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
    tots = draw(st.lists(st.integers(0, 1023), min_size=n, max_size=n))
    chans = draw(st.lists(st.sampled_from([(1, True), (1, False), (2, True), (2, False)]), min_size=n, max_size=n))
    return times, kinds, xs, ys, tots, chans


def _build(times, kinds, xs, ys, tots, chans):
    words, exp_pix, exp_tdc = [], [], []
    for i, (t, kind) in enumerate(zip(times, kinds)):
        if kind == "pix":
            toa = int(t) & ~255
            words.append(int(encode_pixels([xs[i]], [ys[i]], [toa], [tots[i]])[0]))
            exp_pix.append((xs[i], ys[i], toa, tots[i]))
        else:
            tt = int(quantize_tdc_time([int(t)])[0])
            ch, rising = chans[i]
            words.append(int(encode_tdc([ch], [rising], [tt], [i])[0]))
            exp_tdc.append((ch, rising, tt, i % 4096))
    return np.array(words, np.uint64), exp_pix, exp_tdc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_encode_decode_round_trip_with_rollover_and_cuts(stream, data):
    times, kinds, xs, ys, tots, chans = stream
    words, exp_pix, exp_tdc = _build(*stream)
    # anchor on the true global time of the first word, as a SPIDR stream does
    lsb, msb = encode_global_time(int(times[0]) >> 12)
    words = np.concatenate([np.array([lsb, msb], np.uint64), words])
    d = decode_words(words)
    assert list(zip(d.pixels.x.tolist(), d.pixels.y.tolist(), d.pixels.toa.tolist(), d.pixels.tot.tolist())) == exp_pix
    got_tdc = list(zip(d.triggers.channel.tolist(), d.triggers.rising.tolist(), d.triggers.time.tolist(),
                       d.triggers.counter.tolist()))
    assert got_tdc == exp_tdc
    assert d.counts.ambiguous_time == 0
    # cut at every position: the same result
    for cut in range(len(words) + 1):
        dec = Decoder()
        a, b = dec.decode(words[:cut]), dec.decode(words[cut:])
        assert np.concatenate([a.pixels.toa, b.pixels.toa]).tolist() == d.pixels.toa.tolist()
        assert np.concatenate([a.triggers.time, b.triggers.time]).tolist() == d.triggers.time.tolist()
    # a random three-way cut too
    c1 = data.draw(st.integers(0, len(words)))
    c2 = data.draw(st.integers(c1, len(words)))
    dec = Decoder()
    parts = [dec.decode(words[:c1]), dec.decode(words[c1:c2]), dec.decode(words[c2:])]
    assert np.concatenate([p.pixels.x for p in parts]).tolist() == d.pixels.x.tolist()
    assert dec.counts == d.counts


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(16, 1 << 40),
                          st.integers(0, 1023)), min_size=1, max_size=200))
def test_random_hits_round_trip(hits):
    x, y, t, tot = (np.array(v, dtype=np.int64) for v in zip(*hits))
    toa = t << 8  # multiples of 1.5625 ns, any order ...
    toa = toa.min() + ((toa - toa.min()) % (EPOCH_UNITS // 4))  # ... within a quarter epoch
    words = encode_pixels(x, y, toa, tot)
    d = Decoder(longtime=int(toa.min()) >> 12).decode(words)
    np.testing.assert_array_equal(d.pixels.x, x)
    np.testing.assert_array_equal(d.pixels.y, y)
    np.testing.assert_array_equal(d.pixels.tot, tot)
    np.testing.assert_array_equal(d.pixels.toa, toa)
