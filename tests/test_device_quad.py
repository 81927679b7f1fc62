"""The Timepix3 device with ``ChipLayout=quad``: an embedded Tango database, a registered
``TangoTpx`` server process, a ``DeviceProxy`` at Tango's default 3 s timeout, and the quad
simulator streaming its .tpx3-framed datagrams over loopback UDP at its real pace.

Checked: the 516 x 516 ``Preview`` (while data flow) and ``AcquisitionImage`` have hits in all
four chips' quadrants, ``MalformedWords`` stays 0 on the clean stream, once the stream is done
``TotalHits`` (and the image's sum) equals the hits sent, and the AutoConvert HDF5 file of the
recording holds the device's event and centroid counts in all four quadrants.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

tango = pytest.importorskip("tango")
from tango import DevState  # noqa: E402

from tango_tpx.simulator import SimConfig, SpidrSimulator  # noqa: E402

from .conftest import wait_until  # noqa: E402
from .tangosystem import DeviceSystem  # noqa: E402

PERIOD_S = 0.25


def _quadrant_counts(image: np.ndarray) -> list[int]:
    """Hits in the four 258 x 258 quadrants of a 516 x 516 frame (y rows, x columns)."""
    return [int(image[:258, :258].sum()), int(image[:258, 258:].sum()),
            int(image[258:, :258].sum()), int(image[258:, 258:].sum())]


@pytest.fixture(scope="module")
def quad_server(tmp_path_factory):
    """(DeviceProxy at the default timeout, UDP port) of a server with ChipLayout=quad."""
    s = DeviceSystem(tmp_path_factory.mktemp("tpx-quad"), summary_period=PERIOD_S,
                     properties={"ChipLayout": ["quad"], "DataStreamAddress": ["off"]})
    try:
        assert s.proxy.get_timeout_millis() == 3000
        yield s.proxy, s.udp_port
    finally:
        s.close()


@pytest.mark.timeout(240)
def test_quad_device_preview_and_image_cover_all_four_chips_and_count_every_hit(quad_server, tmp_path):
    dev, udp_port = quad_server
    wait_until(lambda: dev.state() == DevState.ON, 60, f"state ON (now {dev.state()}: {dev.status()})")
    if not dev.Centroiding:
        dev.Centroiding = True                             # re-arms in the background
        wait_until(lambda: dev.state() == DevState.ON, 60, f"re-armed (now {dev.state()}: {dev.status()})")
    dev.AcquisitionTime = 0.0
    dev.AcquisitionTriggers = 0
    dev.RecordingPath = str(tmp_path)
    dev.FilePrefix = "quad_"
    dev.FileIndex = 0
    dev.AutoRecord = True
    dev.AutoConvert = True
    dev.ResetCounters()
    dev.Start()
    assert dev.state() == DevState.RUNNING
    sim = SpidrSimulator(SimConfig(rate_mhits=0.5, duration_s=1.0, seed=41, quad=True))
    sent: dict = {}
    sender = threading.Thread(target=lambda: sent.update(sim.send_udp("127.0.0.1", udp_port)))
    sender.start()
    try:
        # Preview shows the last summary period: read it while the stream flows
        def preview_in_all_quadrants():
            img = dev.Preview
            return [img] if img.shape == (516, 516) and min(_quadrant_counts(img)) > 0 else None

        [preview] = wait_until(preview_in_all_quadrants, 10, "hits in all four quadrants of Preview")
        assert preview.shape == (516, 516)
    finally:
        sender.join(60)
    assert not sender.is_alive() and sent["hits"] > 0 and not sent["stopped"], sent
    wait_until(lambda: dev.TotalHits >= sent["hits"], 10, f"TotalHits {dev.TotalHits} reaching {sent['hits']}")
    dev.Stop()
    wait_until(lambda: dev.state() == DevState.ON, 30, f"state ON after Stop (now {dev.state()}: {dev.status()})")
    assert dev.TotalHits == sent["hits"] == dev.AcquisitionHits
    assert dev.MalformedWords == 0 and dev.KernelDrops == 0
    image = dev.AcquisitionImage
    assert image.shape == (516, 516) and image.dtype == np.uint32
    assert int(image.sum()) == sent["hits"]
    counts = _quadrant_counts(image)
    assert min(counts) > 0.15 * sent["hits"], counts       # the four chips get similar shares
    # the 2-pixel gaps between the chips (columns / rows 256 and 257) stay empty
    assert image[:, 256:258].sum() == 0 and image[256:258, :].sum() == 0
    assert dev.AcquisitionTriggersDone == sent["triggers"] > 0
    assert dev.AcquisitionCentroids > 0 and dev.AcquisitionCentroids == dev.TotalCentroids
    # AutoConvert of the recording (.raw holding the .tpx3-framed stream) gives the device's
    # own counts, in the 516 x 516 frame
    from tango_tpx.io import read_table

    h5 = tmp_path / "quad_00000.h5"
    wait_until(lambda: dev.LastHdf5File == str(h5), 120, "the AutoConvert HDF5 file")
    assert dev.LastFile == str(tmp_path / "quad_00000.raw")
    ev, ce = read_table(h5, "raw"), read_table(h5, "centroided")
    assert len(ev["x"]) == dev.TotalEvents and len(ce["x"]) == dev.AcquisitionCentroids
    img = np.zeros((516, 516), np.uint32)
    np.add.at(img, (ev["y"], ev["x"]), 1)
    assert min(_quadrant_counts(img)) > 0.15 * len(ev["x"])
