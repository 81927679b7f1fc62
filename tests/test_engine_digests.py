"""The converter's and the live event builder's outputs, pinned by digests.

Both real SPIDR captures and two seeded simulator files (single chip ``.raw``, 2x2 quad
``.tpx3``) go through

* the converter (:func:`tango_tpx.io.convert.convert_file`, fast centroids, 1 and 2 worker
  processes): with the default settings, and with small read chunks and batches (so the
  stream is cut into many batches), a finite event window and a time-walk table;
* the live event builder (:class:`tango_tpx.processing.events.PacketProcessor` fed decoded
  chunks of several sizes, centroids by :func:`~tango_tpx.processing.centroids.calculate_centroids`
  per released output);
* the pymepix-compatible ``PacketProcessor`` (raw chunks with their longtime), with and
  without a time-walk table (pixels and events corrected alike).

Each output is reduced to a sha256 digest of its decoded values (every HDF5 dataset's
``tobytes()`` in name order, plus the file's ``word_counts`` and ``processing_stats``; for the
live path every field of the events, triggers and centroids plus the statistics). The
digests are those of the reference engine: a change of any hit, event, centroid or count
fails the test. Only values are hashed, never the file bytes, so the HDF5 compression may
change freely.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import CAPTURES, needs_captures

pytestmark = [needs_captures, pytest.mark.timeout(300)]

#: Small read chunks and batches: many batch cuts per input (words, pixels).
SMALL_CHUNK_WORDS = 1 << 13
SMALL_BATCH_HITS = 1 << 14
#: Finite event window of the "cut" variants (s, inclusive).
CUT_WINDOW = (1e-7, 2e-4)
#: Live chunk sizes (words): the live output must not depend on them.
LIVE_CHUNKS = (3001, 1 << 15, 1 << 20)

INPUTS = ("capture_5s", "capture_centroid", "sim_single", "sim_quad")

#: Converter digests: (input, variant) -> sha256 (same for 1 and 2 worker processes).
CONVERT_DIGESTS = {
    ("capture_5s", "default"):
        "09fcb1fda9f65a8be01ac47a7cb104594903483f14fa92483f605990a653f4a3",
    ("capture_5s", "cut"):
        "3b4e7862945bb9fa0c935a8c51be319ca9e262eb9fbf5e703927603921e2ee33",
    ("capture_centroid", "default"):
        "3d2aa038cca7be278fdfc59ba49d487a40729689a480d7eefa81df5e19e98dd8",
    ("capture_centroid", "cut"):
        "bd78fd14ea5381a1cd60c5215b7258c53e834351c33b0e10b4d6eb6095b7dd8d",
    ("sim_single", "default"):
        "739575fdf9cb3abb2ba9e79adc4ec91800b2affe628faa487b8a65d47db9a7a0",
    ("sim_single", "cut"):
        "fabf963bedaca8cc7db8b2f1925d1c5a48a55d42915b56af51bb01480c70fa04",
    ("sim_quad", "default"):
        "051b5161dbaa461aacea90a4b5aedc05005d37d92ca6c65a73b7654657ef750d",
    ("sim_quad", "cut"):
        "24cc7842282f51f5a04a6fdd6f55ab9227d152e1b11fa2424bd7e98c9de0afe4",
}
#: Live digests: (input, variant) -> sha256 (same for every chunk size).
LIVE_DIGESTS = {
    ("capture_5s", "default"):
        "793852d02b0f15a2b9804511d88078888725f6d1651e1a3b435a5119f2e70397",
    ("capture_5s", "cut"):
        "83bfcf858aa9205b470b6738bdd2613172f6bbaf2c14b56140652f5d1b8db171",
    ("capture_centroid", "default"):
        "b1051b3de6e3e3bd7f460d0f7f361f3b0f3eeb81dfd9bacd290b93edf461261e",
    ("capture_centroid", "cut"):
        "e1f2933e9cd45d6b453234069be253140f83d9c4e07543138887ef43fcf1c1a2",
    ("sim_single", "default"):
        "ee382743a08ea0b08f8a62f39fadf7fcd3c9fc70dd1e989898e5c0b1c2a83573",
    ("sim_single", "cut"):
        "cf0b027dc16e4f4599c44bc8f1cc37527fedefe649fb82453ff2d05401c11c20",
    ("sim_quad", "default"):
        "832fe3a171f441c1b962c1b9faf2a207c7784381340494b81ae0b518667313a9",
    ("sim_quad", "cut"):
        "1da27f68bd91cc7a7fa971dfb653be07cda820aa86dae1636ad18d00e6840bab",
}


def _timewalk_lut() -> np.ndarray:
    """A plausible time-walk table (ns per ToT bin): 60 ns at ToT 1, falling as 1/ToT."""
    return 60.0 / np.arange(1, 401, dtype=np.float64)


def make_inputs(d: Path) -> dict[str, Path]:
    """The inputs (captures, simulator files written into ``d``) and the time-walk table file."""
    from tango_tpx.simulator import SimConfig, SpidrSimulator

    files = {"capture_5s": CAPTURES / "out_5sec.raw", "capture_centroid": CAPTURES / "centroid_pipeline_test.raw"}
    single = SimConfig(rate_mhits=4.0, duration_s=0.35, seed=1234, trigger_hz=2000.0, start_time_s=26.7)
    quad = SimConfig(rate_mhits=4.0, duration_s=0.35, seed=4321, trigger_hz=2000.0, quad=True)
    SpidrSimulator(single).write_file(d / "sim_single.raw", time_ns=1_700_000_000_000_000_000)
    SpidrSimulator(quad).write_file(d / "sim_quad.tpx3")
    files["sim_single"] = d / "sim_single.raw"
    files["sim_quad"] = d / "sim_quad.tpx3"
    np.save(d / "timewalk.npy", _timewalk_lut())
    files["timewalk"] = d / "timewalk.npy"
    return files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return make_inputs(tmp_path_factory.mktemp("digest-inputs"))


def _h5_digest(path: Path) -> str:
    import h5py

    try:
        import hdf5plugin  # noqa: F401  registers the Blosc/LZ4 filters
    except ImportError:
        pass
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in sorted(names):
            arr = f[name][()]
            h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        for key in ("word_counts", "processing_stats"):
            v = f.attrs[key]
            v = json.loads(v) if isinstance(v, (str, bytes)) else v
            h.update(f"{key}={json.dumps(v, sort_keys=True, default=str)}".encode())
    return h.hexdigest()


def _convert_kwargs(inputs: dict[str, Path], variant: str) -> dict:
    if variant == "default":
        return {}
    return dict(chunk_words=SMALL_CHUNK_WORDS, batch_hits=SMALL_BATCH_HITS, event_window=CUT_WINDOW,
                timewalk_file=inputs["timewalk"])


def convert_digest(inputs: dict[str, Path], name: str, variant: str, processes: int, out: Path) -> str:
    from tango_tpx.io.convert import convert_file

    r = convert_file(inputs[name], out, number_of_processes=processes, force=True,
                     **_convert_kwargs(inputs, variant))
    assert r.complete and r.hits > 0
    return _h5_digest(out)


def _soa_update(h, tag: str, soa) -> None:
    for k, a in soa.as_dict().items():
        a = np.ascontiguousarray(a)
        h.update(f"{tag}.{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())


def live_digest(inputs: dict[str, Path], name: str, variant: str, chunk_words: int) -> str:
    from tango_tpx.processing.centroids import Centroids, calculate_centroids
    from tango_tpx.processing.events import Events, PacketProcessor, TriggerTable
    from tango_tpx.tpx3.codec import Decoder, first_global_time
    from tango_tpx.tpx3.files import iter_words, map_words

    src = inputs[name]
    quad = src.suffix == ".tpx3"
    framing, layout = ("tpx3", "quad") if quad else ("raw", "single")
    dec = Decoder(framing=framing, layout=layout)
    dec.anchor(first_global_time(map_words(src), framing))
    if variant == "default":
        pp = PacketProcessor()
    else:
        pp = PacketProcessor(event_window=CUT_WINDOW, timewalk_lut=np.load(inputs["timewalk"]))
    events, triggers, cents = [], [], []

    def take(out) -> None:
        events.append(out.events)
        triggers.append(out.triggers)
        if len(out.events):
            cents.append(calculate_centroids(out.events))

    for words in iter_words(src, chunk_words=chunk_words):
        take(pp.process(dec.decode(words)))
    take(pp.flush())
    assert pp.held_pixels == 0
    h = hashlib.sha256()
    _soa_update(h, "events", Events.concat(events))
    _soa_update(h, "triggers", TriggerTable.concat(triggers))
    _soa_update(h, "centroids", Centroids.concat(cents))
    h.update(json.dumps({k: int(v) for k, v in pp.stats.items()}, sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("variant", ["default", "cut"])
@pytest.mark.parametrize("name", INPUTS)
def test_converter_output_is_pinned(inputs, tmp_path, name, variant):
    got = {n: convert_digest(inputs, name, variant, n, tmp_path / f"out{n}.h5") for n in (1, 2)}
    assert got[1] == got[2], "the output depends on the number of worker processes"
    assert got[1] == CONVERT_DIGESTS[(name, variant)]


@pytest.mark.parametrize("variant", ["default", "cut"])
@pytest.mark.parametrize("name", INPUTS)
def test_live_event_builder_output_is_pinned(inputs, name, variant):
    got = {c: live_digest(inputs, name, variant, c) for c in LIVE_CHUNKS}
    assert len(set(got.values())) == 1, f"the live output depends on the chunk size: {got}"
    assert got[LIVE_CHUNKS[0]] == LIVE_DIGESTS[(name, variant)]


#: pymepix-path digests: (input, variant) -> sha256.
PYMEPIX_DIGESTS = {
    ("capture_5s", "default"):
        "22aa1e471170d6e385c348ca2f07e168d1997deb1cc358f28391754161e1ce09",
    ("capture_5s", "timewalk"):
        "47858ad888eec75f5697663cfffe854d791237e036a786685469d5a72cf9248d",
    ("sim_single", "default"):
        "b41f87888902018fcfde8fd4faf3427f05671c39961686c117dba9e230409c85",
    ("sim_single", "timewalk"):
        "f00cfb6a2344fb488f933c4e1c56532634103f433a08cff8c31b155ea51b3377",
}


def pymepix_digest(inputs: dict[str, Path], name: str, variant: str, chunk_words: int = 20_000) -> str:
    """Digest of the pymepix ``PacketProcessor`` (raw chunks + 8-byte longtime in, pixel,
    event, timestamp and trigger tuples out), with or without a time-walk table."""
    from tango_tpx.processing.logic.packet_processor import PacketProcessor
    from tango_tpx.tpx3.codec import last_global_time
    from tango_tpx.tpx3.files import iter_words

    lut = np.load(inputs["timewalk"]) if variant == "timewalk" else None
    pp = PacketProcessor(event_window=(0.0, 1e-3), timewalk_lut=lut)
    h = hashlib.sha256()
    longtime = 0

    def update(out) -> None:
        for item in out:
            for a in (item if isinstance(item, (tuple, list)) else (item,)):
                if a is None:
                    h.update(b"-")
                else:
                    a = np.ascontiguousarray(a)
                    h.update(f"{a.dtype.str}:{a.shape}".encode())
                    h.update(a.tobytes())

    for words in iter_words(inputs[name], chunk_words=chunk_words):
        longtime = max(longtime, last_global_time(words))
        update(pp.process(np.ascontiguousarray(words).tobytes() + np.uint64(longtime).tobytes()))
    update(pp.post_process())
    return h.hexdigest()


@pytest.mark.parametrize("variant", ["default", "timewalk"])
@pytest.mark.parametrize("name", ["capture_5s", "sim_single"])
def test_pymepix_packet_processor_output_is_pinned(inputs, name, variant):
    assert pymepix_digest(inputs, name, variant) == PYMEPIX_DIGESTS[(name, variant)]
