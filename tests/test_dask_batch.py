"""Batches on a real Dask cluster: the ``dask scheduler`` and two ``dask worker`` programs on
127.0.0.1 (free ports, one thread each), started per test and killed in ``finally``.

Outputs are compared dataset by dataset with a local single-process conversion of each input.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tango_tpx.device.database import free_port
from tango_tpx.io.batch import run_batch
from tango_tpx.io.cli import main as cli_main
from tango_tpx.io.convert import convert_file

from .batchutil import KW, assert_same_datasets, is_complete, sim_file
from .conftest import REPO, wait_until

pytest.importorskip("distributed")
DASK = Path(sys.executable).with_name("dask")
pytestmark = pytest.mark.skipif(not DASK.exists(), reason=f"the dask command-line program is not in {DASK.parent}")


@contextmanager
def dask_cluster(n_workers: int = 2):
    """(scheduler address, {worker address: worker Popen}) of a scheduler and ``n_workers``
    one-thread workers, no nanny (a SIGKILLed worker stays dead), this tree on their path."""
    from dask.distributed import Client

    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for k in range(n_workers):
            procs.append(subprocess.Popen([str(DASK), "worker", addr, "--host", "127.0.0.1", "--nthreads", "1",
                                           "--no-nanny", "--no-dashboard", "--name", f"w{k}"], env=env,
                                          start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        with Client(addr, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(n_workers, timeout=60)
            pids = c.run(os.getpid)  # worker address -> its process id
        by_pid = {p.pid: p for p in procs}
        yield addr, {a: by_pid[pid] for a, pid in pids.items()}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def batch_inputs(tmp_path_factory):
    """Six small simulated files, one larger file that splits into three sections, and the
    local single-process conversion of each."""
    d = tmp_path_factory.mktemp("dask-in")
    files = [sim_file(d / f"f{k}.raw", seed=200 + k, duration_s=0.04) for k in range(6)]
    big = sim_file(d / "big.raw", seed=299, duration_s=0.12)
    ref = tmp_path_factory.mktemp("dask-ref")
    refs = {}
    for p in files + [big]:
        convert_file(p, ref / f"{p.stem}.h5", **KW)
        refs[p.stem] = ref / f"{p.stem}.h5"
    return files, big, refs


def _section_mb(big: Path) -> float:
    """A section size that cuts ``big`` into three sections."""
    return big.stat().st_size / 3 / 1e6


@pytest.mark.timeout(240)
def test_batch_on_dask_equals_local_conversions(tmp_path, batch_inputs):
    files, big, refs = batch_inputs
    out = tmp_path / "out"
    with dask_cluster(2) as (addr, _):
        s = run_batch(files + [big], out, convert_kwargs=KW, scheduler=addr, section_mb=_section_mb(big), quiet=True)
    assert s.ok, s.lines()
    assert {o.sections for o in s.outcomes if Path(o.input).stem == "big"} == {3}
    for p in files + [big]:
        assert is_complete(out / f"{p.stem}.h5")
        assert_same_datasets(out / f"{p.stem}.h5", refs[p.stem])
    assert sorted(q.name for q in out.iterdir()) == sorted(f"{p.stem}.h5" for p in files + [big])


@pytest.mark.timeout(240)
def test_killed_worker_tasks_are_retried_and_outputs_are_identical(tmp_path, batch_inputs):
    from dask.distributed import Client

    files, big, refs = batch_inputs
    out = tmp_path / "out"
    result = {}
    with dask_cluster(2) as (addr, workers):
        def batch() -> None:
            try:
                result["summary"] = run_batch(files + [big], out, convert_kwargs=KW, scheduler=addr,
                                              section_mb=_section_mb(big), quiet=True)
            except BaseException as exc:  # reported by the assertion below
                result["error"] = exc

        t = threading.Thread(target=batch)
        t.start()
        with Client(addr, timeout=30, set_as_default=False) as c:
            busy = wait_until(lambda: [a for a, keys in c.processing().items() if keys and a in workers],
                              timeout=60, what="a worker running a conversion task", period=0.02)
            victim = workers[busy[0]]
            os.kill(victim.pid, signal.SIGKILL)  # mid-task
            victim.wait(timeout=10)
        t.join(timeout=180)
        assert not t.is_alive(), "the batch did not finish after the worker was killed"
    assert "error" not in result, result.get("error")
    s = result["summary"]
    assert s.ok, s.lines()
    for p in files + [big]:
        assert is_complete(out / f"{p.stem}.h5")
        assert_same_datasets(out / f"{p.stem}.h5", refs[p.stem])
    # no half-written file of the killed attempt is left behind
    assert sorted(q.name for q in out.iterdir()) == sorted(f"{p.stem}.h5" for p in files + [big])


@pytest.mark.timeout(240)
def test_corrupt_input_fails_alone_on_dask(tmp_path, batch_inputs, capsys):
    files, _, refs = batch_inputs
    d = tmp_path / "in"
    d.mkdir()
    for p in files[:3]:
        os.symlink(p, d / p.name)
    (d / "zeros.raw").write_bytes(bytes(64_000))
    out = tmp_path / "out"
    with dask_cluster(2) as (addr, _):
        t = time.monotonic()
        # -n 2: each task uses the converter's pool inside its (threaded, nanny-less) worker,
        # started without fork
        rc = cli_main(["convert", str(d), "-o", str(out), "--scheduler", addr, "-q", "-n", "2",
                       "--chunk-words", str(KW["chunk_words"]), "--batch-hits", str(KW["batch_hits"])])
        assert time.monotonic() - t < 120
    cap = capsys.readouterr()
    assert rc == 1
    assert "3 converted, 0 skipped (complete), 1 failed of 4 inputs" in cap.out
    assert f"FAILED {(d / 'zeros.raw').resolve()}" in cap.err or f"FAILED {d / 'zeros.raw'}" in cap.err
    assert "nothing to convert" in cap.err
    for p in files[:3]:
        assert_same_datasets(out / f"{p.stem}.h5", refs[p.stem])
    assert not (out / "zeros.h5").exists()


@pytest.mark.timeout(180)
def test_dask_output_is_read_by_plain_h5py_without_hdf5plugin(tmp_path, batch_inputs):
    files, _, refs = batch_inputs
    out = tmp_path / "out"
    with dask_cluster(2) as (addr, _):
        s = run_batch(files[:2], out, convert_kwargs=KW, scheduler=addr, quiet=True)
    assert s.ok
    code = ("import sys, h5py\n"
            "f = h5py.File(sys.argv[1], 'r')\n"
            "print(len(f['centroided/x'][:]), len(f['raw/x'][:]))\n"
            "assert 'hdf5plugin' not in sys.modules\n")
    p = out / f"{files[0].stem}.h5"
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import h5py

    with h5py.File(refs[files[0].stem], "r") as f:
        assert r.stdout.split() == [str(f["centroided/x"].shape[0]), str(f["raw/x"].shape[0])]


@pytest.mark.timeout(180)
def test_local_cluster_with_workers_option(tmp_path, batch_inputs):
    """``--workers 2`` starts a local Dask cluster; ``-n 2`` inside its (daemonic) worker
    processes runs the pool inline rather than failing."""
    import multiprocessing

    files, _, refs = batch_inputs
    out = tmp_path / "out"
    rc = cli_main(["convert", str(files[0]), str(files[1]), "-o", str(out), "--workers", "2", "-n", "2", "-q",
                   "--chunk-words", str(KW["chunk_words"]), "--batch-hits", str(KW["batch_hits"])])
    assert rc == 0
    for p in files[:2]:
        assert_same_datasets(out / f"{p.stem}.h5", refs[p.stem])
    wait_until(lambda: not multiprocessing.active_children(), 30, "the local cluster's processes to end")
