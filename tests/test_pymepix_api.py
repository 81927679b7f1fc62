"""pymepix face, statics: every module of pymepix.processing at tango_tpx.processing with
pymepix's class names, bases, methods, parameter names and defaults; Raw2Disk writes what
it is given; the logic classes refuse what they cannot honour with a clear message."""

from __future__ import annotations

import importlib
import inspect
import multiprocessing as mp

import numpy as np
import pytest

P = "tango_tpx.processing."
_EMPTY = inspect.Parameter.empty

# module, class, (parameter, default) pairs in order (_EMPTY: required), methods/attributes
SEED = [
    ("acquisition", "PixelPipeline",
     [("data_queue", _EMPTY), ("address", _EMPTY), ("longtime", _EMPTY), ("use_event", False),
      ("name", "Pixel"), ("event_window", (0, 0.001))],
     ["start", "stop", "addStage", "getStage", "stages", "isRunning", "enableEvents", "eventWindow"]),
    ("acquisition", "CentroidPipeline",
     [("data_queue", _EMPTY), ("address", _EMPTY), ("longtime", _EMPTY)],
     ["numBlobProcesses", "totThreshold", "epsilon", "samples", "centroidSkip", "start", "stop"]),
    ("baseacquisition", "AcquisitionPipeline", [("name", _EMPTY), ("data_queue", _EMPTY)],
     ["addStage", "getStage", "start", "stop", "stages", "isRunning"]),
    ("baseacquisition", "AcquisitionStage", [("stage", _EMPTY), ("num_processes", 1)],
     ["build", "configureStage", "setArgs", "numProcess", "stage", "start", "stop", "processes",
      "outputQueue"]),
    ("basepipeline", "BasePipelineObject",
     [("name", _EMPTY), ("input_queue", None), ("create_output", True), ("num_outputs", 1),
      ("shared_output", None), ("propogate_input", True)],
     ["enable", "hasOutput", "outputQueues", "pre_run", "post_run", "process", "pushOutput", "run"]),
    ("pipeline_packet_processor", "PipelinePacketProcessor",
     [("packet_processor", "PacketProcessor"), ("input_queue", None), ("create_output", True),
      ("num_outputs", 1), ("shared_output", None)], ["process", "pre_run", "post_run", "run"]),
    ("pipeline_centroid_calculator", "PipelineCentroidCalculator",
     [("centroid_calculator", "CentroidCalculator"), ("input_queue", None), ("create_output", True),
      ("num_outputs", 1), ("shared_output", None)], ["process", "pre_run", "post_run", "run"]),
    ("rawfilesampler", "RawFileSampler",
     [("file_name", _EMPTY), ("output_file", _EMPTY), ("number_of_processes", None), ("timewalk_file", None),
      ("cent_timewalk_file", None), ("progress_callback", None), ("clustering_args", {}),
      ("dbscan_clustering", True)], ["run", "saveToHDF5"]),
    ("rawtodisk", "Raw2Disk", [("context", None)], ["open_file", "write", "close"]),
    ("udpsampler", "UdpSampler",
     [("address", _EMPTY), ("longtime", _EMPTY), ("chunk_size", 10000), ("flush_timeout", 0.3),
      ("input_queue", None), ("create_output", True), ("num_outputs", 1), ("shared_output", None)],
     ["create_socket_connection", "enable", "record", "init_new_process", "pre_run", "post_run", "run"]),
    ("usbtrainid", "USBTrainID", [("name", "USBTrainId")], ["connect_device", "run", "start", "join"]),
    ("logic.packet_processor", "PacketProcessor",
     [("handle_events", True), ("event_window", (0.0, 10000.0)), ("position_offset", (0, 0)),
      ("orientation", "PixelOrientation"), ("start_time", 0), ("timewalk_lut", None)],
     ["process", "pre_process", "post_process", "event_window", "handle_events"]),
    ("logic.centroid_calculator", "CentroidCalculator",
     [("cent_timewalk_lut", None), ("number_of_processes", 1), ("clustering_args", {}),
      ("dbscan_clustering", True)],
     ["process", "epsilon", "min_samples", "tot_threshold", "triggers_processed", "chunk_size_limit",
      "cs_sensor_size", "cs_min_cluster_size", "cs_max_dist_tof", "cs_tot_offset", "dbscan_clustering"]),
]


@pytest.mark.parametrize("module,name,params,members", SEED, ids=[f"{m}.{c}" for m, c, _, _ in SEED])
def test_seed_class_signature_and_members(module, name, params, members):
    cls = getattr(importlib.import_module(P + module), name)
    sig = inspect.signature(cls.__init__)
    names = [p for p in sig.parameters if p != "self"]
    assert names[:len(params)] == [p for p, _ in params]
    for pname, default in params:
        got = sig.parameters[pname].default
        if isinstance(default, str) and default not in ("Pixel", "USBTrainId"):
            assert type(got).__name__ == default, (pname, got)      # an instance, as pymepix's
        else:
            assert got == default, (pname, got)
    for m in members:
        assert hasattr(cls, m), f"{name}.{m}"


@pytest.mark.parametrize("name", ["BasePipelineObject", "UdpSampler", "USBTrainID", "PipelinePacketProcessor",
                                  "PipelineCentroidCalculator"])
