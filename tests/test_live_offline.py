"""Live and offline give the same events and centroids for the same stream (no Tango).

One seeded simulated stream, single chip and 2x2 quad, goes two ways:

* offline: written to a ``.raw`` (single chip) or ``.tpx3`` (quad) file and converted with
  :func:`tango_tpx.io.convert.convert_file`, centroiding on;
* live: sent as UDP datagrams on loopback into the armed pipeline the Tango device uses
  (:class:`~tango_tpx.pipeline.controller.AcquisitionController`, one acquisition covering
  the whole stream), events and centroids collected from its ``data_queue``.

Both share the engine (decoder, event builder, clustering), so the results must be the same
row for row; they are compared in the HDF5 file's units (ToF s, ToT ns) after the file's own
conversion of the live records (:func:`~tango_tpx.io.hdf5.events_columns`,
:func:`~tango_tpx.io.hdf5.centroids_columns`). Counts are also checked against the
simulator's truth.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from tango_tpx.io.convert import convert_file
from tango_tpx.io.hdf5 import centroids_columns, events_columns, read_table
from tango_tpx.pipeline.controller import AcquisitionController
from tango_tpx.pipeline.messages import MessageType
from tango_tpx.processing.centroids import Centroids
from tango_tpx.processing.events import Events, TriggerTable
from tango_tpx.simulator import SimConfig, SpidrSimulator
from tango_tpx.tpx3.files import RawFileWriter, Tpx3FileWriter, inspect_file
from tango_tpx.tpx3.units import UNIT_NS

from .conftest import wait_for
from .test_pipeline_helpers import drain, free_udp_port, send_datagrams

#: ToF window of both paths (s, inclusive): one trigger period at 1 kHz.
WINDOW = (0.0, 1e-3)
UNIT_S = UNIT_NS * 1e-9               # s per time unit, as the HDF5 writer converts
HEADER_TIME_NS = 1_700_000_000_000_000_000


def _stream(quad: bool, start_time_s: float = 0.0):
    """~0.3 s at 0.5 Mhits/s, 1 kHz triggers, from detector time ``start_time_s``:
    (words, truth, datagram payloads)."""
    sim = SpidrSimulator(SimConfig(rate_mhits=0.5, duration_s=0.3, seed=31 if quad else 30,
                                   trigger_hz=1000.0, quad=quad, start_time_s=start_time_s))
    words, truth = sim.simulate()
    return words, truth, [bytes(d) for d in sim.datagrams(words)]


def _offline(tmp_path, words: np.ndarray, quad: bool) -> dict[str, dict[str, np.ndarray]]:
    if quad:
        src = tmp_path / "stream.tpx3"
        with Tpx3FileWriter(src) as f:
            f.write_framed(words)               # already framed per chip by the simulator
    else:
        src = tmp_path / "stream.raw"
        with RawFileWriter(src, time_ns=HEADER_TIME_NS) as f:
            f.write(words)
    out = tmp_path / "stream.h5"
    r = convert_file(src, out, centroiding=True, event_window=WINDOW, layout="quad" if quad else "single")
    assert r is not None
    return {t: read_table(out, t) for t in ("raw", "centroided", "timing/timepix")}


def _acquire(ctl: AcquisitionController, q: queue.Queue, payloads: list[bytes], record: str = ""
             ) -> tuple[list, dict]:
    """One armed acquisition over the whole stream (recorded to ``record`` if given)
    -> (data_queue messages, counts)."""
    port = ctl.udp_port
    results: list = []
    ctl.session.on_done = results.append
    ctl.arm()
    try:
        base = ctl.counters()
        ctl.session.begin(record=record)
        assert ctl.session.wait_open(5.0)
        send_datagrams(port, payloads, pause_every=32)
        n_bytes = sum(len(p) for p in payloads)
        assert wait_for(lambda: ctl.counters()["bytes"] - base["bytes"] >= n_bytes, 30), (ctl.counters(), n_bytes)
        time.sleep(0.3)
        ctl.session.end()
        assert wait_for(lambda: results, 30), ctl.fault()
        assert results[0].error is None, results[0].error
        counts = dict(results[0].counts)
        now = ctl.counters()
        counts["malformed_words"] = now["malformed_words"] - base["malformed_words"]
        counts["datagrams"] = now["datagrams"] - base["datagrams"]
        assert wait_for(lambda: q.qsize() > 0, 10)
        time.sleep(0.2)
        return drain(q), counts
    finally:
        ctl.disarm()


def _live(payloads: list[bytes], quad: bool, record: str) -> tuple[dict, dict, dict, list[dict]]:
    """The stream through the armed pipeline twice, as the device runs it with Centroiding
    off and on (the second one recorded to ``record``) -> (events, centroids, triggers,
    [counts off, counts on]).

    With typed records a message goes only to the stage that consumes it (documented in
    :class:`~tango_tpx.pipeline.acquisition.AcquisitionPipeline`): the centroid pipeline's
    events feed the centroid workers and never reach ``data_queue``, so the events are taken
    from the pixel (events) pipeline, the centroids from the centroid pipeline, and both
    acquisitions' counts are checked.
    """
    q: queue.Queue = queue.Queue()
    ctl = AcquisitionController(udp_port=free_udp_port(), layout="quad" if quad else "single", data_queue=q)
    ctl.event_window = WINDOW
    try:
        ctl.centroiding = False
        msgs_ev, counts_ev = _acquire(ctl, q, payloads)
        ctl.centroiding = True
        msgs_ce, counts_ce = _acquire(ctl, q, payloads, record)
    finally:
        ctl.close()
    ev = [d for t, d in msgs_ev if t == MessageType.EventData]
    tr = [d for t, d in msgs_ev if t == MessageType.TriggerData]
    tr_ce = [d for t, d in msgs_ce if t == MessageType.TriggerData]
    ce = [d for t, d in msgs_ce if t == MessageType.CentroidData]
    assert ev and ce and tr, (sorted({int(t) for t, _ in msgs_ev}), sorted({int(t) for t, _ in msgs_ce}))
    events = events_columns(Events.concat(ev))
    cents = centroids_columns(Centroids.concat(ce))
    trig, trig_ce = TriggerTable.concat(tr), TriggerTable.concat(tr_ce)
    # both acquisitions number the same triggers the same way, at the same detector times
    np.testing.assert_array_equal(trig.trigger_nr, trig_ce.trigger_nr)
    np.testing.assert_array_equal(trig.time, trig_ce.time)
    return events, cents, {"trigger nr": trig.trigger_nr, "time": trig.time}, [counts_ev, counts_ce]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("quad, start_time_s", [(False, 0.0), (True, 0.0), (False, 26.7), (True, 26.7), (False, 60.0)],
                         ids=["single", "quad", "single-rollover", "quad-rollover", "single-third-epoch"])
def test_live_and_offline_give_the_same_events_and_centroids(tmp_path, quad, start_time_s):
    """start_time_s 26.7: the chip's 30-bit clock rolls over (26.84 s) inside the stream; 60.0: the
    stream starts in the clock's third epoch (both paths anchor on its global-time words)."""
    words, truth, payloads = _stream(quad, start_time_s)
    off = _offline(tmp_path, words, quad)
    recording = tmp_path / "live.raw"
    ev, ce, trig, both = _live(payloads, quad, str(recording))
    counts = both[1]
    for k in ("hits", "triggers", "events", "malformed_words", "datagrams"):
        assert both[0][k] == both[1][k], k

    n_trig = int(np.count_nonzero((truth.triggers.channel == 1) & truth.triggers.rising))
    assert n_trig == len(truth.trigger_time) >= 290
    # every hit sent was decoded once, nothing malformed
    assert counts["hits"] == len(truth.hits) and counts["malformed_words"] == 0
    assert counts["datagrams"] == len(payloads)
    # triggers: the same numbers (0-based from the acquisition's first trigger, as in a
    # conversion of the file) and the truth's count
    assert counts["triggers"] == n_trig
    np.testing.assert_array_equal(trig["trigger nr"], np.arange(n_trig))
    np.testing.assert_array_equal(off["timing/timepix"]["trigger nr"], np.arange(n_trig))
    np.testing.assert_array_equal(trig["time"] * UNIT_S, off["timing/timepix"]["event trigger"])
    np.testing.assert_array_equal(trig["time"], truth.trigger_time)
    # events: the hits with a trigger at or before them, inside the window; in the truth the
    # hits of particles of trigger k (noise hits carry -1) all belong to event k
    assert counts["events"] == len(ev["x"]) == len(off["raw"]["x"])
    in_truth = truth.trigger_nr >= 0
    assert len(ev["x"]) >= int(np.count_nonzero(in_truth))
    for k in ("trigger nr", "x", "y", "tof", "tot"):
        np.testing.assert_array_equal(ev[k], off["raw"][k], err_msg=f"event {k}")
    # the truth's particle hits are in the events with their trigger number
    got = np.bincount(ev["trigger nr"], minlength=n_trig)
    want = np.bincount(truth.trigger_nr[in_truth], minlength=n_trig)
    assert np.all(got >= want)
    # centroids: row for row
    assert counts["centroids"] == len(ce["x"]) == len(off["centroided"]["x"]) > 0
    for k in ("trigger nr", "x", "y", "tof", "tot sum", "tot avg", "tot max", "clustersize"):
        np.testing.assert_array_equal(ce[k], off["centroided"][k], err_msg=f"centroid {k}")
    # one centroid per simulated particle with >= 3 hits at most (clusters may merge, never split)
    sizes = np.bincount(truth.particle[truth.particle >= 0])
    assert len(ce["x"]) <= int(np.count_nonzero(sizes >= 3)) + int(np.count_nonzero(~in_truth))
    if quad:                                       # every chip of the 516 x 516 frame has centroids
        left, low = ce["x"] < 258, ce["y"] < 258
        assert all(np.any(m) for m in (left & low, ~left & low, left & ~low, ~left & ~low))
    # the live recording (pymepix .raw: header, then the datagrams; a quad stream keeps its
    # .tpx3 chunks) converts, with the layout detected, to the same events and centroids
    info = inspect_file(recording)
    assert (info.kind, info.framing, info.header_time_ns is not None) == ("raw", "tpx3" if quad else "raw", True)
    assert info.n_words == words.size and info.trailing_bytes == 0
    r = convert_file(recording, tmp_path / "live.h5", event_window=WINDOW)
    assert r.word_counts["other"] == 0 and r.hits == len(truth.hits)
    for t in ("raw", "centroided", "timing/timepix"):
        rec = read_table(tmp_path / "live.h5", t)
        for k in rec:
            if k != "timestamp":                  # header wall clock: the recording's own
                np.testing.assert_array_equal(rec[k], off[t][k], err_msg=f"recording {t}/{k}")


