"""Settings changed while running: every live output chunk is what an offline conversion with
the settings version it carries gives for its triggers.

A seeded simulated stream goes over UDP on loopback, paced at a few Mhits/s, into the armed
pipeline of the :class:`~tango_tpx.pipeline.controller.AcquisitionController` (as the Tango
device runs it), recorded to a raw file while it runs. The stream is sent in four parts;
between two parts a new event window and clustering radius (and time window) are
published, three changes in all. This is done twice, once with centroiding off (the events
reach ``data_queue``) and once on (the centroids reach it: a centroid pipeline's events feed
its workers only); the ZMQ live stream is listened to as well.

Afterwards: every hit sent was decoded once (lossless), the two recordings hold the same
words as the stream, and for each settings version seen the recording is converted offline
once with that version's settings; every live chunk tagged with version ``v`` equals the
offline rows of its trigger numbers (trigger numbers are global, from 0 per acquisition, in
both paths), row for row in the HDF5 file's units.

The second window ends at 0.3 ms, shorter than the trigger period (1 ms at 1 kHz): the event
open when it is set is partly released already, and the one open when the next (2 ms) window
is set too; an event keeps the version its trigger came with (see
:mod:`tango_tpx.pipeline.livesettings`), so it is still in one chunk, equal to the offline
conversion with that version.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

import numpy as np
import pytest
import zmq

from tango_tpx.io.convert import convert_file
from tango_tpx.io.hdf5 import centroids_columns, events_columns, read_table
from tango_tpx.pipeline.controller import AcquisitionController
from tango_tpx.device.database import free_port
from tango_tpx.pipeline.messages import MessageType, QueueMessage, decode_frames
from tango_tpx.processing.settings import ClusteringConfig, EventWindow
from tango_tpx.simulator import SimConfig, SpidrSimulator
from tango_tpx.tpx3.files import map_words

from .conftest import wait_for
from .test_pipeline_helpers import drain, free_udp_port

#: hits per second sent (the 2-core test machine receives this without loss on loopback)
RATE_HITS_PER_S = 5.0e6
DURATION_S = 0.6
#: the settings of the four parts: event window (s) and clustering
SETTINGS = [
    (EventWindow(0.0, 1e-3), ClusteringConfig(radius=1, time_window_ns=200.0)),
    (EventWindow(1e-6, 0.3e-3), ClusteringConfig(radius=2, time_window_ns=200.0)),
    (EventWindow(0.0, 2e-3), ClusteringConfig(radius=3, time_window_ns=100.0)),
    (EventWindow(2.5e-6, 1.5e-3), ClusteringConfig(radius=1, time_window_ns=500.0)),
]
EVENT_KEYS = ("trigger nr", "x", "y", "tof", "tot")
CENTROID_KEYS = ("trigger nr", "x", "y", "tof", "tot sum", "tot avg", "tot max", "clustersize")


def _send_paced(port: int, payloads: list[bytes], bytes_per_s: float) -> None:
    """Send the datagrams to 127.0.0.1:port at about ``bytes_per_s``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        t0 = time.monotonic()
        sent = 0
        for p in payloads:
            ahead = sent / bytes_per_s - (time.monotonic() - t0)
            if ahead > 0.0005:
                time.sleep(ahead)
            s.sendto(p, ("127.0.0.1", port))
            sent += len(p)
    finally:
        s.close()


def _acquire(ctl: AcquisitionController, q: queue.Queue, payloads: list[bytes], record: str
             ) -> tuple[list[QueueMessage], dict, dict[int, tuple[EventWindow, ClusteringConfig]]]:
    """One armed acquisition of the stream in four parts with the settings changed between
    them -> (data_queue messages, counts, settings version -> (window, clustering))."""
    window, clustering = SETTINGS[0]
    ctl.event_window = window.as_tuple()
    ctl.set_live(window=window, clustering=clustering)
    results: list = []
    ctl.session.on_done = results.append
    ctl.arm()
    try:
        versions = {ctl.live.version: (ctl.live_values.window, ctl.live_values.clustering)}
        base = ctl.counters()
        ctl.session.begin(record=record)
        assert ctl.session.wait_open(5.0)
        bounds = np.linspace(0, len(payloads), len(SETTINGS) + 1).astype(int)
        sent = 0
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if i:
                # the part before is decoded: the next one is made with the new settings
                words = sent // 8
                assert wait_for(lambda: ctl.counters()["words"] - base["words"] >= words, 60), ctl.fault()
                ctl.set_live(window=SETTINGS[i][0], clustering=SETTINGS[i][1])
                versions[ctl.live.version] = SETTINGS[i]
            _send_paced(ctl.udp_port, payloads[a:b], RATE_HITS_PER_S * 8)
            sent += sum(len(p) for p in payloads[a:b])
        assert wait_for(lambda: ctl.counters()["bytes"] - base["bytes"] >= sent, 60), (ctl.counters(), sent)
        ctl.session.end()
        assert wait_for(lambda: results, 60), ctl.fault()
        assert results[0].error is None, results[0].error
        counts = dict(results[0].counts)
        now = ctl.counters()
        for k in ("malformed_words", "datagrams", "kernel_drops"):
            counts[k] = now[k] - base[k]
        time.sleep(0.2)
        return drain(q), counts, versions
    finally:
        ctl.disarm()


