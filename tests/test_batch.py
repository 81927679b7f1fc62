"""Many inputs, sections of one input, appending to a run (tango_tpx.io.batch / sections / append).

Every output is compared dataset by dataset with a plain single-process conversion of the
same input (:func:`convert_file`, one process, the same read chunk and batch sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tango_tpx.io.append import append_inputs, close_run, state_path
from tango_tpx.io.batch import run_batch
from tango_tpx.io.cli import main as cli_main
from tango_tpx.io.convert import convert_file
from tango_tpx.io.sections import convert_split, parts_dir, plan_sections

from .batchutil import KW, assert_same_datasets, is_complete, sim_file, sim_words, write_raw
from .conftest import CAPTURES, needs_captures


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("in")
    return [sim_file(d / f"run{k}.raw", seed=100 + k, duration_s=0.04) for k in range(3)]


@pytest.fixture(scope="module")
def references(inputs, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ref")
    return {p.stem: convert_file(p, d / f"{p.stem}.h5", **KW) and d / f"{p.stem}.h5" for p in inputs}


# ------------------------------------------------------------------------------------------
# sections: the pre-scan state at each boundary gives the single-pass output bit for bit
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [(0.0, np.inf), (1e-6, 3e-4)])
def test_sections_join_equals_single_pass(tmp_path, window):
    src = sim_file(tmp_path / "big.raw", seed=7, duration_s=0.1)
    one, split = tmp_path / "one.h5", tmp_path / "split.h5"
    r1 = convert_file(src, one, event_window=window, **KW)
    n_words = (src.stat().st_size - 8) // 8
    r2 = convert_split(src, split, section_words=n_words // 3, event_window=window, **KW)
    assert len(plan_sections(n_words, KW["chunk_words"], n_words // 3)) - 1 == 3
    assert_same_datasets(one, split)
    assert (r2["hits"], r2["events"], r2["centroids"], r2["triggers"]) == (r1.hits, r1.events, r1.centroids, r1.triggers)
    assert r2["processing"] == r1.processing and r2["word_counts"] == r1.word_counts
    assert is_complete(split) and not parts_dir(split).exists()
    with h5py.File(split, "r") as f:
        assert f.attrs["sections"] == 3
        # with an unlimited window the boundaries cut events: they were held back, not split
        assert f["raw"].attrs["nr events"] == r1.triggers


@needs_captures
def test_sections_of_a_real_capture_equal_single_pass(tmp_path):
    """Real SPIDR data (readout order, 39 triggers over 5 s): four sections, joined, equal one pass."""
    src = CAPTURES / "out_5sec.raw"
    kw = {"chunk_words": 1 << 12, "batch_hits": 5000}
    one, split = tmp_path / "one.h5", tmp_path / "split.h5"
    r1 = convert_file(src, one, **kw)
    r2 = convert_split(src, split, section_words=(src.stat().st_size - 8) // 8 // 4, **kw)
    assert_same_datasets(one, split)
    assert r2["processing"] == r1.processing and r1.events > 500_000


def test_plan_sections_are_whole_chunks():
    b = plan_sections(1000, 64, 300)
    assert b[0] == 0 and b[-1] == 1000 and all(x % 64 == 0 for x in b[:-1])
    assert plan_sections(100, 64, 1000) == [0, 100]


# ------------------------------------------------------------------------------------------
# batch in this process
# ------------------------------------------------------------------------------------------
def test_local_batch_converts_each_input_and_reports_failures(tmp_path, inputs, references, capsys):
    bad_dir = tmp_path / "in"
    bad_dir.mkdir()
    for p in inputs:
        os.symlink(p, bad_dir / p.name)
    (bad_dir / "zeros.raw").write_bytes(bytes(80_000))          # nothing convertible in it
    (bad_dir / "truncated.raw").write_bytes(b"\x01\x02\x03\x04\x05")  # less than one word
    out = tmp_path / "out"
    rc = cli_main(["convert", str(bad_dir), "-o", str(out), "--chunk-words", str(KW["chunk_words"]),
                   "--batch-hits", str(KW["batch_hits"]), "-q"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "3 converted, 0 skipped (complete), 2 failed of 5 inputs" in cap.out
    assert f"FAILED {bad_dir / 'zeros.raw'}: ConversionError" in cap.err and "nothing to convert" in cap.err
    assert f"FAILED {bad_dir / 'truncated.raw'}" in cap.err
    for p in inputs:
        assert_same_datasets(out / f"{p.stem}.h5", references[p.stem])
    assert sorted(q.name for q in out.iterdir()) == sorted(f"{p.stem}.h5" for p in inputs)


def test_skip_existing_resumes_only_incomplete_outputs(tmp_path, inputs, references):
    out = tmp_path / "out"
    out.mkdir()
    done = out / f"{inputs[0].stem}.h5"
    convert_file(inputs[0], done, **KW)
    mtime = done.stat().st_mtime_ns
    half = out / f"{inputs[1].stem}.h5"   # an interrupted earlier attempt: complete = False
    with h5py.File(half, "w") as f:
        f.attrs["complete"] = False
    s = run_batch(inputs, out, convert_kwargs=KW, skip_existing=True, quiet=True)
    assert [o.status for o in s.outcomes] == ["skipped", "done", "done"] and s.ok
    assert done.stat().st_mtime_ns == mtime
    for p in inputs:
        assert_same_datasets(out / f"{p.stem}.h5", references[p.stem])
    # without --skip-existing or --force an existing output is a failure of that input only
    s = run_batch(inputs, out, convert_kwargs=KW, quiet=True)
    assert not s.ok and all("exists" in o.reason for o in s.failures)


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, inputs, capsys):
    if os.geteuid() == 0:
        folder = Path("/proc")  # not writable even for root
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    t = time.monotonic()
    assert cli_main(["convert", *map(str, inputs), "-o", str(folder), "-q"]) == 2
    assert f"{folder}: output folder is not writable" in capsys.readouterr().err
    assert time.monotonic() - t < 5
    assert not any((folder / f"{p.stem}.h5").exists() for p in inputs)


@pytest.mark.timeout(60)
def test_unreachable_scheduler_is_a_clear_error_within_the_timeout(tmp_path, inputs, capsys):
    from tango_tpx.device.database import free_port

    port = free_port()  # nothing listens there
    t = time.monotonic()
    rc = cli_main(["convert", str(inputs[0]), "-o", str(tmp_path / "o"), "--scheduler", f"tcp://127.0.0.1:{port}",
                   "--connect-timeout", "3", "-q"])
    elapsed = time.monotonic() - t
    err = capsys.readouterr().err
    assert rc == 2 and f"Dask scheduler tcp://127.0.0.1:{port} unreachable within 3 s" in err
    assert elapsed < 20
    assert not (tmp_path / "o" / f"{inputs[0].stem}.h5").exists()


# ------------------------------------------------------------------------------------------
# append: global event numbers, complete only once closed
# ------------------------------------------------------------------------------------------
def test_append_three_inputs_equals_their_concatenation(tmp_path):
    words = sim_words(11, duration_s=0.1)
    cw = KW["chunk_words"]
    cuts = [0, 7 * cw, 15 * cw, len(words)]
    parts = [write_raw(tmp_path / f"p{k}.raw", words[cuts[k]:cuts[k + 1]]) for k in range(3)]
    whole = write_raw(tmp_path / "whole.raw", words)
    ref = tmp_path / "whole.h5"
    r_ref = convert_file(whole, ref, **KW)
    run = tmp_path / "run.h5"
    base = ["convert", "--append", str(run), "--chunk-words", str(cw), "--batch-hits", str(KW["batch_hits"])]
    assert cli_main([*base, str(parts[0]), str(parts[1])]) == 0
    assert not is_complete(run) and state_path(run).exists()
    with h5py.File(run, "r") as f:   # readable while open; event numbers already global
        nr = f["timing/timepix/trigger nr"][()]
        assert np.array_equal(nr, np.arange(len(nr)))
    assert cli_main([*base, str(parts[2]), "--close"]) == 0
    assert is_complete(run) and not state_path(run).exists()
    assert_same_datasets(run, ref)
    with h5py.File(run, "r") as f:
        assert json.loads(f.attrs["processing_stats"]) == r_ref.processing
        assert json.loads(f.attrs["run_inputs"]) == [str(p.resolve()) for p in parts]
        assert f["raw"].attrs["nr events"] == r_ref.triggers
    assert cli_main([*base, str(parts[0])]) == 1  # a closed run takes no more inputs


def test_append_refuses_an_input_with_nothing_in_it_and_keeps_the_run(tmp_path, capsys):
    words = sim_words(13, duration_s=0.03)
    good = write_raw(tmp_path / "good.raw", words)
    zeros = tmp_path / "zeros.raw"
    zeros.write_bytes(bytes(8 * 5000))
    run = tmp_path / "run.h5"
    append_inputs(run, [good], **KW)
    with h5py.File(run, "r") as f:
        before = f["raw/x"].shape[0]
    assert cli_main(["convert", "--append", str(run), str(zeros)]) == 1
    assert "nothing to append" in capsys.readouterr().err
    close_run(run, **KW)
    ref = tmp_path / "ref.h5"
    convert_file(good, ref, **KW)
    assert_same_datasets(run, ref)
    with h5py.File(run, "r") as f:
        assert f["raw/x"].shape[0] >= before and json.loads(f.attrs["run_inputs"]) == [str(good.resolve())]


def test_append_rolls_back_an_unfinished_append(tmp_path):
    words = sim_words(12, duration_s=0.05)
    half = len(words) // 2
    a, b = write_raw(tmp_path / "a.raw", words[:half]), write_raw(tmp_path / "b.raw", words[half:])
    run = tmp_path / "run.h5"
    append_inputs(run, [a], **KW)
    with h5py.File(run, "a") as f:  # rows of an append that died before saving its state
        d = f["raw/x"]
        d.resize((d.shape[0] + 5,))
    append_inputs(run, [b], **KW)
    close_run(run, **KW)
    ref = tmp_path / "ref.h5"
    convert_file(write_raw(tmp_path / "w.raw", words), ref, **KW)
    assert_same_datasets(run, ref)


def test_converted_default_file_is_read_by_plain_h5py(tmp_path, references):
    """A pymepix user's script, hdf5plugin never imported, reads the converter's default output."""
    p = next(iter(references.values()))
    code = ("import sys, h5py\n"
            "f = h5py.File(sys.argv[1], 'r')\n"
            "x = f['centroided/x'][:]; t = f['raw/tof'][:]\n"
            "assert 'hdf5plugin' not in sys.modules\n"
            "print(len(x), float(x.sum()), len(t), float(t.sum()))\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"})
    assert out.returncode == 0, out.stderr
    n, s, nt, st = out.stdout.split()
    with h5py.File(p, "r") as f:
        x, t = f["centroided/x"][:], f["raw/tof"][:]
        assert f["raw/x"].compression == "gzip"
    assert int(n) == len(x) > 100 and float(s) == float(x.sum())
    assert int(nt) == len(t) > 1000 and float(st) == float(t.sum())