@pytest.mark.timeout(120)
def test_quad_trigger_and_time_bounded_recordings_convert_to_the_acquisitions_counts(tmp_path):
    """A bounded quad acquisition cuts its .raw recording inside a .tpx3 chunk (at the
    ending trigger word); the cut file still converts to exactly the acquisition's counts."""
    words, truth, payloads = _stream(True)
    ctl = AcquisitionController(udp_port=free_udp_port(), layout="quad")
    ctl.centroiding = True
    ctl.event_window = WINDOW
    results: list = []
    ctl.session.on_done = results.append
    ctl.arm()
    try:
        for n, bound in enumerate(({"triggers": 50}, {"time_s": 0.1})):
            ctl.session.begin(record=str(tmp_path / f"rec{n}.raw"), **bound)
            assert ctl.session.wait_open(5.0)
            send_datagrams(ctl.udp_port, payloads, pause_every=32)
            assert wait_for(lambda: len(results) > n, 30), ctl.fault()
    finally:
        ctl.close()
    assert [r.reason for r in results] == ["triggers", "time"]
    for n, r in enumerate(results):
        assert r.error is None and r.file == str(tmp_path / f"rec{n}.raw")
        c = convert_file(r.file, tmp_path / f"rec{n}.h5", event_window=WINDOW)
        assert c.word_counts["other"] == 0 and c.word_counts["framing_errors"] == 0, c.word_counts
        assert (c.hits, c.events, c.triggers, c.centroids) == \
            (r.counts["hits"], r.counts["events"], r.counts["triggers"], r.counts["centroids"])
    assert results[0].counts["triggers"] == 50 and 99 <= results[1].counts["triggers"] <= 101
