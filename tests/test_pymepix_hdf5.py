"""pymepix face, files: ``timing/timepix/timestamp`` is the raw file header's wall clock
plus the trigger time (ns), the detector-clock trigger time stays in ``trigger time``; and
RawFileSampler.saveToHDF5 takes what pymepix's processing steps return."""

from __future__ import annotations

import numpy as np
import pytest

from tango_tpx.io.convert import convert_file
from tango_tpx.io.hdf5 import check_layout, read_table
from tango_tpx.processing.logic.centroid_calculator import CentroidCalculator
from tango_tpx.processing.logic.packet_processor import PacketProcessor
from tango_tpx.processing.rawfilesampler import RawFileSampler

from .conftest import CAPTURES
from .test_convert import spec_decode, spec_read_words

CAPTURE = CAPTURES / "centroid_pipeline_test.raw"
needs_capture = pytest.mark.skipif(not CAPTURE.exists(), reason=f"real SPIDR capture not found: {CAPTURE}")


def header_ns(path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def spec_trigger_ns(path) -> np.ndarray:
    """TDC1 rising edge times in ns (rounded half up), from the format notes."""
    d = spec_decode(spec_read_words(path))
    t = np.sort(d["tdc_time"][(d["tdc_channel"] == 1) & d["tdc_rising"]])
    return (t * 25 + 2048) // 4096


@needs_capture
@pytest.mark.timeout(120)
def test_conversion_timestamp_is_header_time_plus_trigger_time(tmp_path):
    out = tmp_path / "c.h5"
    convert_file(CAPTURE, out)
    tp = read_table(out, "timing/timepix")
    trig_ns = spec_trigger_ns(CAPTURE)
    head = header_ns(CAPTURE)
    assert head == 1667991101711283699 and len(trig_ns) == 14
    assert tp["timestamp"].dtype == np.uint64 and tp["trigger time"].dtype == np.uint64
    np.testing.assert_array_equal(tp["timestamp"], (head + trig_ns).astype(np.uint64))
    np.testing.assert_array_equal(tp["trigger time"], trig_ns.astype(np.uint64))
    assert check_layout(out) == []

    # the same stream without the header: the timestamp is the trigger time
    bare = tmp_path / "bare.raw"
    bare.write_bytes(CAPTURE.read_bytes()[8:])
    convert_file(bare, tmp_path / "bare.h5")
    tb = read_table(tmp_path / "bare.h5", "timing/timepix")
    np.testing.assert_array_equal(tb["timestamp"], trig_ns.astype(np.uint64))


@needs_capture
@pytest.mark.timeout(120)
def test_save_to_hdf5_takes_pymepix_shapes(tmp_path):
    words = spec_read_words(CAPTURE)
    head = header_ns(CAPTURE)
    pp = PacketProcessor(event_window=(0, 1.0), start_time=head)
    L = 44547905                              # the capture's own global time (25 ns ticks)
    events, _, timestamps, (trigger1, trigger2) = pp.process(words.tobytes() + np.uint64(L).tobytes())
    last = pp.post_process()[0]
    parts = [e for e in (events, last) if e is not None]
    events = tuple(np.concatenate([p[i] for p in parts]) for i in range(5))
    clusters = CentroidCalculator(dbscan_clustering=False).process(events)      # (7, N) array
    out = tmp_path / "s.h5"
    sampler = RawFileSampler(CAPTURE, out)
    sampler.saveToHDF5(str(out), events, clusters, timestamps, trigger1, trigger2)

    raw = read_table(out, "raw")
    np.testing.assert_array_equal(raw["x"], events[1])
    np.testing.assert_array_equal(raw["tot"], events[4])
    np.testing.assert_allclose(raw["tof"], events[3], rtol=0, atol=1e-12)
    cen = read_table(out, "centroided")
    assert len(cen["x"]) == clusters.shape[1] > 0
    np.testing.assert_array_equal(cen["clustersize"], clusters[6])
    np.testing.assert_array_equal(cen["tot max"], clusters[5])
    tp = read_table(out, "timing/timepix")
    trig_ns = spec_trigger_ns(CAPTURE)
    np.testing.assert_array_equal(tp["trigger nr"], np.arange(14))
    np.testing.assert_array_equal(tp["timestamp"], (head + trig_ns).astype(np.uint64))
    np.testing.assert_array_equal(tp["trigger time"], trig_ns.astype(np.uint64))
    np.testing.assert_allclose(tp["event trigger"], trig_ns * 1e-9, rtol=0, atol=1e-9)
    assert len(read_table(out, "triggers/trigger1")["time"]) == 14
    assert len(read_table(out, "triggers/trigger2")["time"]) == 1100 + 1101