def test_stages_are_processes(name):
    mods = {"BasePipelineObject": "basepipeline", "UdpSampler": "udpsampler", "USBTrainID": "usbtrainid",
            "PipelinePacketProcessor": "pipeline_packet_processor",
            "PipelineCentroidCalculator": "pipeline_centroid_calculator"}
    cls = getattr(importlib.import_module(P + mods[name]), name)
    assert issubclass(cls, mp.Process)


def test_message_types_and_bases():
    from tango_tpx.processing.acquisition import CentroidPipeline, PixelPipeline
    from tango_tpx.processing.baseacquisition import AcquisitionPipeline
    from tango_tpx.processing.basepipeline import BasePipelineObject
    from tango_tpx.processing.datatypes import MessageType
    from tango_tpx.processing.pipeline_packet_processor import PipelinePacketProcessor

    assert {m.name: int(m) for m in MessageType if m.name != "EndOfStream"} == {
        "RawData": 0, "PixelData": 1, "EventData": 2, "CentroidData": 3, "OpenFileCommand": 4,
        "CloseFileCommand": 5, "TriggerData": 8}
    assert issubclass(CentroidPipeline, PixelPipeline) and issubclass(PixelPipeline, AcquisitionPipeline)
    assert issubclass(PipelinePacketProcessor, BasePipelineObject)
    assert BasePipelineObject.hasOutput() is True             # a classmethod, as pymepix's


def test_raw2disk_writes_what_it_is_given(tmp_path):
    from tango_tpx.processing.rawtodisk import Raw2Disk

    r = Raw2Disk()
    path = tmp_path / "a.raw"
    assert r.open_file(None, str(path))
    parts = [b"What a nice day!", bytearray(b"\x00\x01\x02"), memoryview(np.arange(4, dtype="<u8"))]
    for part in parts:
        assert r.write(part)
    assert r.close()
    assert path.read_bytes() == b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    assert not r.write(b"x") and "no file open" in r.last_error
    assert not r.open_file(None, str(path)) and "cannot create" in r.last_error      # never overwrites
    assert not r.open_file(None, str(tmp_path / "missing" / "b.raw")) and "does not exist" in r.last_error
    assert r.open_file(None, str(tmp_path / "h.raw"))
    assert not r.open_file(None, str(tmp_path / "i.raw")) and "already writing" in r.last_error
    r.close()
    h = Raw2Disk(header=True)
    assert h.open_file(None, str(tmp_path / "hdr.raw")) and h.write(b"12345678") and h.close()
    data = (tmp_path / "hdr.raw").read_bytes()
    assert len(data) == 16 and data[8:] == b"12345678" and int.from_bytes(data[:8], "little") > 1.6e18


def test_logic_packet_processor_settings_and_bad_input():
    from tango_tpx.processing.logic.packet_processor import PacketProcessor

    pp = PacketProcessor()
    pp.event_window = (1e-6, 2e-6)
    pp.handle_events = False
    assert pp.event_window == (1e-6, 2e-6) and pp.handle_events is False
    with pytest.raises(ValueError, match="start"):
        pp.event_window = (2e-6, 1e-6)
    with pytest.raises(ValueError, match="8-byte longtime"):
        pp.process(b"\x00" * 12)
    assert pp.process(np.uint64(5).tobytes()) == (None, None, None, None)


def test_logic_centroid_calculator_maps_or_refuses_clustering_args():
    from tango_tpx.processing.logic.centroid_calculator import CentroidCalculator

    args = {"epsilon": 3.0, "min_samples": 4, "tot_threshold": 60, "triggers_processed": 2,
            "chunk_size_limit": 1000, "cs_min_cluster_size": 2, "cs_max_dist_tof": 1e-7,
            "cs_sensor_size": 516, "cs_tot_offset": 0.5}
    cc = CentroidCalculator(clustering_args=args, dbscan_clustering=False)
    assert args["epsilon"] == 3.0 and len(args) == 9                      # not modified
    native = cc.native()
    assert native.tot_threshold == 2                                        # ToT > 60 ns = > 2 counts
    assert native.epsilon == 3.0 and native.min_samples == 4 and native.triggers_processed == 2
    assert native.chunk_size_limit == 1000 and native.min_cluster_size == 2
    assert native.time_window_ns == pytest.approx(100.0)
    with pytest.raises(ValueError, match="unknown clustering_args"):
        CentroidCalculator(clustering_args={"eps": 1})
    with pytest.raises(ValueError, match="cs_tot_offset"):
        CentroidCalculator(clustering_args={"cs_tot_offset": 0.2})
    with pytest.raises(ValueError, match="cs_sensor_size"):
        cc.cs_sensor_size = 300
    with pytest.raises(ValueError, match="epsilon"):
        cc.epsilon = 0
    assert cc.process(None) is None
    # one 3-hit cluster: ToT-weighted x, y, tof; tot avg / max in ns; size
    data = (np.array([7, 7, 7]), np.array([10, 11, 10]), np.array([20, 20, 21]),
            np.array([1e-6, 1.01e-6, 1.02e-6]), np.array([100, 200, 100]))
    out = CentroidCalculator(dbscan_clustering=False).process(data)
    assert out.shape == (7, 1) and out.dtype == np.float64
    np.testing.assert_allclose(out[[0, 1, 2, 4, 5, 6], 0], [7, 10.5, 20.25, 400 / 3, 200, 3], rtol=1e-6)
    assert abs(out[3, 0] - 1.01e-6) < 1e-11          # s; hit times are kept in 25/4096 ns units