def _offline(cache: dict, tmp_path, recording, window: EventWindow, clustering: ClusteringConfig) -> dict:
    """raw and centroided tables of ``recording`` converted with these settings (cached)."""
    key = (window, clustering)
    if key not in cache:
        out = tmp_path / f"offline-{len(cache)}.h5"
        convert_file(recording, out, centroiding=True, event_window=window.as_tuple(),
                     tot_threshold=clustering.tot_threshold,
                     clustering_args={"radius": clustering.radius, "time_window_ns": clustering.time_window_ns,
                                      "min_cluster_size": clustering.min_cluster_size})
        cache[key] = {t: read_table(out, t) for t in ("raw", "centroided")}
    return cache[key]


def _check_chunks(chunks: list[tuple[int, dict]], offline_of, table: str, keys: tuple[str, ...]) -> set[int]:
    """Every (version, columns) chunk equals the offline rows of its trigger numbers; returns
    the trigger numbers seen (each in one chunk only)."""
    seen: set[int] = set()
    for v, cols in chunks:
        off = offline_of(v)[table]
        trig = off["trigger nr"]
        assert np.all(np.diff(trig) >= 0)
        t = cols["trigger nr"]
        lo, hi = int(t.min()), int(t.max())
        a, b = np.searchsorted(trig, lo, "left"), np.searchsorted(trig, hi, "right")
        for k in keys:
            np.testing.assert_array_equal(cols[k], off[k][a:b], err_msg=f"{table} {k}, version {v}, "
                                                                        f"triggers {lo}..{hi}")
        mine = set(np.unique(t).tolist())
        assert not (mine & seen), f"triggers in two {table} chunks: {sorted(mine & seen)[:5]}"
        seen |= mine
    return seen


@pytest.mark.timeout(600)
def test_settings_changed_while_running_make_chunks_equal_to_offline_with_their_version(tmp_path):
    sim = SpidrSimulator(SimConfig(rate_mhits=RATE_HITS_PER_S / 1e6, duration_s=DURATION_S, seed=47,
                                   trigger_hz=1000.0))
    words, truth = sim.simulate()
    payloads = [bytes(d) for d in sim.datagrams(words)]
    q: queue.Queue = queue.Queue()
    stream = f"tcp://127.0.0.1:{free_port()}"
    ctl = AcquisitionController(udp_port=free_udp_port(), data_queue=q, stream_address=stream)
    runs = {}
    # the ZMQ live stream: the settings version of each message is in its header
    streamed: list[tuple[bytes, int]] = []
    stop = threading.Event()

    def listen() -> None:
        with zmq.Context() as zctx, zctx.socket(zmq.SUB) as sub:
            sub.connect(stream)
            for topic in (b"EventData", b"CentroidData"):
                sub.setsockopt(zmq.SUBSCRIBE, topic)
            while not stop.is_set():
                if sub.poll(50):
                    frames = sub.recv_multipart()
                    streamed.append((frames[0], decode_frames(frames[1:])[3].get("sv")))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        for centroiding in (False, True):
            ctl.centroiding = centroiding
            rec = tmp_path / f"live-{int(centroiding)}.raw"
            runs[centroiding] = (_acquire(ctl, q, payloads, str(rec)), rec)
    finally:
        stop.set()
        listener.join(5.0)
        ctl.close()
    all_versions = set(runs[False][0][2]) | set(runs[True][0][2])
    assert {t for t, _ in streamed} == {b"EventData", b"CentroidData"}
    assert all(v in all_versions for _, v in streamed), {v for _, v in streamed}

    cache: dict = {}
    for centroiding, ((msgs, counts, versions), rec) in runs.items():
        # lossless: every datagram received, every hit decoded once, nothing malformed
        assert counts["datagrams"] == len(payloads) and counts["kernel_drops"] == 0, counts
        assert counts["hits"] == len(truth.hits) and counts["malformed_words"] == 0, counts
        np.testing.assert_array_equal(map_words(rec), words)
        assert all(isinstance(m, QueueMessage) and m.settings_version in versions for m in msgs)
        kind = MessageType.CentroidData if centroiding else MessageType.EventData
        data = [(m.settings_version, m[1]) for m in msgs if m[0] == kind and len(m[1])]
        # each of the four sets made some of the output
        assert {v for v, _ in data} == set(versions), (sorted({v for v, _ in data}), versions)
        assert [versions[v] for v in sorted(versions)] == SETTINGS

        def offline_of(v: int, versions=versions) -> dict:
            # both recordings hold the stream's words: one conversion per set of settings
            return _offline(cache, tmp_path, runs[False][1], *versions[v])

        if centroiding:
            chunks = [(v, centroids_columns(d)) for v, d in data]
            seen = _check_chunks(chunks, offline_of, "centroided", CENTROID_KEYS)
            assert counts["centroids"] == sum(len(c["x"]) for _, c in chunks) > 0
        else:
            chunks = [(v, events_columns(d)) for v, d in data]
            seen = _check_chunks(chunks, offline_of, "raw", EVENT_KEYS)
            assert counts["events"] == sum(len(c["x"]) for _, c in chunks)
        # the chunks together cover the acquisition's triggers
        n_trig = int(np.count_nonzero((truth.triggers.channel == 1) & truth.triggers.rising))
        assert len(seen) > 0.9 * n_trig and max(seen) < n_trig
